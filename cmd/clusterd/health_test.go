package main

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Worker health with real processes: hung workers, the watchdog, the
// memory limit, and the causes every exit is logged with.

// logTime is the time hclog stamped on a line.
func logTime(t *testing.T, e logEntry) time.Time {
	t.Helper()
	ts, err := time.Parse("2006-01-02T15:04:05.000000Z07:00", e.str("@timestamp"))
	if err != nil {
		t.Fatalf("log line %v: @timestamp: %v", e, err)
	}
	return ts
}

func TestHungWorkerReplaced(t *testing.T) {
	const interval, timeout = 100 * time.Millisecond, time.Second
	c := startCluster(t, clusterConfig{flags: []string{
		listenAny, "-w", "2", "--ready", "ipc", "--kill-timeout", "1s",
		"--heartbeat-interval", interval.String(), "--heartbeat-timeout", timeout.String(),
	}})
	addr, pids := c.waitStarted()
	hung := pids[0]
	cursor := c.logLen()
	// Stopped, it accepts nothing more: the shared socket hands every new
	// connection to the other worker, so the load sees no failure.
	if err := syscall.Kill(hung, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	// kill returns before every thread has stopped; one still running
	// could accept a connection of the load and then hold it.
	waitStopped(t, hung)
	l := startLoad(t, "http://"+addr+"/", 8, false)
	_, e := c.waitLog(cursor, "worker hung", "pid", hung)
	took := logTime(t, e).Sub(stopped)
	t.Logf("hang detected %v after SIGSTOP (timeout %v, interval %v): %v", took, timeout, interval, e)
	// A generous bound for a loaded machine: the master's own timer runs
	// at the last heartbeat plus the timeout, which is at most the stop
	// plus the timeout.
	if took > timeout+interval+2*time.Second {
		t.Errorf("hang detected %v after SIGSTOP, want about heartbeat timeout %v plus one interval", took, timeout)
	}
	_, ready := c.waitLog(cursor, "worker ready", "worker", e.int("worker"), "generation", 2)
	_, exited := c.waitLog(cursor, "worker exited", "pid", hung)
	if !strings.HasPrefix(exited.str("cause"), "killed by clusterd: drain deadline passed") ||
		!strings.Contains(exited.str("cause"), "hang: no heartbeat for") || exited.str("signal") != "SIGKILL" {
		t.Errorf("hung worker's exit = %v, want a SIGKILL after its drain deadline, for the hang", exited)
	}
	if logTime(t, ready).After(logTime(t, exited)) {
		t.Errorf("replacement ready at %v, after the hung worker exited at %v: want it ready first", ready["@timestamp"], exited["@timestamp"])
	}
	// Before the SIGKILL, the master recorded its threads: stopped.
	_, th := c.waitLog(cursor, "worker thread before kill", "pid", hung)
	if !strings.HasPrefix(th.str("state"), "T") || th.str("tid") == "" {
		t.Errorf("thread record %v, want a stopped (T) thread", th)
	}
	if !waitGone(hung, failAfter(t)) {
		t.Errorf("hung worker %d still exists (zombie or alive)", hung)
	}
	// Served by the replacement too, then stop.
	c.waitFor("a request served after the replacement", func() bool { return l.ok.Load() > 0 })
	l.check(t)
	if n := c.countLogs(cursor, "worker hung"); n != 1 {
		t.Errorf("%d hangs logged, want 1 (the other worker kept heartbeating)", n)
	}
}

// waitStopped waits until every thread of pid is in the stopped state (T).
// No event announces it: it polls /proc, as the one wait here that sleeps.
func waitStopped(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(failAfter(t))
	for {
		tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stat", pid))
		all := len(tasks) > 0
		for _, f := range tasks {
			b, err := os.ReadFile(f)
			s := string(b)
			if i := strings.LastIndexByte(s, ')'); err != nil || i < 0 || i+2 >= len(s) || s[i+2] != 'T' {
				all = false
				break
			}
		}
		if all {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("worker %d did not stop", pid)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestWatchdog(t *testing.T) {
	const d = 1500 * time.Millisecond
	// Two clusters side by side: in one every worker keeps sending
	// WATCHDOG=1 (every d/4), in the other worker 1 sends it once.
	keep := startCluster(t, clusterConfig{
		flags:      []string{listenAny, "-w", "2", "--ready", "ipc", "--kill-timeout", "2s", "--watchdog", d.String()},
		workerArgs: []string{"-watchdog", "keep"},
	})
	once := startCluster(t, clusterConfig{
		flags:      []string{listenAny, "-w", "2", "--ready", "ipc", "--kill-timeout", "2s", "--watchdog", d.String()},
		workerArgs: []string{"-watchdog", "once", "-watchdog-slot", "1"},
	})
	keep.waitStarted()
	once.waitStarted()
	_, first := once.waitLog(0, "worker ready", "worker", 1, "generation", 1)
	_, e := once.waitLog(0, "worker hung", "worker", 1)
	if e.str("cause") != "no watchdog keep-alive" || e.int("pid") != first.int("pid") {
		t.Errorf("hang = %v, want worker 1 (pid %d) without watchdog keep-alive", e, first.int("pid"))
	}
	_, exited := once.waitLog(0, "worker exited", "pid", first.int("pid"))
	if !strings.Contains(exited.str("cause"), "hang: no WATCHDOG=1 for") {
		t.Errorf("exit = %v, want the watchdog hang as its cause", exited)
	}
	// Its replacement sends once too: a second hang, at least two
	// watchdog periods after the start, during which the other cluster's
	// workers kept sending.
	once.waitLog(0, "worker hung", "worker", 1, "generation", 2)
	if n := countMatching(once, "worker hung", "worker", 0); n != 0 {
		t.Errorf("worker 0 found hung %d times, want never (it never armed the watchdog)", n)
	}
	if n := keep.countLogs(0, "worker hung"); n != 0 {
		t.Errorf("%d workers found hung, want none: they keep sending WATCHDOG=1", n)
	}
	keep.signal(syscall.SIGTERM)
	if code, last := keep.wait(); code != 0 {
		t.Errorf("clusterd exited %d (%s), want 0", code, last)
	}
}

// countMatching counts log lines with message msg and fields kv.
func countMatching(c *cluster, msg string, kv ...any) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, e := range c.logs {
		if e.msg() == msg && matches(e, kv) {
			n++
		}
	}
	return n
}

func TestMaxMemoryReplacesGracefully(t *testing.T) {
	const limit = 64 << 20
	c := startCluster(t, clusterConfig{
		flags: []string{listenAny, "-w", "2", "--ready", "ipc", "--kill-timeout", "10s",
			"--max-memory", "64M", "--sample-interval", "100ms"},
		workerArgs: []string{"-grow", "1"},
	})
	addr, pids := c.waitStarted()
	l := startLoad(t, "http://"+addr+"/", 16, false)
	_, over := c.waitLog(0, "worker over memory limit", "pid", pids[0])
	if n := int64(over.int("rss_bytes")); n <= limit || over.str("limit") != "64.0MiB" || !strings.HasSuffix(over.str("rss"), "MiB") {
		t.Errorf("memory log = %v, want an rss over %d bytes and limit 64.0MiB", over, limit)
	}
	_, ready := c.waitLog(0, "worker ready", "worker", over.int("worker"), "generation", 2)
	_, exited := c.waitLog(0, "worker exited", "pid", pids[0])
	if !strings.Contains(exited.str("cause"), "memory limit: rss ") || exited.str("exit_code") != "0" {
		t.Errorf("exit = %v, want a drained exit (code 0) for the memory limit", exited)
	}
	if logTime(t, ready).After(logTime(t, exited)) {
		t.Errorf("replacement ready at %v, after the old worker exited at %v", ready["@timestamp"], exited["@timestamp"])
	}
	l.check(t)
	t.Logf("replaced at %s (limit %s): %s", over.str("rss"), over.str("limit"), exited.str("cause"))
}

func TestMaxRequestsRetiresGracefully(t *testing.T) {
	c := startCluster(t, clusterConfig{flags: []string{
		listenAny, "-w", "2", "--ready", "ipc", "--kill-timeout", "10s",
		"--heartbeat-interval", "50ms", "--max-requests", "200", "--max-requests-jitter", "50",
	}})
	addr, pids := c.waitStarted()
	l := startLoad(t, "http://"+addr+"/", 8, false)
	_, e := c.waitLog(0, "worker reached max requests")
	if n, limit := e.int("requests"), e.int("max_requests"); limit < 200 || limit > 250 || n < limit {
		t.Errorf("retire log %v, want a limit in [200, 250] and requests at or past it", e)
	}
	_, ready := c.waitLog(0, "worker ready", "worker", e.int("worker"), "generation", 2)
	_, exited := c.waitLog(0, "worker exited", "pid", e.int("pid"))
	if !strings.Contains(exited.str("cause"), "max requests: served ") || exited.str("exit_code") != "0" {
		t.Errorf("exit = %v, want a drained exit for max requests", exited)
	}
	if logTime(t, ready).After(logTime(t, exited)) {
		t.Errorf("replacement ready at %v, after the old worker exited at %v", ready["@timestamp"], exited["@timestamp"])
	}
	l.check(t)
	if !slices.Contains(pids, e.int("pid")) {
		t.Errorf("retired pid %d is not a first worker %v", e.int("pid"), pids)
	}
}

func TestExitCauses(t *testing.T) {
	c := startCluster(t, clusterConfig{
		flags:      []string{listenAny, "-w", "1", "--ready", "ipc", "--min-uptime", "1ms", "--backoff-min", "1ms", "--backoff-max", "2ms"},
		workerArgs: []string{"-crash-after", "1"},
	})
	addr, pids := c.waitStarted()
	// The worker exits with code 3 after answering, maybe before the
	// body is read: the request's outcome does not matter.
	if resp, err := http.Get("http://" + addr + "/"); err == nil {
		resp.Body.Close()
	}
	_, e := c.waitLog(0, "worker exited", "pid", pids[0])
	if e.str("cause") != "crashed: exit code 3" {
		t.Errorf("crash exit = %v, want cause %q", e, "crashed: exit code 3")
	}
	_, r := c.waitLog(0, "worker ready", "generation", 2)
	if err := syscall.Kill(r.int("pid"), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	_, e = c.waitLog(0, "worker exited", "pid", r.int("pid"))
	if e.str("cause") != "killed by signal SIGHUP from another process" {
		t.Errorf("exit = %v, want cause %q", e, "killed by signal SIGHUP from another process")
	}
	_, r = c.waitLog(0, "worker ready", "generation", 3)
	if err := syscall.Kill(r.int("pid"), syscall.SIGSEGV); err != nil {
		t.Fatal(err)
	}
	_, e = c.waitLog(0, "worker exited", "pid", r.int("pid"))
	// Go's runtime turns a SIGSEGV it did not cause into a crash with exit
	// code 2 and a stack dump.
	if cause := e.str("cause"); cause != "crashed: signal SIGSEGV" && cause != "crashed: exit code 2" {
		t.Errorf("exit = %v, want a crash", e)
	}

	stuck := startCluster(t, clusterConfig{
		flags:      []string{listenAny, "-w", "1", "--ready", "ipc", "--kill-timeout", "300ms"},
		workerArgs: []string{"-ignore-term"},
	})
	_, pids = stuck.waitStarted()
	stuck.signal(syscall.SIGTERM)
	_, e = stuck.waitLog(0, "worker exited", "pid", pids[0])
	if want := "killed by clusterd: drain deadline passed (kill timeout 300ms) while draining for stop"; e.str("cause") != want {
		t.Errorf("exit = %v, want cause %q", e, want)
	}
}

func TestDumpBeforeKill(t *testing.T) {
	c := startCluster(t, clusterConfig{
		flags:      []string{listenAny, "-w", "1", "--ready", "ipc", "--kill-timeout", "300ms", "--dump-signal", "SIGQUIT"},
		workerArgs: []string{"-ignore-term"},
	})
	_, pids := c.waitStarted()
	c.signal(syscall.SIGTERM)
	_, th := c.waitLog(0, "worker thread before kill", "pid", pids[0])
	if th.str("state") == "" || th.str("syscall") == "" {
		t.Errorf("thread record %v, want its state and system call", th)
	}
	c.waitLog(0, "asking worker for a dump before the kill", "signal", "SIGQUIT")
	_, e := c.waitLog(0, "worker exited", "pid", pids[0])
	if cause := e.str("cause"); !strings.Contains(cause, "drain deadline passed (kill timeout 300ms) while draining for stop, after a dump with SIGQUIT") {
		t.Errorf("exit = %v, want the drain deadline and the dump as its cause", e)
	}
	// Go's runtime wrote the goroutine dump to the worker's stderr, which
	// the master relayed.
	c.waitFor("the relayed goroutine dump", func() bool {
		for _, e := range c.logs {
			if raw, _ := e["@raw"].(string); strings.Contains(raw, "goroutine ") && strings.Contains(raw, "[") {
				return true
			}
		}
		return false
	})
	if code, last := c.wait(); code != 0 {
		t.Errorf("clusterd exited %d (%s), want 0", code, last)
	}
}

// childCgroup makes a cgroup under this process's own in the v1 hierarchy
// at /sys/fs/cgroup/CONTROLLER, or skips the test (fails it under CI=true).
func childCgroup(t *testing.T, controller string) string {
	t.Helper()
	skip := func(why string) {
		t.Helper()
		if os.Getenv("CI") == "true" {
			t.Fatalf("cannot make a %s cgroup: %s", controller, why)
		}
		t.Skipf("cannot make a %s cgroup (needs root and cgroup v1 %s at /sys/fs/cgroup/%s): %s", controller, controller, controller, why)
	}
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		skip(err.Error())
	}
	var own string
	for _, line := range strings.Split(string(b), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) == 3 && hasController(parts[1], controller) {
			own = parts[2]
		}
	}
	if own == "" {
		skip("no " + controller + " line in /proc/self/cgroup")
	}
	dir := filepath.Join("/sys/fs/cgroup", controller, own, fmt.Sprintf("clusterd-test-%d-%s", os.Getpid(), strings.ReplaceAll(t.Name(), "/", "-")))
	if err := os.Mkdir(dir, 0o755); err != nil {
		skip(err.Error())
	}
	t.Cleanup(func() {
		// Its processes are gone once the cluster's cleanup ran; the
		// kernel refuses to remove a cgroup that still has some.
		deadline := time.Now().Add(failAfter(t))
		for {
			err := os.Remove(dir)
			if err == nil || time.Now().After(deadline) {
				if err != nil {
					t.Errorf("remove cgroup %s: %v", dir, err)
				}
				return
			}
			time.Sleep(10 * time.Millisecond) // the last member's exit is being accounted
		}
	})
	return dir
}

func hasController(list, want string) bool {
	for _, c := range strings.Split(list, ",") {
		if c == want {
			return true
		}
	}
	return false
}

func writeCgroup(t *testing.T, dir, file, value string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, file), []byte(value), 0o644); err != nil {
		t.Fatalf("set %s/%s to %s: %v", dir, file, value, err)
	}
}

func TestExitCauseOOMKill(t *testing.T) {
	dir := childCgroup(t, "memory")
	writeCgroup(t, dir, "memory.limit_in_bytes", strconv.Itoa(64<<20))
	if _, err := os.Stat(filepath.Join(dir, "memory.memsw.limit_in_bytes")); err == nil {
		// Without a swap limit the kernel would swap rather than kill.
		writeCgroup(t, dir, "memory.memsw.limit_in_bytes", strconv.Itoa(64<<20))
	}
	c := startCluster(t, clusterConfig{
		flags:      []string{listenAny, "-w", "1", "--ready", "ipc", "--restart", "never"},
		workerArgs: []string{"-oom-cgroup", dir},
	})
	_, pids := c.waitStarted()
	_, e := c.waitLog(0, "worker exited", "pid", pids[0])
	want := "killed by the kernel's OOM killer (signal SIGKILL, the oom_kill count moved)"
	if e.str("cause") != want {
		t.Errorf("exit = %v, want cause %q", e, want)
	}
}

func TestWorkerCountFollowsCPUQuota(t *testing.T) {
	dir := childCgroup(t, "cpu")
	writeCgroup(t, dir, "cpu.cfs_period_us", "100000")
	writeCgroup(t, dir, "cpu.cfs_quota_us", "50000") // half a CPU: rounded up, one worker
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// The master joins the cgroup before it starts: a shell moves itself
	// there and execs it.
	c := startCluster(t, clusterConfig{
		prefix: []string{"-c", `echo $$ > "$0/cgroup.procs" && exec "$@"`, dir, exe},
		shell:  true,
		flags:  []string{listenAny, "--ready", "ipc"},
	})
	_, pids := c.waitStarted()
	_, e := c.waitLog(0, "worker count from CPUs")
	if e.int("workers") != 1 || !strings.Contains(e.str("source"), "cgroup v1") || len(pids) != 1 {
		t.Errorf("worker count = %v with %d workers, want 1 from the cgroup v1 quota", e, len(pids))
	}
}

func TestAutoscaleUnderLoad(t *testing.T) {
	c := startCluster(t, clusterConfig{
		flags: []string{listenAny, "--workers", "1:4", "--ready", "ipc", "--kill-timeout", "10s",
			"--scale-interval", "50ms", "--scale-up-after", "200ms", "--scale-down-after", "1s", "--scale-cooldown", "300ms"},
		helper:     "serial",
		workerArgs: []string{"-d", "20ms"},
	})
	addr, pids := c.waitStarted()
	if len(pids) != 1 {
		t.Fatalf("%d workers at start, want MIN 1", len(pids))
	}
	url := "http://" + addr + "/"
	heavy := startLoad(t, url, 64, false)
	start := time.Now()
	for n := 2; n <= 4; n++ {
		_, e := c.waitLog(0, "autoscale: adding a worker", "workers", n)
		if e.int("queue") < 1 || e.int("backlog") < 1 {
			t.Errorf("scale-up log %v, want the queue and backlog that made it", e)
		}
	}
	_, ready := c.waitLog(0, "worker ready", "worker", 3)
	t.Logf("4 workers ready %v after the load started", logTime(t, ready).Sub(start))
	heavy.check(t)
	if n := c.countLogs(0, "autoscale: adding a worker"); n != 3 {
		t.Errorf("%d scale-ups, want 3 (MAX 4)", n)
	}
	// A trickle of requests while the count falls back: each worker that
	// is retired drains, and none of them fails.
	light := startLoad(t, url, 1, false)
	for n := 3; n >= 1; n-- {
		c.waitLog(0, "autoscale: retiring a worker", "workers", n)
	}
	for slot := 1; slot <= 3; slot++ {
		_, e := c.waitLog(0, "worker exited", "worker", slot)
		if !strings.Contains(e.str("cause"), "scaled down") {
			t.Errorf("exit of worker %d = %v, want a drain for scaling down", slot, e)
		}
	}
	light.check(t)
}
