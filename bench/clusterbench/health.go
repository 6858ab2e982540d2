package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"syscall"
	"time"
)

// Worker health figures: the master's CPU while it samples worker memory
// (--max-memory) or the accept queues (--workers MIN:MAX), and how fast
// autoscaling reacts to a load step, against a fixed cluster of MAX.

// samplingCPU measures the master's CPU per second with 64 workers: with no
// sampling, with --max-memory sampled every second, and with autoscale
// sampling every second. Heartbeats are set to once an hour in all three,
// so that the difference is the sampling.
func samplingCPU(c config) error {
	fmt.Printf("\n## master CPU with 64 workers, %s window per case\n", c.window)
	for _, tc := range []struct {
		name  string
		flags []string
	}{
		{"no sampling", nil},
		{"--max-memory 1G --sample-interval 1s", []string{"--max-memory", "1G", "--sample-interval", "1s"}},
		{"--workers 64:65 --scale-interval 1s", []string{"--workers", "64:65", "--scale-interval", "1s"}},
	} {
		flags := append([]string{"--ready", "ipc", "--heartbeat-interval", "1h"}, tc.flags...)
		cl, err := startClusterCmd(c, 64, flags, []string{filepath.Join(c.bin, "hello")})
		if err != nil {
			return err
		}
		pid := cl.cmd.Process.Pid
		cpu0, sw0, err := procCPU(pid)
		if err == nil {
			time.Sleep(c.window) // the window being measured, not a synchronisation
			var cpu1 time.Duration
			var sw1 int
			cpu1, sw1, err = procCPU(pid)
			procs := countProcs()
			if err == nil {
				fmt.Printf("%-40s cpu %6s = %.2f ms/s, %d context switches, %d processes on the machine\n",
					tc.name, cpu1-cpu0, float64((cpu1-cpu0).Microseconds())/1000/c.window.Seconds(), sw1-sw0, procs)
			}
		}
		cl.stop(30 * time.Second)
		if err != nil {
			return err
		}
	}
	return nil
}

func countProcs() int {
	names, _ := filepath.Glob("/proc/[0-9]*")
	return len(names)
}

// autoscaleReaction runs the same load step against --workers 1:4 and
// against -w 4: 4 closed-loop clients (new connection per request) on a
// server that handles one request at a time in 20ms, so 4 workers serve
// the step without queueing and 1 queues 3 connections.
func autoscaleReaction(c config) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	worker := []string{exe, serialWorkerArg, "20ms"}
	fmt.Printf("\n## autoscale reaction: load step of 4 clients on a serial 20ms server, %s\n", c.step)
	for _, tc := range []struct {
		name  string
		flags []string
	}{
		{"--workers 1:4", []string{"--workers", "1:4", "--ready", "delay=200ms", "--scale-interval", "100ms",
			"--scale-up-after", "300ms", "--scale-cooldown", "300ms"}},
		{"-w 4 (fixed)", []string{"--ready", "delay=200ms"}},
	} {
		cl, err := startClusterCmd(c, 4, tc.flags, worker)
		if err != nil {
			return err
		}
		start := time.Now()
		var reached time.Time
		done := make(chan struct{})
		go func() {
			defer close(done)
			// The fourth worker (slot 3) ready: from then on the step is
			// served without queueing.
			for e := range cl.events {
				if e.Message == "worker ready" && e.int("worker") == 3 && reached.IsZero() {
					reached = e.At
				}
			}
		}()
		lat, failed := stepLoad("http://"+cl.addr+"/", 4, c.step)
		cl.stop(30 * time.Second)
		<-done
		react := "before the step"
		if !reached.IsZero() && reached.After(start) {
			react = reached.Sub(start).Round(time.Millisecond).String() + " into the step"
		}
		fmt.Printf("%-16s requests %d, failed %d, p50 %s, p99 %s, 4th worker ready %s\n",
			tc.name, len(lat), failed, pct(lat, 50), pct(lat, 99), react)
	}
	return nil
}

// stepLoad runs n closed-loop clients for d and returns every request's
// latency and the number of failed requests.
func stepLoad(url string, n int, d time.Duration) ([]time.Duration, int) {
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 30 * time.Second}
	var mu sync.Mutex
	var lat []time.Duration
	failed := 0
	end := time.Now().Add(d)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			for time.Now().Before(end) {
				t0 := time.Now()
				resp, err := client.Get(url)
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if err == nil && resp.StatusCode != http.StatusOK {
						err = fmt.Errorf("status %d", resp.StatusCode)
					}
				}
				mu.Lock()
				if err != nil {
					failed++
				} else {
					lat = append(lat, time.Since(t0))
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return lat, failed
}

func pct(v []time.Duration, p int) time.Duration {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[min(len(s)*p/100, len(s)-1)].Round(100 * time.Microsecond)
}

// serialWorkerArg makes clusterbench a worker: a server on the inherited
// fd 3 that handles one connection at a time and takes the given time per
// request, so that what it cannot take waits in the kernel's accept queue.
const serialWorkerArg = "serial-worker"

func serialWorker(args []string) int {
	d := 20 * time.Millisecond
	if len(args) > 0 {
		var err error
		if d, err = time.ParseDuration(args[0]); err != nil {
			fmt.Fprintln(os.Stderr, "serial-worker:", err)
			return 2
		}
	}
	ln, err := net.FileListener(os.NewFile(3, "listener"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "serial-worker:", err)
		return 1
	}
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	go func() {
		<-term
		ln.Close() // what waits in the shared queue goes to the other workers
	}()
	for {
		conn, err := ln.Accept()
		if err != nil {
			return 0
		}
		func() {
			defer conn.Close()
			req, err := http.ReadRequest(bufio.NewReader(conn))
			if err != nil {
				return
			}
			_, _ = io.Copy(io.Discard, req.Body)
			time.Sleep(d) // the request's cost
			body := fmt.Sprintf("pid=%d\n", os.Getpid())
			fmt.Fprintf(conn, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(body), body)
		}()
	}
}
