package main

import (
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/clusterd/clusterd/master"
)

// The tests in this file run the real clusterd command (the test binary
// re-executed) with real workers, and synchronise on its JSON log lines.

const listenAny = "--listen=tcp://127.0.0.1:0"

func TestWorkersServeWithDistinctPIDs(t *testing.T) {
	for _, balance := range []string{"shared", "reuseport"} {
		t.Run(balance, func(t *testing.T) {
			t.Parallel()
			const n = 3
			c := startCluster(t, clusterConfig{flags: []string{listenAny, "-w", strconv.Itoa(n), "--balance", balance, "--ready", "ipc"}})
			addr, pids := c.waitStarted()
			if len(pids) != n {
				t.Fatalf("%d workers ready, want %d", len(pids), n)
			}
			// Every ready worker answers through the one address: the kernel
			// spreads new connections over them.
			seen := map[int]bool{}
			for i := 0; len(seen) < n && i < 5000; i++ {
				seen[pidOf(t, get(t, "http://"+addr+"/"))] = true
			}
			for _, pid := range pids {
				if !seen[pid] {
					t.Errorf("worker pid %d never answered; answers came from %v", pid, slices.Sorted(maps.Keys(seen)))
				}
			}
			if len(seen) != n {
				t.Errorf("answers from pids %v, want the %d ready workers %v", slices.Sorted(maps.Keys(seen)), n, pids)
			}
		})
	}
}

// reloadUnderLoad starts a cluster, keeps 32 clients busy, and sends HUP
// five times; every request must succeed and every worker be new.
func TestReloadUnderLoad(t *testing.T) {
	tests := []struct {
		name      string
		balance   string
		keepAlive bool
	}{
		{"keep-alive", "shared", true},
		{"new-connection-per-request", "shared", false},
		// Each slot's SO_REUSEPORT socket passes from the old worker to
		// the new one, with the connections waiting in its queue.
		{"reuseport", "reuseport", false},
	}
	for _, tt := range tests {
		keepAlive := tt.keepAlive
		t.Run(tt.name, func(t *testing.T) {
			c := startCluster(t, clusterConfig{flags: []string{listenAny, "-w", "2", "--ready", "ipc", "--kill-timeout", "10s", "--balance", tt.balance}})
			addr, first := c.waitStarted()
			l := startLoad(t, "http://"+addr+"/", 32, keepAlive)
			old := map[int]bool{}
			for _, pid := range first {
				old[pid] = true
			}
			for i := range 5 {
				before := currentPIDs(c)
				cursor := c.logLen()
				served := l.ok.Load()
				c.signal(syscall.SIGHUP)
				c.waitLog(cursor, "reload done")
				// Every worker the reload replaced has drained and exited.
				for _, pid := range before {
					c.waitLog(cursor, "worker exited", "pid", pid)
				}
				if got := currentPIDs(c); len(got) != 2 || slices.ContainsFunc(got, func(p int) bool { return slices.Contains(before, p) }) {
					t.Fatalf("workers after reload %d: %v, before it %v; want 2 new ones", i+1, got, before)
				}
				if l.ok.Load() == served {
					t.Errorf("no request was served during reload %d", i+1)
				}
			}
			l.check(t)
			for pid := range old {
				if !waitGone(pid, failAfter(t)) {
					t.Errorf("first-generation worker %d still runs after 5 reloads", pid)
				}
			}
			cur := currentPIDs(c)
			if len(cur) != 2 {
				t.Fatalf("workers after 5 reloads: %v, want 2", cur)
			}
			for _, pid := range cur {
				if old[pid] {
					t.Errorf("worker pid %d survived 5 reloads", pid)
				}
			}
			if n := c.countLogs(0, "reload aborted"); n > 0 {
				t.Errorf("%d reloads aborted", n)
			}
			c.signal(syscall.SIGTERM)
			if code, last := c.wait(); code != 0 {
				t.Errorf("clusterd after TERM exited %d (%s), want 0", code, last)
			}
		})
	}
}

func countMsg(logs []logEntry, msg string) int {
	n := 0
	for _, e := range logs {
		if e.msg() == msg {
			n++
		}
	}
	return n
}

// currentPIDs lists the workers that are up now, from the log: ready and
// not exited since.
func currentPIDs(c *cluster) []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	up := map[int]bool{}
	for _, e := range c.logs {
		switch e.msg() {
		case "worker ready":
			up[e.int("pid")] = true
		case "worker exited":
			delete(up, e.int("pid"))
		}
	}
	return slices.Sorted(maps.Keys(up))
}

func TestScaleUnderLoad(t *testing.T) {
	for _, keepAlive := range []bool{true, false} {
		name := "new-connection-per-request"
		if keepAlive {
			name = "keep-alive"
		}
		t.Run(name, func(t *testing.T) {
			c := startCluster(t, clusterConfig{flags: []string{listenAny, "-w", "2", "--ready", "ipc"}})
			addr, _ := c.waitStarted()
			l := startLoad(t, "http://"+addr+"/", 32, keepAlive)
			cursor := c.logLen()
			for range 2 {
				c.signal(syscall.SIGTTIN)
				i, _ := c.waitLog(cursor, "scaling up")
				i, _ = c.waitLog(i, "worker ready")
				cursor = i + 1
			}
			if got := len(currentPIDs(c)); got != 4 {
				t.Errorf("workers after 2 TTIN = %d, want 4", got)
			}
			for range 3 {
				c.signal(syscall.SIGTTOU)
				i, _ := c.waitLog(cursor, "scaling down")
				i, _ = c.waitLog(i, "worker exited")
				cursor = i + 1
			}
			if got := len(currentPIDs(c)); got != 1 {
				t.Errorf("workers after 2 TTIN and 3 TTOU = %d, want 1", got)
			}
			l.check(t)
		})
	}
}

func TestKilledWorkerIsReplaced(t *testing.T) {
	c := startCluster(t, clusterConfig{flags: []string{listenAny, "-w", "2", "--ready", "ipc"}})
	addr, _ := c.waitStarted()
	c.mu.Lock()
	_, victim := findLog(c.logs, "worker ready", "worker", "1")
	c.mu.Unlock()
	l := startLoad(t, "http://"+addr+"/", 8, false)
	cursor := c.logLen()
	if err := syscall.Kill(victim.int("pid"), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_, exited := c.waitLog(cursor, "worker exited", "pid", victim.int("pid"))
	if exited.str("signal") != "SIGKILL" {
		t.Errorf("exit of the killed worker logged as %v, want signal SIGKILL", exited)
	}
	_, ready := c.waitLog(cursor, "worker ready", "worker", "1")
	if ready.int("generation") <= victim.int("generation") || ready.int("pid") == victim.int("pid") {
		t.Errorf("replacement %v, want slot 1 with a new pid and a generation above %d", ready, victim.int("generation"))
	}
	// The kill breaks the killed worker's own connections; the port itself
	// must never refuse one.
	l.halt()
	if n := l.refused.Load(); n > 0 {
		t.Errorf("%d connections refused while a worker was replaced", n)
	}
	if l.ok.Load() == 0 {
		t.Error("no request succeeded around the kill")
	}
	if pidOf(t, get(t, "http://"+addr+"/")) == victim.int("pid") {
		t.Error("the killed worker still answers")
	}
}

func findLog(logs []logEntry, msg string, kv ...any) (int, logEntry) {
	for i, e := range logs {
		if e.msg() == msg && matches(e, kv) {
			return i, e
		}
	}
	return -1, nil
}

func TestCrashLoopBacksOffAndStops(t *testing.T) {
	c := startCluster(t, clusterConfig{
		helper: "crash",
		// --min-uptime 1h: every crash counts as short-lived however slow
		// the machine is (a loaded one takes more than the default 1s to
		// start the helper), so each restart is delayed.
		flags: []string{listenAny, "-w", "1", "--min-uptime", "1h", "--backoff-min", "5ms", "--backoff-max", "40ms", "--max-restarts", "4", "--restart-window", "1m"},
	})
	code, last := c.wait()
	if code != exitError {
		t.Errorf("clusterd with a crashing worker exited %d, want %d", code, exitError)
	}
	if !strings.HasPrefix(last, "clusterd: ") || !strings.Contains(last, "restart intensity") {
		t.Errorf("last line = %q, want `clusterd: ...restart intensity...`", last)
	}
	if n := c.countLogs(0, "restart intensity exceeded"); n != 1 {
		t.Errorf("%d restart intensity lines, want 1", n)
	}
	exits := c.countLogs(0, "worker exited")
	if exits != 5 {
		t.Errorf("%d worker exits, want 5 (4 restarts allowed)", exits)
	}
	// Each restart waits longer than the last, up to --backoff-max.
	var backoffs []time.Duration
	c.mu.Lock()
	for _, e := range c.logs {
		if e.msg() == "restart delayed" {
			d, err := time.ParseDuration(e.str("backoff"))
			if err != nil {
				t.Errorf("restart delayed with backoff %q: %v", e.str("backoff"), err)
			}
			backoffs = append(backoffs, d)
		}
	}
	c.mu.Unlock()
	if len(backoffs) != 4 {
		t.Fatalf("%d delayed restarts %v, want 4", len(backoffs), backoffs)
	}
	for i, d := range backoffs {
		if d <= 0 || d > 40*time.Millisecond {
			t.Errorf("backoff %d = %v, want within (0, 40ms]", i, d)
		}
	}
	if backoffs[3] <= backoffs[0] {
		t.Errorf("backoffs %v do not grow", backoffs)
	}
}

func TestGracefulStopFinishesSlowRequest(t *testing.T) {
	pidFile := t.TempDir() + "/clusterd.pid"
	c := startCluster(t, clusterConfig{flags: []string{listenAny, "-w", "2", "--ready", "ipc", "--pid-file", pidFile}})
	addr, _ := c.waitStarted()
	if b, err := os.ReadFile(pidFile); err != nil || strings.TrimSpace(string(b)) != strconv.Itoa(c.pid) {
		t.Errorf("pid file holds %q, %v; want %d", b, err, c.pid)
	}
	type result struct {
		body string
		err  error
	}
	res := make(chan result, 1)
	go func() {
		client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
		resp, err := client.Get("http://" + addr + "/slow")
		if err != nil {
			res <- result{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		res <- result{body: string(b), err: err}
	}()
	c.waitStdout("slow request started")
	c.signal(syscall.SIGTERM)
	r := <-res
	if r.err != nil || !strings.HasPrefix(r.body, "slow done") {
		t.Errorf("slow request across a graceful stop = %q, %v; want it answered", r.body, r.err)
	}
	if code, last := c.wait(); code != 0 {
		t.Errorf("clusterd after TERM exited %d (%s), want 0", code, last)
	}
	c.waitLog(0, "stopped")
	if _, err := os.Stat(pidFile); !os.IsNotExist(err) {
		t.Errorf("pid file after stop: %v, want it removed", err)
	}
}

func TestStuckWorkerKilledAtKillTimeout(t *testing.T) {
	c := startCluster(t, clusterConfig{
		flags:      []string{listenAny, "-w", "1", "--ready", "ipc", "--kill-timeout", "300ms"},
		workerArgs: []string{"-ignore-term"},
	})
	_, pids := c.waitStarted()
	start := time.Now()
	c.signal(syscall.SIGTERM)
	c.waitLog(0, "worker killed after kill timeout")
	_, exited := c.waitLog(0, "worker exited", "pid", pids[0])
	if exited.str("signal") != "SIGKILL" {
		t.Errorf("stuck worker exit = %v, want signal SIGKILL", exited)
	}
	if code, last := c.wait(); code != 0 {
		t.Errorf("clusterd exited %d (%s), want 0", code, last)
	}
	if el := time.Since(start); el < 300*time.Millisecond {
		t.Errorf("stuck worker killed %v after TERM, before --kill-timeout 300ms", el)
	}
}

func TestNoWorkerSurvivesKilledMaster(t *testing.T) {
	for i := range 20 {
		c := startCluster(t, clusterConfig{flags: []string{listenAny, "-w", "2", "--ready", "ipc"}})
		_, pids := c.waitStarted()
		if err := syscall.Kill(c.pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		for _, pid := range pids {
			if !waitGone(pid, 30*time.Second) {
				status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
				t.Fatalf("round %d: worker %d survived its SIGKILLed master:\n%s", i, pid, status)
			}
		}
		c.wait()
	}
}

func TestWorkerInheritsOnlyItsFDs(t *testing.T) {
	// The worker count comes from the environment, which the master reads
	// and removes from what its workers inherit.
	c := startCluster(t, clusterConfig{
		flags: []string{listenAny, "--listen=tcp://127.0.0.1:0", "--ready", "ipc"},
		env:   []string{"CLUSTERD_WORKERS=1"},
	})
	addr, pids := c.waitStarted()
	if len(pids) != 1 {
		t.Errorf("CLUSTERD_WORKERS=1 started %d workers", len(pids))
	}
	body := get(t, "http://"+addr+"/fds")
	vals := map[string]string{}
	for line := range strings.Lines(body) {
		k, v, _ := strings.Cut(strings.TrimSpace(line), "=")
		vals[k] = v
	}
	// The worker removed LISTEN_FDS when it took its listeners; two
	// addresses give fds 3 and 4.
	want := []int{0, 1, 2, 3, 4}
	ipcFD, err := strconv.Atoi(vals["CLUSTERD_IPC_FD"])
	if err != nil {
		t.Fatalf("worker's CLUSTERD_IPC_FD = %q: %v", vals["CLUSTERD_IPC_FD"], err)
	}
	want = append(want, ipcFD)
	slices.Sort(want)
	want = slices.Compact(want)
	if v := vals["CLUSTERD_WORKERS"]; v != "(unset)" {
		t.Errorf("worker sees the master's CLUSTERD_WORKERS=%s", v)
	}
	if got := vals["fds"]; got != joinInts(want) {
		t.Errorf("worker inherited fds %s, want exactly %s (stdio, 2 listeners, IPC fd %d):\n%s", got, joinInts(want), ipcFD, body)
	}
}

func TestMasterFDsStableAcrossRestarts(t *testing.T) {
	const restarts = 200
	// Generation 1 runs; 2..201 exit at once; 202 runs. A shell keeps each
	// restart cheap.
	script := fmt.Sprintf(`if [ "$CLUSTERD_WORKER_GEN" -ge 2 ] && [ "$CLUSTERD_WORKER_GEN" -le %d ]; then exit 0; fi; exec sleep 600`, restarts+1)
	c := startCluster(t, clusterConfig{
		flags: []string{listenAny, "-w", "1", "--max-restarts", "-1",
			"--min-uptime", "1ms", "--backoff-min", "1ms", "--backoff-max", "1ms"},
		command: []string{"/bin/sh", "-c", script},
	})
	_, pids := c.waitStarted()
	before := countFDs(t, c.pid)
	if err := syscall.Kill(pids[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// Each wait bounds the time to the next step of progress, not the
	// whole run: on a loaded machine 200 restarts of a race-built master
	// take longer than one failure deadline, and a stall still fails.
	cursor := 0
	for gen := 50; gen <= restarts; gen += 50 {
		cursor, _ = c.waitLog(cursor, "worker exited", "generation", gen)
	}
	c.waitLog(cursor, "worker ready", "generation", restarts+2)
	after := countFDs(t, c.pid)
	if exits := c.countLogs(0, "worker exited"); exits != restarts+1 {
		t.Errorf("%d worker exits, want %d", exits, restarts+1)
	}
	if after != before {
		t.Errorf("master has %d fds after %d restarts, %d before", after, restarts, before)
	}
}

func countFDs(t *testing.T, pid int) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func TestBadInput(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { busy.Close() }) // after the parallel subtests
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	notExec := t.TempDir() + "/server"
	if err := os.WriteFile(notExec, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		flags   []string
		command []string
		want    string
	}{
		{"unknown flag", []string{"--frobnicate"}, []string{exe}, "unknown flag: --frobnicate"},
		{"bad address", []string{"--listen", "tcp://127.0.0.1:99999"}, []string{exe}, "--listen"},
		{"address in use", []string{"--listen", "tcp://" + busy.Addr().String()}, []string{exe}, "address already in use"},
		{"missing command", []string{listenAny}, []string{t.TempDir() + "/nonexistent"}, "nonexistent"},
		{"command not executable", []string{listenAny}, []string{notExec}, "not executable"},
		{"workers 0", []string{listenAny, "--workers", "0"}, []string{exe}, "--workers must be at least 1"},
		{"unknown user", []string{listenAny, "--user", "no-such-user-clusterd"}, []string{exe}, "no-such-user-clusterd"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := startCluster(t, clusterConfig{flags: tt.flags, command: tt.command})
			code, last := c.wait()
			if code == 0 {
				t.Errorf("clusterd exited 0, want non-zero")
			}
			c.mu.Lock()
			var raw []string
			for _, e := range c.logs {
				if r := e.str("@raw"); r != "" {
					raw = append(raw, r)
				}
			}
			started := countMsg(c.logs, "worker ready")
			c.mu.Unlock()
			if len(raw) != 1 || !strings.HasPrefix(last, "clusterd: ") || !strings.Contains(last, tt.want) {
				t.Errorf("stderr lines besides the log: %q; want one `clusterd: ...%s...`", raw, tt.want)
			}
			if started > 0 {
				t.Errorf("%d workers became ready", started)
			}
			if pids := markedPIDs(c.mark); len(pids) > 0 {
				t.Errorf("workers %v left running", pids)
			}
		})
	}
}

func TestCrashingWorkerUnderLoad(t *testing.T) {
	c := startCluster(t, clusterConfig{
		flags:      []string{listenAny, "-w", "2", "--ready", "ipc", "--max-restarts", "-1", "--backoff-min", "1ms", "--backoff-max", "5ms"},
		workerArgs: []string{"-crash-after", "100"},
	})
	addr, _ := c.waitStarted()
	l := startLoad(t, "http://"+addr+"/", 8, false)
	// Workers exit with code 3 after 100 answers; their slots are refilled.
	c.waitFor("4 crashed workers replaced", func() bool {
		n := 0
		for _, e := range c.logs {
			if e.msg() == "worker ready" && e.int("generation") > 1 {
				n++
			}
		}
		return countMsg(c.logs, "worker exited") >= 4 && n >= 4
	})
	l.halt()
	// A crash breaks the connections its worker had accepted; the port
	// itself never refuses one.
	if n := l.refused.Load(); n > 0 {
		t.Errorf("%d connections refused while crashed workers were replaced", n)
	}
	c.mu.Lock()
	for _, e := range c.logs {
		if e.msg() == "worker exited" && e.int("exit_code") != 3 {
			t.Errorf("worker exit %v, want exit_code 3", e)
		}
	}
	c.mu.Unlock()
}

// TestSocketActivation starts clusterd the way systemd does for a .socket
// unit: the listening socket at fd 3 with LISTEN_FDS, and LISTEN_PID the
// master's own pid (exec-worker sets it, then execs clusterd).
func TestSocketActivation(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f, err := ln.(*net.TCPListener).File() // a dup, for fd 3 of the master
	ln.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	c := startCluster(t, clusterConfig{
		flags:  []string{"-w", "2", "--ready", "ipc"},
		prefix: []string{master.ExecWorkerArg, "--", exe},
		extra:  []*os.File{f},
		env:    []string{"LISTEN_FDS=1", "LISTEN_FDNAMES=web"},
		helper: "worker",
	})
	_, l := c.waitLog(0, "listening")
	if l.str("name") != "web" {
		t.Errorf("activated socket logged as %v, want name web", l)
	}
	addr, pids := c.waitStarted()
	if len(pids) != 2 {
		t.Errorf("%d workers ready, want 2", len(pids))
	}
	body := get(t, "http://"+addr+"/")
	if !slices.Contains(pids, pidOf(t, body)) {
		t.Errorf("answer %q from none of the workers %v", body, pids)
	}
}

// TestFailedSpawnUnderLoad: a reload whose new worker fails is aborted, the
// old workers keep serving every request, and they still drain on their
// stop signal. (A master that switched the shared socket to blocking mode
// while handing it over would leave them stuck in accept4 until SIGKILL.)
func TestFailedSpawnUnderLoad(t *testing.T) {
	c := startCluster(t, clusterConfig{
		flags:      []string{listenAny, "-w", "2", "--ready", "ipc", "--kill-timeout", "30s"},
		workerArgs: []string{"-fail-gens", "2-1000"},
	})
	addr, first := c.waitStarted()
	l := startLoad(t, "http://"+addr+"/", 32, false)
	c.signal(syscall.SIGHUP)
	c.waitLog(0, "reload aborted")
	l.check(t)
	if got := currentPIDs(c); !slices.Equal(got, slices.Sorted(slices.Values(first))) {
		t.Errorf("workers after an aborted reload: %v, want the first ones %v", got, first)
	}
	c.signal(syscall.SIGTERM)
	if code, last := c.wait(); code != 0 {
		t.Errorf("clusterd after TERM exited %d (%s), want 0", code, last)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, pid := range first {
		if _, e := findLog(c.logs, "worker exited", "pid", pid); e == nil || e.str("exit_code") != "0" {
			t.Errorf("first worker %d: exit %v, want a drained exit with code 0", pid, e)
		}
	}
	if _, e := findLog(c.logs, "worker killed after kill timeout"); e != nil {
		t.Errorf("a worker had to be killed: %v", e)
	}
}

// TestWorkersGOMAXPROCS: by default the workers share the CPUs out through
// GOMAXPROCS; --gomaxprocs N sets it, and inherit leaves the master's.
func TestWorkersGOMAXPROCS(t *testing.T) {
	t.Parallel()
	auto := max(1, runtime.GOMAXPROCS(0)/2) // Go counts the CPUs as the master does
	if v := os.Getenv("GOMAXPROCS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			t.Skipf("GOMAXPROCS=%q in the test's environment: not a number", v)
		}
		auto = n // inherited: auto leaves it
	}
	for _, tt := range []struct {
		name  string
		flags []string
		env   []string
		want  int
	}{
		{"auto", []string{"-w", "2"}, nil, auto},
		{"given", []string{"-w", "1", "--gomaxprocs", "3"}, nil, 3},
		{"inherit", []string{"-w", "2", "--gomaxprocs", "inherit"}, []string{"GOMAXPROCS=5"}, 5},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := startCluster(t, clusterConfig{flags: append([]string{listenAny, "--ready", "ipc"}, tt.flags...), env: tt.env})
			addr, _ := c.waitStarted()
			body := get(t, "http://"+addr+"/fds")
			want := fmt.Sprintf("runtime.GOMAXPROCS=%d\n", tt.want)
			if !strings.Contains(body, want) {
				t.Errorf("worker reports:\n%s\nwant %q", body, want)
			}
			c.signal(syscall.SIGTERM)
			if code, last := c.wait(); code != 0 {
				t.Errorf("TERM: exit %d (%s), want 0", code, last)
			}
		})
	}
}
