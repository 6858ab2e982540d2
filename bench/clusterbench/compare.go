package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// compareResults is what one comparison run measured, written as JSON for
// bench/charts, which draws the charts and the results table from it.
type compareResults struct {
	Started  time.Time
	Machine  string
	Versions map[string]string
	Config   map[string]string
	Targets  []targetInfo
	Rounds   []roundResult
}

type targetInfo struct {
	Name, Short string
	Floor       bool
}

// roundResult is one target in one round.
type roundResult struct {
	Target  string
	Round   int
	LoadAvg string // /proc/loadavg when the target started
	Err     string `json:",omitempty"`

	KeepAlive, Close wrkFigures

	// Rolling reloads under load, by failure class, for the keep-alive
	// and the Connection: close clients.
	Reloads           int
	ReloadOK          int64
	ReloadFailKeep    failCounts
	ReloadFailClose   failCounts
	ReloadCloseWait   int
	ReloadFirstErrors []string `json:",omitempty"`

	Kills []killResult

	RSSIdleKiB, PSSIdleKiB   int
	RSSAfterKiB, PSSAfterKiB int
	CPUIdlePct, CPULoadPct   float64 // of one CPU; -1 when there is no supervisor

	// Latency of every keep-alive request across the first reload (only
	// in the first round, only for the targets of the latency chart),
	// with the reload's start and end, all from the start of the load.
	Latency                []sample `json:",omitempty"`
	ReloadStart, ReloadEnd time.Duration
}

type wrkFigures struct {
	RPS      float64
	P50, P99 time.Duration
	Errors   int
}

// killResult is one kill -9 of a worker: the time until an answer came
// from a new process, and the probes that failed meanwhile.
type killResult struct {
	ToServing    time.Duration
	FailedProbes int
	Probes       int
	Replaced     bool
}

// latencyTargets are the rows whose latency across a reload is charted.
var latencyTargets = []string{"cd hello", "cd shared", "node rr", "pm2"}

func compare(c config) error {
	targets := compareTargets()
	if c.only != "" {
		want := strings.Split(c.only, ",")
		targets = slices.DeleteFunc(targets, func(t target) bool { return !slices.Contains(want, t.short) })
	}
	if len(targets) == 0 {
		return fmt.Errorf("-only %q matches no target", c.only)
	}
	res := compareResults{
		Started:  time.Now().UTC(),
		Machine:  machine(),
		Versions: versions(c),
		Config: map[string]string{
			"workers":        "2",
			"rounds":         strconv.Itoa(c.rounds),
			"wrk":            fmt.Sprintf("wrk -t%d -c%d -d%s --latency", c.threads, c.conns, c.duration),
			"reloads":        strconv.Itoa(c.cmpReloads),
			"reload clients": fmt.Sprintf("%d keep-alive + %d Connection: close connections, no retries, 5s request timeout", c.reloadConns, c.reloadConns),
			"kills":          fmt.Sprintf("%d per round; every 2ms, 4 probes at once, each a new connection", c.kills),
			"idle window":    "2s",
		},
	}
	for _, t := range targets {
		res.Targets = append(res.Targets, targetInfo{t.name, t.short, t.floor})
	}
	// SIGINT and SIGTERM stop the run between two steps: the target that is
	// running is stopped like any other, and the sweep kills the rest.
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer cancel()
	fmt.Printf("# compare: %d targets × %d rounds, %s\n", len(targets), c.rounds, res.Config["wrk"])
	var runErr error
rounds:
	for round := 1; round <= c.rounds; round++ {
		for _, t := range targets {
			if ctx.Err() != nil {
				runErr = ctx.Err()
				break rounds
			}
			rr := compareOne(ctx, c, t, round)
			res.Rounds = append(res.Rounds, rr)
			if n := sweep(c, t.short); n > 0 && rr.Err == "" {
				rr.Err = fmt.Sprintf("%d processes outlived the stop", n)
			}
			printRound(rr)
		}
	}
	if err := writeJSON(c.out, res); err != nil {
		return err
	}
	fmt.Printf("results: %s\n", c.out)
	return runErr
}

func writeJSON(path string, v any) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(v, "", " ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

func printRound(r roundResult) {
	if r.Err != "" {
		fmt.Printf("  round %d %-14s ERROR %s\n", r.Round, r.Target, r.Err)
	}
	fmt.Printf("  round %d %-12s load %-14s keep-alive %7.0f req/s p50 %-9s p99 %-9s | close %6.0f conn/s | reload fails keep %s / close %s | kills",
		r.Round, r.Target, r.LoadAvg, r.KeepAlive.RPS, r.KeepAlive.P50, r.KeepAlive.P99, r.Close.RPS, r.ReloadFailKeep, r.ReloadFailClose)
	for _, k := range r.Kills {
		fmt.Printf(" %s(%d failed)", k.ToServing.Round(100*time.Microsecond), k.FailedProbes)
	}
	fmt.Printf(" | sup RSS %d→%d KiB PSS %d→%d KiB CPU idle %.1f%% load %.1f%%\n",
		r.RSSIdleKiB, r.RSSAfterKiB, r.PSSIdleKiB, r.PSSAfterKiB, r.CPUIdlePct, r.CPULoadPct)
}

// compareOne starts target t, measures it and stops it; an error stops
// the measurements of this target in this round, not the run.
func compareOne(ctx context.Context, c config, t target, round int) roundResult {
	rr := roundResult{Target: t.short, Round: round, LoadAvg: loadAvg(), CPUIdlePct: -1, CPULoadPct: -1}
	r, err := t.start(c, 2)
	if err != nil {
		rr.Err = "start: " + err.Error()
		return rr
	}
	defer r.stop()
	if err := measure(ctx, c, t, r, &rr); err != nil {
		rr.Err = err.Error()
	}
	return rr
}

func measure(ctx context.Context, c config, t target, r *running, rr *roundResult) error {
	if r.sup > 0 {
		cpu0, _, err := procCPU(r.sup)
		if err != nil {
			return err
		}
		time.Sleep(2 * time.Second) // the idle window being measured
		cpu1, _, err := procCPU(r.sup)
		if err != nil {
			return err
		}
		rr.CPUIdlePct = 100 * (cpu1 - cpu0).Seconds() / 2
		rr.RSSIdleKiB, rr.PSSIdleKiB = rssPSS(r.sup)
	}
	t0 := time.Now()
	cpu0, _, _ := procCPU(r.sup)
	ka, err := runWrk(ctx, c, r.addr, c.duration, false)
	if err != nil {
		return fmt.Errorf("wrk keep-alive: %w", err)
	}
	rr.KeepAlive = wrkFigures{ka.rps, ka.p50, ka.p99, ka.errors()}
	cl, err := runWrk(ctx, c, r.addr, c.duration, true)
	if err != nil {
		return fmt.Errorf("wrk close: %w", err)
	}
	rr.Close = wrkFigures{cl.rps, cl.p50, cl.p99, cl.errors()}
	if r.sup > 0 {
		// Under load: across both wrk runs, keep-alive and close.
		cpu1, _, err := procCPU(r.sup)
		if err != nil {
			return err
		}
		rr.CPULoadPct = 100 * (cpu1 - cpu0).Seconds() / time.Since(t0).Seconds()
		rr.RSSAfterKiB, rr.PSSAfterKiB = rssPSS(r.sup)
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if r.reload != nil && c.cmpReloads > 0 {
		record := rr.Round == 1 && slices.Contains(latencyTargets, t.short)
		if err := reloadsUnderLoad(ctx, c, r, rr, record); err != nil {
			return fmt.Errorf("reloads: %w", err)
		}
	}
	if r.restarts {
		for range c.kills {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			// clusterd restarts a worker that dies within --min-uptime
			// (1s) after a backoff: let the workers pass it, so that the
			// kill is of a serving worker.
			time.Sleep(1200 * time.Millisecond)
			k, err := killToServing(r)
			if err != nil {
				return fmt.Errorf("kill -9: %w", err)
			}
			rr.Kills = append(rr.Kills, k)
		}
	}
	return nil
}

// reloadsUnderLoad runs c.cmpReloads rolling reloads, one after the other,
// while a keep-alive and a Connection: close client keep the server busy.
func reloadsUnderLoad(ctx context.Context, c config, r *running, rr *roundResult, record bool) error {
	keep := startLoadClient(r.addr, c.reloadConns, true, record)
	closing := startLoadClient(r.addr, c.reloadConns, false, false)
	var reloadErr error
	time.Sleep(300 * time.Millisecond) // pacing: load before the first reload
	for i := range c.cmpReloads {
		if ctx.Err() != nil {
			reloadErr = ctx.Err()
			break
		}
		start := time.Since(keep.start)
		if err := r.reload(); err != nil {
			reloadErr = err
			break
		}
		if i == 0 {
			rr.ReloadStart, rr.ReloadEnd = start, time.Since(keep.start)
		}
		rr.Reloads++
	}
	time.Sleep(300 * time.Millisecond) // pacing: load after the last reload
	k, cl := keep.halt(2*time.Second), closing.halt(2*time.Second)
	rr.ReloadOK = k.ok + cl.ok
	rr.ReloadFailKeep, rr.ReloadFailClose = k.fails, cl.fails
	rr.ReloadCloseWait = k.closeWait + cl.closeWait
	rr.ReloadFirstErrors = append(k.first, cl.first...)
	if record {
		lo, hi := rr.ReloadStart-500*time.Millisecond, rr.ReloadEnd+500*time.Millisecond
		for _, s := range k.samples {
			if s.At >= lo && s.At <= hi {
				rr.Latency = append(rr.Latency, s)
			}
		}
		slices.SortFunc(rr.Latency, func(a, b sample) int { return int(a.At - b.At) })
	}
	return reloadErr
}

// killToServing SIGKILLs one worker and probes every 2 ms, each probe a
// new connection, until an answer comes from a process that was not a
// worker before the kill. ToServing counts to the end of the round of
// probes that saw it.
func killToServing(r *running) (killResult, error) {
	before, err := r.workers()
	if err != nil {
		return killResult{}, err
	}
	victim := before[0]
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: time.Second}
	defer client.CloseIdleConnections()
	var k killResult
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	t0 := time.Now()
	if err := syscall.Kill(victim, syscall.SIGKILL); err != nil {
		return k, fmt.Errorf("kill %d: %w", victim, err)
	}
	deadline := t0.Add(20 * time.Second)
	// Each tick sends probesPerTick probes at once: one alone would mostly
	// be accepted by the surviving worker, which is awake, and say more
	// about the kernel's choice between accepting workers than about when
	// the replacement serves.
	const probesPerTick = 4
	type answer struct {
		pid int
		err error
	}
	answers := make(chan answer, probesPerTick)
	for time.Now().Before(deadline) {
		<-tick.C
		for range probesPerTick {
			go func() {
				pid, err := probe(client, r.addr)
				answers <- answer{pid, err}
			}()
		}
		replaced := false
		for range probesPerTick {
			a := <-answers
			k.Probes++
			if a.err != nil {
				k.FailedProbes++
			} else if !slices.Contains(before, a.pid) {
				replaced = true
			}
		}
		if replaced {
			k.ToServing, k.Replaced = time.Since(t0), true
			return k, nil
		}
	}
	k.ToServing = time.Since(t0)
	return k, nil
}

func probe(client *http.Client, addr string) (int, error) {
	resp, err := client.Get("http://" + addr + "/")
	if err != nil {
		return 0, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return 0, err
	}
	pid, ok := parsePID(string(body))
	if !ok || resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("answer %d %q", resp.StatusCode, body)
	}
	return pid, nil
}

// rssPSS reads a process's resident set (VmRSS) and its proportional share
// (Pss, from smaps_rollup), in KiB.
func rssPSS(pid int) (rss, pss int) {
	rss, _, _ = procMem(pid)
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return rss, 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "Pss:" {
			pss, _ = strconv.Atoi(fields[1])
		}
	}
	return rss, pss
}

func loadAvg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func machine() string {
	model := "?"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	return fmt.Sprintf("%d CPUs (%s), Linux %s", runtime.NumCPU(), model, kernel())
}

// versions asks every program of the comparison for its version.
func versions(c config) map[string]string {
	v := map[string]string{"go": runtime.Version()}
	ask := func(key string, name string, args ...string) {
		if name == "" {
			return
		}
		cmd := exec.Command(name, args...)
		cmd.Env = benchEnv(c, "PM2_HOME="+c.pm2Home)
		out, _ := cmd.CombinedOutput()
		line, _, _ := strings.Cut(strings.SplitN(string(out), "\n", 2)[0], " Copyright")
		v[key] = strings.TrimSpace(line)
	}
	ask("clusterd", filepath.Join(c.bin, "clusterd"), "version")
	ask("node", c.node, "--version")
	// `pm2 --version` may start a daemon; its package says the same.
	if b, err := os.ReadFile(filepath.Join(filepath.Dir(c.pm2), "..", "pm2", "package.json")); c.pm2 != "" && err == nil {
		var pkg struct{ Version string }
		if json.Unmarshal(b, &pkg) == nil {
			v["pm2"] = pkg.Version
		}
	}
	ask("gunicorn", c.gunicorn, "--version")
	ask("wrk", "wrk", "-v")
	return v
}
