// Command relaybench measures what relaying worker output costs the
// clusterd master: workers that write short lines as fast as they can (or
// at a set rate) run under `clusterd run --output prefix` and `--output raw`
// with the master's stdout on /dev/null, and it reports the master's CPU
// (utime+stime from /proc/PID/stat) and the workers' throughput over a
// window. It is run by bench/relay.sh, which builds the binaries; see that
// script for how to run it.
//
// The same binary is the worker: `relaybench writer` writes lines to its
// stdout and publishes how many bytes it has written in a count file.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// clockTicks is the unit of utime and stime in /proc/PID/stat (USER_HZ,
// 100 on every Linux architecture clusterd builds for).
const clockTicks = 100

func main() {
	if len(os.Args) > 1 && os.Args[1] == "writer" {
		if err := writer(os.Args[2:]); err != nil {
			fmt.Fprintf(os.Stderr, "relaybench writer: %v\n", err)
			os.Exit(1)
		}
		return
	}
	if err := drive(os.Args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "relaybench: %v\n", err)
		os.Exit(1)
	}
}

// writer writes lines of the given length to stdout through a 64 KiB
// buffer, as a chatty server with buffered logging does, and stores the
// number of bytes written so far in its count file every 50ms.
func writer(args []string) error {
	fs := flag.NewFlagSet("writer", flag.ContinueOnError)
	countFile := fs.String("count-file", "", "file prefix for the byte count (the worker's slot is appended)")
	lineLen := fs.Int("line", 40, "bytes per line, newline included")
	rate := fs.Float64("rate", 0, "MB/s to write (0: as fast as possible)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *countFile == "" || *lineLen < 2 {
		return errors.New("want -count-file and -line >= 2")
	}
	f, err := os.Create(*countFile + os.Getenv("CLUSTERD_WORKER_ID"))
	if err != nil {
		return err
	}
	var written atomic.Int64
	go func() {
		for range time.Tick(50 * time.Millisecond) {
			_, _ = f.WriteAt([]byte(fmt.Sprintf("%020d\n", written.Load())), 0)
		}
	}()
	line := []byte(strings.Repeat("relay benchmark line ", 1+*lineLen/21)[:*lineLen-1] + "\n")
	w := bufio.NewWriterSize(os.Stdout, 64<<10)
	start := time.Now()
	var n int64
	for {
		for range 1024 {
			if _, err := w.Write(line); err != nil {
				return err
			}
		}
		n += int64(1024 * len(line))
		written.Store(n)
		if *rate > 0 {
			// Pace: sleep until the bytes written so far are due.
			due := start.Add(time.Duration(float64(n) / (*rate * 1e6) * float64(time.Second)))
			if d := time.Until(due); d > 0 {
				if err := w.Flush(); err != nil {
					return err
				}
				time.Sleep(d)
			}
		}
	}
}

type benchCase struct {
	label   string // binary label
	bin     string // clusterd binary
	output  string // prefix or raw
	results []result
}

type result struct {
	cpu  float64 // master CPU, fraction of one CPU
	mbps float64 // workers' output, MB/s
}

func drive(args []string) error {
	fs := flag.NewFlagSet("relaybench", flag.ContinueOnError)
	binDir := fs.String("bin", "bench/bin", "folder with clusterd and relaybench")
	before := fs.String("before", "", "a second clusterd binary to measure in the same run (e.g. the previous commit's)")
	workers := fs.Int("w", 1, "workers")
	lineLen := fs.Int("line", 40, "bytes per line, newline included")
	rate := fs.Float64("rate", 0, "MB/s per worker (0: as fast as it can)")
	window := fs.Duration("d", 5*time.Second, "measuring window per run")
	rounds := fs.Int("rounds", 3, "interleaved rounds of every case")
	if err := fs.Parse(args); err != nil {
		return err
	}
	self, err := filepath.Abs(filepath.Join(*binDir, "relaybench"))
	if err != nil {
		return err
	}
	bins := []struct{ label, path string }{{"current", filepath.Join(*binDir, "clusterd")}}
	if *before != "" {
		bins = append([]struct{ label, path string }{{"before", *before}}, bins...)
	}
	var cases []*benchCase
	for _, b := range bins {
		if _, err := os.Stat(b.path); err != nil {
			return fmt.Errorf("clusterd binary: %w", err)
		}
		for _, out := range []string{"prefix", "raw"} {
			cases = append(cases, &benchCase{label: b.label, bin: b.path, output: out})
		}
	}
	dir, err := os.MkdirTemp("", "relaybench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	fmt.Printf("# relaybench %s: %d worker(s), %d-byte lines, rate %s, window %v, %d rounds\n",
		time.Now().UTC().Format(time.RFC3339), *workers, *lineLen, rateName(*rate), *window, *rounds)
	for round := range *rounds {
		for _, c := range cases {
			r, err := measure(c, self, dir, *workers, *lineLen, *rate, *window)
			if err != nil {
				return fmt.Errorf("%s --output %s: %w", c.label, c.output, err)
			}
			c.results = append(c.results, r)
			fmt.Printf("round %d  %-8s %-6s master CPU %5.1f%%  output %6.1f MB/s\n", round, c.label, c.output, 100*r.cpu, r.mbps)
		}
	}
	fmt.Printf("\n| clusterd | --output | master CPU (median) | MB/s (median) | master CPU-seconds per GB (median) |\n|---|---|---|---|---|\n")
	for _, c := range cases {
		cpu, mbps := median(c.results, func(r result) float64 { return r.cpu }), median(c.results, func(r result) float64 { return r.mbps })
		perGB := median(c.results, func(r result) float64 {
			if r.mbps <= 0 {
				return 0
			}
			return r.cpu / r.mbps * 1000
		})
		fmt.Printf("| %s | %s | %.1f%% | %.1f | %.2f |\n", c.label, c.output, 100*cpu, mbps, perGB)
	}
	return nil
}

func rateName(r float64) string {
	if r == 0 {
		return "unlimited"
	}
	return fmt.Sprintf("%g MB/s per worker", r)
}

func median(rs []result, f func(result) float64) float64 {
	v := make([]float64, len(rs))
	for i, r := range rs {
		v[i] = f(r)
	}
	sort.Float64s(v)
	return v[len(v)/2]
}

// measure runs one cluster, waits until its workers are ready and have
// written for a second, then samples master CPU and written bytes over
// window.
func measure(c *benchCase, self, dir string, workers, lineLen int, rate float64, window time.Duration) (result, error) {
	countFile := filepath.Join(dir, fmt.Sprintf("count-%d-", time.Now().UnixNano()))
	devNull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		return result{}, err
	}
	defer devNull.Close()
	cmd := exec.Command(c.bin, "run", "-w", strconv.Itoa(workers), "--ready", "exec", "--log-json",
		"--output", c.output, "--", self, "writer", "-count-file", countFile,
		"-line", strconv.Itoa(lineLen), "-rate", strconv.FormatFloat(rate, 'f', -1, 64))
	cmd.Stdout = devNull
	logs, err := cmd.StderrPipe()
	if err != nil {
		return result{}, err
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return result{}, err
	}
	defer func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
	}()
	ready := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(logs)
		for sc.Scan() {
			var e struct {
				Msg string `json:"@message"`
			}
			if json.Unmarshal(sc.Bytes(), &e) == nil && e.Msg == "all workers ready" {
				ready <- nil
				_, _ = io.Copy(io.Discard, logs)
				return
			}
		}
		ready <- errors.New("master log ended before all workers were ready")
	}()
	select {
	case err := <-ready:
		if err != nil {
			return result{}, err
		}
	case <-time.After(30 * time.Second):
		return result{}, errors.New("workers not ready after 30s")
	}
	time.Sleep(time.Second) // warm-up: buffers filled, steady state
	pid := cmd.Process.Pid
	cpu0, err := cpuTicks(pid)
	if err != nil {
		return result{}, err
	}
	b0, t0 := written(countFile, workers), time.Now()
	time.Sleep(window) // the measuring window
	cpu1, err := cpuTicks(pid)
	if err != nil {
		return result{}, err
	}
	b1, t1 := written(countFile, workers), time.Now()
	secs := t1.Sub(t0).Seconds()
	_ = syscall.Kill(pid, syscall.SIGTERM)
	return result{
		cpu:  float64(cpu1-cpu0) / clockTicks / secs,
		mbps: float64(b1-b0) / 1e6 / secs,
	}, nil
}

// cpuTicks is utime+stime of pid (every thread), in clock ticks.
func cpuTicks(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	i := strings.LastIndexByte(string(b), ')')
	f := strings.Fields(string(b[i+1:]))
	// After the command name: state is field 3, utime 14 and stime 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	s, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: bad utime/stime", pid)
	}
	return u + s, nil
}

// written sums the workers' count files.
func written(prefix string, workers int) int64 {
	var total int64
	for i := range workers {
		b, err := os.ReadFile(prefix + strconv.Itoa(i))
		if err != nil {
			continue
		}
		n, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		total += n
	}
	return total
}
