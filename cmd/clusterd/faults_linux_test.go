//go:build faults

package main

// The fault-injection suite: `go test -tags faults -run TestFault ./...`.
// Each test runs the real clusterd command (the test binary re-executed)
// with real workers, injects one fault, states the bound it holds the
// master to, logs its figures and leaves no process behind (the harness's
// cleanup kills by pid whatever carries its cluster's mark).

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// faultDuration reads a phase length from the environment (for shorter
// local runs), with def as the suite's own length.
func faultDuration(t *testing.T, env string, def time.Duration) time.Duration {
	t.Helper()
	v := os.Getenv(env)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		t.Fatalf("%s=%q: %v", env, v, err)
	}
	return d
}

// vmRSS reads a process's resident set in KiB.
func vmRSS(t testing.TB, pid int) int {
	t.Helper()
	return memStatus(t, pid)["VmRSS"]
}

// memStatus reads the memory lines of /proc/PID/status (VmRSS, RssAnon,
// RssFile, ...), in KiB.
func memStatus(t testing.TB, pid int) map[string]int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]int{}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[2] == "kB" {
			m[strings.TrimSuffix(f[0], ":")], _ = strconv.Atoi(f[1])
		}
	}
	if _, ok := m["VmRSS"]; !ok {
		t.Fatalf("no VmRSS for pid %d", pid)
	}
	return m
}

// comm is a process's command name, "" once it is gone.
func comm(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return strings.TrimSpace(string(b))
}

// waitNoZombieChildren waits until no child of pid is a zombie. A child
// reaped by someone else raises no event here, so this polls /proc, every
// 10 ms, until the failure deadline.
func waitNoZombieChildren(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(failAfter(t))
	for {
		var zombies []int
		for _, k := range childrenOf(pid) {
			if isZombie(k) {
				zombies = append(zombies, k)
			}
		}
		if len(zombies) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("master %d left %d zombie children unreaped: %v", pid, len(zombies), zombies)
		}
		time.Sleep(10 * time.Millisecond) // polling /proc: see above
	}
}

// settle is the one wait that proves something did not happen: long
// enough, on a loaded 2-CPU machine, for a message already sent to be acted
// on. CLUSTERD_FAULT_SETTLE scales it.
func settle(t *testing.T) {
	time.Sleep(faultDuration(t, "CLUSTERD_FAULT_SETTLE", 500*time.Millisecond))
}

// readyWorkers reports, with c.mu held, whether every slot 0..n-1 has a
// "worker ready" line after its last "worker exited" line, and returns
// the ready pids.
func readyWorkersLocked(c *cluster, n int) ([]int, bool) {
	ready := map[string]int{}
	for _, e := range c.logs {
		switch e.msg() {
		case "worker ready":
			ready[e.str("worker")] = e.int("pid")
		case "worker exited":
			if ready[e.str("worker")] == e.int("pid") {
				delete(ready, e.str("worker"))
			}
		}
	}
	var pids []int
	for slot := range n {
		pid, ok := ready[strconv.Itoa(slot)]
		if !ok {
			return nil, false
		}
		pids = append(pids, pid)
	}
	return pids, true
}

// chaosClient is one client connection of the chaos test: it never
// retries, and remembers which worker answered its connection last, so
// that every failure can be laid at the door of a killed or stopped worker.
type chaosFailure struct {
	keepAlive  bool
	pid        int // the worker that last answered on this connection (0: none yet)
	start, end time.Time
	err        error
}

type chaosLoad struct {
	addr string
	stop chan struct{}
	wg   sync.WaitGroup

	mu       sync.Mutex
	ok       int
	refused  int
	failures []chaosFailure
}

func startChaosLoad(t *testing.T, addr string, keep, fresh int) *chaosLoad {
	l := &chaosLoad{addr: addr, stop: make(chan struct{})}
	for i := range keep + fresh {
		l.wg.Go(func() { l.run(i < keep) })
	}
	t.Cleanup(l.halt)
	return l
}

func (l *chaosLoad) halt() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	l.wg.Wait()
}

func (l *chaosLoad) run(keepAlive bool) {
	var conn net.Conn
	var br *bufio.Reader
	pid := 0
	defer func() {
		if conn != nil {
			conn.Close()
		}
	}()
	req := "POST / HTTP/1.1\r\nHost: chaos\r\nContent-Length: 4\r\n\r\nping"
	if !keepAlive {
		req = "POST / HTTP/1.1\r\nHost: chaos\r\nConnection: close\r\nContent-Length: 4\r\n\r\nping"
	}
	for {
		select {
		case <-l.stop:
			return
		default:
		}
		start := time.Now()
		err := func() error {
			if conn == nil {
				c, err := net.DialTimeout("tcp", l.addr, 10*time.Second)
				if err != nil {
					return err
				}
				conn, br, pid = c, bufio.NewReader(c), 0
			}
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.WriteString(conn, req); err != nil {
				return err
			}
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				return err
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				return err
			}
			var p, id, gen int
			if _, err := fmt.Sscanf(string(body), "pid=%d worker=%d gen=%d", &p, &id, &gen); err != nil {
				return fmt.Errorf("answer %q: %w", body, err)
			}
			pid = p
			if !keepAlive || resp.Close {
				conn.Close()
				conn = nil
			}
			return nil
		}()
		l.mu.Lock()
		switch {
		case err == nil:
			l.ok++
		case errors.Is(err, syscall.ECONNREFUSED):
			l.refused++
		default:
			l.failures = append(l.failures, chaosFailure{keepAlive, pid, start, time.Now(), err})
		}
		l.mu.Unlock()
		if err != nil && conn != nil {
			conn.Close()
			conn = nil
		}
	}
}

// fault is one injected kill or stop: the worker and when it was hit.
type fault struct {
	pid        int
	start, end time.Time // end: SIGCONT for a stop, the kill itself for a kill
}

// TestFaultChaosUnderLoad: for 60 s (CLUSTERD_FAULT_CHAOS) clients keep 4
// workers busy while a random worker is SIGKILLed every 300 ms for the
// first two thirds, then SIGSTOPped for 2 s and SIGCONTed for the last
// third. Bound: 0 refused connections; every failed request was in flight
// on, or kept alive to, a worker that was killed or stopped, so there are
// at most (faults × clients) of them; the master is alive afterwards with
// 4 ready workers, and its fd count and VmRSS are within 10% of the start.
func TestFaultChaosUnderLoad(t *testing.T) {
	const workers, keep, fresh = 4, 8, 8
	total := faultDuration(t, "CLUSTERD_FAULT_CHAOS", 60*time.Second)
	killPhase := total * 2 / 3
	// fds and memory are also logged after a tenth of the run, once the
	// master has been through every path the chaos drives: RssFile (pages
	// of its binary touched for the first time) against RssAnon (its heap)
	// tells first use from growth.
	warmUp := total / 10
	c := startCluster(t, clusterConfig{flags: []string{listenAny, "-w", strconv.Itoa(workers), "--ready", "ipc",
		"--max-restarts", "-1", "--min-uptime", "1ms", "--backoff-min", "1ms", "--backoff-max", "1ms", "--log-level", "info"}})
	addr, _ := c.waitStarted()
	fdsStart, memStart := countFDs(t, c.pid), memStatus(t, c.pid)
	var fdsWarm int
	var memWarm map[string]int
	l := startChaosLoad(t, addr, keep, fresh)

	var faults []fault
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	live := func() []int {
		var pids []int
		for _, p := range markedPIDs(c.mark) {
			if comm(p) != "" {
				pids = append(pids, p)
			}
		}
		return pids
	}
	begin := time.Now()
	kills, stops := 0, 0
	tick := time.NewTicker(300 * time.Millisecond)
	for time.Since(begin) < killPhase {
		<-tick.C // the pace of the chaos, not a synchronisation
		if memWarm == nil && time.Since(begin) >= warmUp {
			fdsWarm, memWarm = countFDs(t, c.pid), memStatus(t, c.pid)
		}
		pids := live()
		if len(pids) == 0 {
			continue
		}
		victim := pids[rng.IntN(len(pids))]
		now := time.Now()
		if syscall.Kill(victim, syscall.SIGKILL) == nil {
			faults = append(faults, fault{victim, now, now})
			kills++
		}
	}
	tick.Stop()
	for time.Since(begin) < total {
		pids := live()
		if len(pids) == 0 {
			continue
		}
		victim := pids[rng.IntN(len(pids))]
		now := time.Now()
		if syscall.Kill(victim, syscall.SIGSTOP) != nil {
			continue
		}
		time.Sleep(2 * time.Second) // the fault itself: stopped for 2 s
		syscall.Kill(victim, syscall.SIGCONT)
		faults = append(faults, fault{victim, now, time.Now()})
		stops++
	}
	l.halt()

	var pids []int
	c.waitFor(fmt.Sprintf("%d ready workers", workers), func() bool {
		var ok bool
		pids, ok = readyWorkersLocked(c, workers)
		return ok
	})
	fds1, mem1 := countFDs(t, c.pid), memStatus(t, c.pid)
	fds0, rss0, rss1 := fdsStart, memStart["VmRSS"], mem1["VmRSS"]

	// Every failure must be explained by a fault: a keep-alive connection
	// last answered by a killed or stopped worker, or a request in flight
	// while a worker was killed or stopped.
	hit := map[int]bool{}
	for _, f := range faults {
		hit[f.pid] = true
	}
	var unexplained []chaosFailure
	for _, f := range l.failures {
		if f.pid != 0 && hit[f.pid] {
			continue
		}
		inFlight := slices.ContainsFunc(faults, func(x fault) bool {
			return !x.start.After(f.end) && !x.end.Before(f.start)
		})
		if !inFlight {
			unexplained = append(unexplained, f)
		}
	}
	clients := keep + fresh
	t.Logf("chaos %s: %d kills, %d stops; %d requests ok, %d refused, %d failed (bound %d = faults × clients), %d unexplained",
		total, kills, stops, l.ok, l.refused, len(l.failures), len(faults)*clients, len(unexplained))
	for _, m := range []struct {
		when string
		fds  int
		mem  map[string]int
	}{{"start", fdsStart, memStart}, {"after " + warmUp.String(), fdsWarm, memWarm}, {"end", fds1, mem1}} {
		t.Logf("master at %s: fds %d, VmRSS %d KiB (RssAnon %d, RssFile %d), VmHWM %d KiB",
			m.when, m.fds, m.mem["VmRSS"], m.mem["RssAnon"], m.mem["RssFile"], m.mem["VmHWM"])
	}
	t.Logf("%d ready workers %v", len(pids), pids)
	if l.refused > 0 {
		t.Errorf("%d connections refused, want 0", l.refused)
	}
	if len(l.failures) > len(faults)*clients {
		t.Errorf("%d failed requests, more than %d faults × %d clients", len(l.failures), len(faults), clients)
	}
	for i, f := range unexplained {
		if i == 5 {
			break
		}
		t.Errorf("failure not explained by a kill or stop: pid %d keep-alive %v at %s: %v",
			f.pid, f.keepAlive, f.start.Sub(begin).Round(time.Millisecond), f.err)
	}
	if l.ok == 0 {
		t.Error("no request succeeded")
	}
	if c.exited {
		t.Fatal("master exited")
	}
	if float64(fds1) > float64(fds0)*1.1 || float64(fds1) < float64(fds0)*0.9 {
		t.Errorf("master fds %d → %d, not within 10%%", fds0, fds1)
	}
	if float64(rss1) > float64(rss0)*1.1 {
		t.Errorf("master VmRSS %d → %d KiB, more than 10%% growth", rss0, rss1)
	}
}

// TestFaultMasterKilledLeavesNothing: 20 times, SIGKILL the master of 2
// workers that each started two grandchildren (one in its own session).
// Bound: no worker and no grandchild outlives the master.
func TestFaultMasterKilledLeavesNothing(t *testing.T) {
	for trial := range 20 {
		c := startCluster(t, clusterConfig{flags: []string{listenAny, "-w", "2", "--ready", "ipc"},
			helper: "hostile", workerArgs: []string{"grandkids"}})
		c.waitStarted()
		var procs []int
		for _, p := range markedPIDs(c.mark) {
			if p != c.pid {
				procs = append(procs, p)
			}
		}
		if len(procs) < 6 {
			t.Fatalf("trial %d: %d processes in the cluster (%v), want 2 workers and 4 grandchildren", trial, len(procs), procs)
		}
		if err := syscall.Kill(c.pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		c.wait()
		var left []string
		deadline := time.Now().Add(10 * time.Second) // for all of them together
		for _, p := range procs {
			if !waitGone(p, max(time.Until(deadline), time.Millisecond)) {
				left = append(left, fmt.Sprintf("%d (%s)", p, comm(p)))
			}
		}
		if len(left) > 0 {
			for _, p := range procs {
				syscall.Kill(p, syscall.SIGKILL) // by pid, so that cleanup need not wait for each
			}
			t.Fatalf("trial %d: %d of %d processes outlived the SIGKILLed master: %s", trial, len(left), len(procs), strings.Join(left, ", "))
		}
	}
	t.Logf("20 trials: every worker and grandchild gone with the master")
}

// TestFaultMasterOutOfFDs runs the master under a low RLIMIT_NOFILE.
// Bound: a clear error naming the cause (EMFILE), no crash (exit 0 or 1,
// never a panic or a signal), no process left behind.
func TestFaultMasterOutOfFDs(t *testing.T) {
	for _, limit := range []int{12, 32} {
		t.Run(fmt.Sprintf("nofile=%d", limit), func(t *testing.T) {
			useHelper(t, "clusterd-nofds")
			c := startCluster(t, clusterConfig{
				flags: []string{listenAny, "-w", "16", "--ready", "ipc", "--max-restarts", "5"},
				env:   []string{helperEnv + "=clusterd-nofds", "FAULT_NOFILE=" + strconv.Itoa(limit)},
			})
			c.waitFor("a too-many-open-files error", func() bool {
				for _, e := range c.logs {
					if strings.Contains(fmt.Sprint(e), "too many open files") {
						return true
					}
				}
				return false
			})
			// The master may be on its way out with that error: give it
			// time to exit on its own before asking it to stop.
			running := true
			select {
			case <-c.done:
				running = false
			case <-time.After(faultDuration(t, "CLUSTERD_FAULT_SETTLE", 500*time.Millisecond) * 4):
			}
			if running {
				c.signal(syscall.SIGTERM)
			}
			code, last := c.wait()
			ws := c.cmd.ProcessState.Sys().(syscall.WaitStatus)
			c.mu.Lock()
			var crash []string
			for _, e := range c.logs {
				if raw := e.str("@raw"); strings.HasPrefix(raw, "panic:") || strings.HasPrefix(raw, "fatal error:") {
					crash = append(crash, raw)
				}
			}
			c.mu.Unlock()
			t.Logf("RLIMIT_NOFILE %d: master exit code %d (still running 2 s after the error, so stopped with SIGTERM: %v), last line %q", limit, code, running, last)
			if ws.Signaled() || (code != 0 && code != 1) || len(crash) > 0 {
				t.Errorf("master crashed: status %v, code %d, %q", ws, code, crash)
			}
			for _, p := range markedPIDs(c.mark) {
				if !waitGone(p, 10*time.Second) {
					t.Errorf("process %d (%s) outlived the master", p, comm(p))
				}
			}
		})
	}
}

// TestFaultPIDFileUnwritable: the pid file's directory is read-only, full,
// or not a directory. Bound: exit 1 with one line naming the pid file and
// the cause, and no worker started.
func TestFaultPIDFileUnwritable(t *testing.T) {
	mountTmpfs := func(t *testing.T, flags uintptr, data string) string {
		dir := t.TempDir()
		if err := unix.Mount("tmpfs", dir, "tmpfs", flags, data); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("mount tmpfs on %s: %v (CI runs as root)", dir, err)
			}
			t.Skipf("mount tmpfs on %s: %v (needs root; run as root or under CI=true)", dir, err)
		}
		t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
		return dir
	}
	tests := []struct {
		name  string
		setup func(t *testing.T) string // returns the pid file path
		cause string
	}{
		{"read-only", func(t *testing.T) string {
			return filepath.Join(mountTmpfs(t, unix.MS_RDONLY, "size=64k"), "clusterd.pid")
		}, "read-only file system"},
		{"full", func(t *testing.T) string {
			dir := mountTmpfs(t, 0, "size=4k")
			f, err := os.Create(filepath.Join(dir, "filler"))
			if err != nil {
				t.Fatal(err)
			}
			for {
				if _, err := f.Write(make([]byte, 4096)); err != nil {
					break // ENOSPC: full
				}
			}
			f.Close()
			return filepath.Join(dir, "clusterd.pid")
		}, "no space left on device"},
		{"not-a-directory", func(t *testing.T) string {
			file := filepath.Join(t.TempDir(), "file")
			if err := os.WriteFile(file, nil, 0o644); err != nil {
				t.Fatal(err)
			}
			return filepath.Join(file, "clusterd.pid")
		}, "not a directory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := tt.setup(t)
			c := startCluster(t, clusterConfig{flags: []string{listenAny, "-w", "2", "--pid-file", path}})
			code, last := c.wait()
			t.Logf("pid file %s: exit %d, %q", path, code, last)
			if code != 1 || !strings.HasPrefix(last, "clusterd: ") || !strings.Contains(last, path) || !strings.Contains(last, tt.cause) {
				t.Errorf("clusterd with pid file in a %s directory: exit %d, last line %q; want 1 and one line naming %s and %q",
					tt.name, code, last, path, tt.cause)
			}
			if n := c.countLogs(0, "worker ready"); n > 0 {
				t.Errorf("%d workers became ready without a pid file", n)
			}
		})
	}
}

// TestFaultForkBomb: a worker starts 200 grandchildren (100 exit at once,
// 100 sleep, a third of those in their own session) and exits. Bound: all
// are reaped and none is left running once the worker is gone; its slot is
// replaced.
func TestFaultForkBomb(t *testing.T) {
	c := startCluster(t, clusterConfig{flags: []string{listenAny, "-w", "2", "--ready", "ipc",
		"--min-uptime", "1ms", "--backoff-min", "1ms", "--max-restarts", "-1"},
		helper: "hostile", workerArgs: []string{"forkbomb"}})
	line := c.waitStdout("forked 200 sleeps=")
	var sleeps []int
	for _, f := range strings.Split(line[strings.Index(line, "sleeps=")+len("sleeps="):], ",") {
		pid, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			t.Fatalf("fork bomb's line %q: %v", line, err)
		}
		sleeps = append(sleeps, pid)
	}
	_, ready := c.waitLog(0, "worker ready", "worker", 0, "generation", 2)
	var left []int
	deadline := time.Now().Add(10 * time.Second) // for all of them together
	for _, p := range sleeps {
		if !waitGone(p, max(time.Until(deadline), time.Millisecond)) {
			left = append(left, p)
		}
	}
	// Killed here, by pid, so that the harness's cleanup need not wait
	// for each; the master, their subreaper, must still reap them.
	for _, p := range left {
		syscall.Kill(p, syscall.SIGKILL)
	}
	waitNoZombieChildren(t, c.pid)
	t.Logf("fork bomb: 200 grandchildren, %d of the 100 sleeping ones left running after the worker exited; all reaped; slot 0 replaced by pid %d",
		len(left), ready.int("pid"))
	if len(left) > 0 {
		t.Errorf("%d of the %d sleeping grandchildren of the exited worker still run: %v", len(left), len(sleeps), left)
	}
	if c.exited {
		t.Error("master exited")
	}
}

// TestFaultWorkerClosesSockets: slot 0 says ready and then closes every
// socket it inherited. Bound: the port keeps serving through the other
// worker (0 refused, 0 failed), also across a reload.
func TestFaultWorkerClosesSockets(t *testing.T) {
	c := startCluster(t, clusterConfig{flags: []string{listenAny, "-w", "2", "--ready", "ipc"},
		helper: "hostile", workerArgs: []string{"closer"}})
	addr, _ := c.waitStarted()
	c.waitStdout("closed listeners")
	check := func(phase string) {
		served := map[int]int{}
		for range 200 {
			served[pidOf(t, get(t, "http://"+addr+"/"))]++
		}
		t.Logf("%s: 200 requests answered by %v", phase, served)
	}
	check("after slot 0 closed its sockets")
	cursor := c.logLen()
	c.signal(syscall.SIGHUP)
	c.waitLog(cursor, "reload done")
	check("after a reload")
}

// TestFaultWorkerFloodsOutput: slot 0 writes about 100 MB/s of lines to
// stdout and stderr for 10 s while the master's stdout is a pipe nobody
// reads. Bound: the master's loop still answers (a reload completes), its
// VmRSS grows by less than 16 MiB, the lines it cannot relay are counted
// and logged as dropped, and the other worker's requests keep succeeding
// (p99 under 1 s, logged against a quiet baseline).
func TestFaultWorkerFloodsOutput(t *testing.T) {
	flood := faultDuration(t, "CLUSTERD_FAULT_FLOOD", 10*time.Second)
	latencies := func(addr string, d time.Duration) (p50, p99 time.Duration, n int) {
		var ls []time.Duration
		for start := time.Now(); time.Since(start) < d; {
			t0 := time.Now()
			get(t, "http://"+addr+"/")
			ls = append(ls, time.Since(t0))
		}
		sort.Slice(ls, func(i, j int) bool { return ls[i] < ls[j] })
		return ls[len(ls)/2], ls[len(ls)*99/100], len(ls)
	}
	base := startCluster(t, clusterConfig{flags: []string{listenAny, "-w", "1", "--ready", "ipc"}})
	baseAddr, _ := base.waitStarted()
	b50, b99, bn := latencies(baseAddr, 2*time.Second)

	r, w, err := os.Pipe() // the master's stdout: never read
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); w.Close() })
	c := startClusterStdout(t, clusterConfig{flags: []string{listenAny, "-w", "2", "--ready", "ipc"},
		helper: "hostile", workerArgs: []string{"spew"}}, w)
	addr, _ := c.waitStarted()
	rss0 := vmRSS(t, c.pid)
	s50, s99, sn := latencies(addr, flood)
	cursor := c.logLen()
	c.signal(syscall.SIGHUP)
	c.waitLog(cursor, "reload done")
	rss1 := vmRSS(t, c.pid)
	var drops []logEntry
	c.mu.Lock()
	for _, e := range c.logs {
		if strings.Contains(e.msg(), "drop") {
			drops = append(drops, e)
		}
	}
	c.mu.Unlock()
	t.Logf("quiet baseline: %d requests, p50 %s p99 %s; beside the flood: %d requests, p50 %s p99 %s", bn, b50, b99, sn, s50, s99)
	t.Logf("master VmRSS %d → %d KiB; drop reports: %v", rss0, rss1, drops)
	if rss1-rss0 > 16<<10 {
		t.Errorf("master VmRSS grew %d KiB under the output flood, bound 16 MiB", rss1-rss0)
	}
	if s99 > time.Second {
		t.Errorf("p99 of the other worker's requests %s beside the flood, bound 1s (baseline %s)", s99, b99)
	}
	if len(drops) == 0 {
		t.Error("the master's stdout never drained, yet no dropped output was logged")
	}
}

// startClusterStdout is startCluster with the master's stdout on w (the
// harness reads only its stderr then).
func startClusterStdout(t *testing.T, cfg clusterConfig, w *os.File) *cluster {
	t.Helper()
	// fd 3 of the master is w; the clusterd-stdout helper moves it to fd 1.
	useHelper(t, "clusterd-stdout")
	cfg.extra = append(cfg.extra, w)
	cfg.env = append(cfg.env, helperEnv+"=clusterd-stdout")
	return startCluster(t, cfg)
}

// TestFaultNotifyFlood: with --ready notify, slot 0 floods NOTIFY_SOCKET
// with junk, oversized datagrams and READY=1 naming other pids (MAINPID)
// before it says READY=1 itself; slot 1 says READY=1 only when the test
// lets it. Bound: slot 1 is not ready before that, the master stays up
// with VmRSS growth under 8 MiB, and both become ready.
func TestFaultNotifyFlood(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "late")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	c := startCluster(t, clusterConfig{flags: []string{listenAny, "-w", "2", "--ready", "notify", "--env", "FAULT_FIFO=" + fifo},
		helper: "hostile", workerArgs: []string{"notifyflood"}})
	c.waitLog(0, "listening")
	rss0 := vmRSS(t, c.pid)
	line := c.waitStdout("flood done")
	settle(t) // the flood is sent; give the master time to act on all of it
	if i, e := findLogLocked(c, "worker ready", "worker", 1); i >= 0 {
		t.Errorf("slot 1 became ready (%v) from a flood of datagrams that were not its own", e)
	}
	rss1 := vmRSS(t, c.pid)
	f, err := os.OpenFile(fifo, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	c.waitLog(0, "all workers ready")
	t.Logf("%s; master VmRSS %d → %d KiB", strings.TrimSpace(line), rss0, rss1)
	if rss1-rss0 > 8<<10 {
		t.Errorf("master VmRSS grew %d KiB under the notify flood, bound 8 MiB", rss1-rss0)
	}
}

func findLogLocked(c *cluster, msg string, kv ...any) (int, logEntry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return findLog(c.logs, msg, kv...)
}

// TestFaultIPCGarbage: slot 0 writes 64 KiB of garbage to its IPC fd in
// generation 1 and a frame header announcing 1 GiB in generation 2.
// Bound: each is a logged protocol error and a restart of that worker
// only; the master's VmRSS grows by less than 8 MiB (the 1 GiB frame is
// never allocated); generation 3 becomes ready.
func TestFaultIPCGarbage(t *testing.T) {
	c := startCluster(t, clusterConfig{flags: []string{listenAny, "-w", "2", "--ready", "ipc",
		"--min-uptime", "1ms", "--backoff-min", "1ms", "--max-restarts", "-1"},
		helper: "hostile", workerArgs: []string{"ipcgarbage"}})
	c.waitLog(0, "listening")
	rss0 := vmRSS(t, c.pid)
	c.waitLog(0, "worker ready", "worker", 0, "generation", 3)
	rss1 := vmRSS(t, c.pid)
	var protoErrs []string
	c.mu.Lock()
	for _, e := range c.logs {
		if e.msg() == "ipc protocol error" && e.str("worker") == "0" {
			protoErrs = append(protoErrs, fmt.Sprintf("generation %s: %s", e.str("generation"), e.str("error")))
		}
	}
	c.mu.Unlock()
	t.Logf("protocol errors: %q; master VmRSS %d → %d KiB", protoErrs, rss0, rss1)
	if len(protoErrs) < 2 {
		t.Errorf("%d protocol errors logged for slot 0, want one for each of generations 1 and 2", len(protoErrs))
	}
	if rss1-rss0 > 8<<10 {
		t.Errorf("master VmRSS grew %d KiB, bound 8 MiB", rss1-rss0)
	}
	if n := c.countLogs(0, "worker exited"); n > 2+1 {
		t.Errorf("%d worker exits: more than slot 0's two hostile generations", n)
	}
}
