package mastertest_test

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/clusterd/clusterd/master"
	"github.com/clusterd/clusterd/master/mastertest"
)

func executable(t testing.TB) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return exe
}

// answer connects to addr and returns the worker's one-line answer as
// pid, slot and generation.
func answer(t testing.TB, addr string) (pid, id, gen int) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("answer from %s = %q, %v", addr, line, err)
	}
	if _, err := fmt.Sscanf(line, "pid %d worker %d generation %d", &pid, &id, &gen); err != nil {
		t.Fatalf("answer from %s = %q: %v", addr, line, err)
	}
	return pid, id, gen
}

// number returns the numeric field key of a decoded log line.
func number(t testing.TB, line map[string]any, key string) int {
	t.Helper()
	f, ok := line[key].(float64)
	if !ok {
		t.Fatalf("log line %v: %s is %T, want a number", line, key, line[key])
	}
	return int(f)
}

// TestCluster runs two workers, reloads them with SIGHUP and stops them,
// through every method of Cluster, and checks that nothing is left behind.
func TestCluster(t *testing.T) {
	exe := executable(t)
	// Let the runtime open its poller before counting descriptors.
	if ln, err := net.Listen("tcp", "127.0.0.1:0"); err == nil {
		ln.Close()
	}
	fdsBefore := openFDs(t)

	c := mastertest.Start(t, master.Options{
		Command: []string{exe},
		Env:     workerEnv("serve"),
		Workers: 2,
		Ready:   master.ReadyMode{Kind: master.ReadyIPC},
	})
	// Subreaper is off: the test process is no child subreaper.
	var subreaper int32
	if err := unix.Prctl(unix.PR_GET_CHILD_SUBREAPER, uintptr(unsafe.Pointer(&subreaper)), 0, 0, 0); err != nil {
		t.Fatalf("prctl PR_GET_CHILD_SUBREAPER: %v", err)
	}
	if subreaper != 0 {
		t.Error("the test process became a child subreaper: Subreaper is on")
	}
	if addrs := c.Addrs(); len(addrs) != 1 || addrs[0].String() != c.Addr() {
		t.Errorf("Addrs() = %v, want one address, Addr() = %s", addrs, c.Addr())
	}
	if !strings.HasPrefix(c.Addr(), "127.0.0.1:") || strings.HasSuffix(c.Addr(), ":0") {
		t.Errorf("Addr() = %q, want 127.0.0.1 and a chosen port", c.Addr())
	}
	listening := c.WaitLog("listening", 1)
	if listening["addr"] != c.Addr() || listening["@module"] != "clusterd.master" || listening["@level"] != "info" {
		t.Errorf(`WaitLog("listening", 1) = %v, want addr %s, module clusterd.master, level info`, listening, c.Addr())
	}
	readyPIDs := map[int]int{} // pid → slot
	for n := 1; n <= 2; n++ {
		e := c.WaitEvent(n, mastertest.EventIs(master.EventReady, -1))
		readyPIDs[e.PID] = e.Slot
		if l := c.WaitLog("worker ready", n); number(t, l, "pid") != e.PID {
			t.Errorf("ready event %d for pid %d, log line %v", n, e.PID, l)
		}
	}
	if len(readyPIDs) != 2 {
		t.Fatalf("ready workers by pid = %v, want two", readyPIDs)
	}
	for slot := range 2 {
		var kinds []master.EventKind
		for _, e := range c.Events() {
			if e.Slot == slot && e.Kind != master.EventReload {
				kinds = append(kinds, e.Kind)
			}
		}
		if want := []master.EventKind{master.EventFork, master.EventOnline, master.EventReady}; !slices.Equal(kinds, want) {
			t.Errorf("Events() of worker %d = %v, want %v", slot, kinds, want)
		}
	}
	pid, id, gen := answer(t, c.Addr())
	if slot, ok := readyPIDs[pid]; !ok || slot != id || gen != 1 {
		t.Errorf("answer = pid %d worker %d generation %d, want one of the ready workers %v, generation 1", pid, id, gen, readyPIDs)
	}

	if err := c.Signal(syscall.SIGHUP); err != nil {
		t.Fatalf("Signal(SIGHUP) = %v", err)
	}
	reload := c.WaitEvent(1, mastertest.EventIs(master.EventReload, -1))
	if reload.Err != nil || len(reload.Reload.Slots) != 2 {
		t.Errorf("reload event %+v, want both slots replaced", reload)
	}
	exited := c.WaitEvent(2, mastertest.EventIs(master.EventExit, -1))
	if !exited.ExitedAfterDisconnect {
		t.Errorf("worker exit during a reload %+v, want exitedAfterDisconnect (an expected exit)", exited)
	}
	if l := c.WaitLog("worker exited", 2); l["@level"] != "info" {
		t.Errorf("worker exited during a reload at level %v, want info (an expected exit)", l["@level"])
	}
	res, err := c.Master().Reload(t.Context())
	if err != nil || len(res.Slots) != 2 {
		t.Fatalf("Master().Reload = %+v, %v; want both slots replaced", res, err)
	}
	for _, s := range res.Slots {
		if _, old := readyPIDs[s.OldPID]; old {
			t.Errorf("second reload replaced pid %d of the first generation", s.OldPID)
		}
	}
	// Reload returns once the old workers were told to drain; until one
	// has acted on it (closed its listener) it may still accept on the
	// shared socket. Once they have exited, only the new ones can answer.
	for _, s := range res.Slots {
		c.WaitEvent(1, func(e master.Event) bool { return e.Kind == master.EventExit && e.PID == s.OldPID })
	}
	pid, _, gen = answer(t, c.Addr())
	if _, old := readyPIDs[pid]; old || gen != 3 {
		t.Errorf("after two reloads, answer from pid %d generation %d, want a new worker of generation 3", pid, gen)
	}
	logs := c.Logs()
	if i := slices.IndexFunc(logs, func(l map[string]any) bool { return l["@message"] == "reload started" }); i < 0 {
		t.Errorf("Logs() has no %q line", "reload started")
	}
	logs[0]["@message"] = "changed by the test"
	if c.Logs()[0]["@message"] == "changed by the test" {
		t.Error("Logs() returned the Cluster's own maps, want copies")
	}

	if err := c.Stop(); err != nil {
		t.Errorf("Stop() = %v, want nil", err)
	}
	select {
	case <-c.Done():
	default:
		t.Error("Done() not closed after Stop")
	}
	if err := c.Stop(); err != nil {
		t.Errorf("second Stop() = %v, want nil", err)
	}
	if err := c.Signal(syscall.SIGHUP); !errors.Is(err, mastertest.ErrStopped) {
		t.Errorf("Signal after Stop = %v, want ErrStopped", err)
	}
	c.WaitLog("stopped", 1)

	if kids := children(t); len(kids) > 0 {
		t.Errorf("processes left after Stop: %v", kids)
	}
	if fds := openFDs(t); fds != fdsBefore {
		t.Errorf("open descriptors: %d after Stop, %d before Start", fds, fdsBefore)
	}
}

// TestSignalStop stops the master with SIGTERM, as a program's signal
// handler would, and collects Run's result with Wait.
func TestSignalStop(t *testing.T) {
	c := mastertest.Start(t, master.Options{
		Command: []string{executable(t)},
		Env:     workerEnv("serve"),
		Workers: 1,
		Ready:   master.ReadyMode{Kind: master.ReadyIPC},
	})
	if err := c.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("Signal(SIGTERM) = %v", err)
	}
	if err := c.Wait(); err != nil {
		t.Errorf("Wait() after SIGTERM = %v, want nil", err)
	}
	if l := c.WaitLog("stopping", 1); l["signal"] != "SIGTERM" {
		t.Errorf(`WaitLog("stopping", 1) = %v, want signal SIGTERM`, l)
	}
}

// crashOnConnect starts one worker that exits 1 at its first connection,
// with a restart limit that the second crash exceeds.
func crashOnConnect(t testing.TB) *mastertest.Cluster {
	t.Helper()
	return mastertest.Start(t, master.Options{
		Command:     []string{executable(t)},
		Env:         workerEnv("exit-on-connect"),
		Workers:     1,
		Ready:       master.ReadyMode{Kind: master.ReadyIPC},
		MaxRestarts: 1,
		BackoffMin:  time.Millisecond,
		BackoffMax:  2 * time.Millisecond,
	})
}

// crashUntilStopped connects to c until the master gives up. Each
// connection waits in the shared accept queue for the next worker, which
// exits when it accepts it.
func crashUntilStopped(t testing.TB, c *mastertest.Cluster) {
	t.Helper()
	addr := c.Addr()
	for {
		select {
		case <-c.Done():
			return
		default:
		}
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			<-c.Done() // refused: the master has closed its listener
			return
		}
		io.Copy(io.Discard, conn) // EOF or reset when the worker exits
		conn.Close()
	}
}

// TestWaitRunError checks that Wait returns the error that ended Run.
func TestWaitRunError(t *testing.T) {
	c := crashOnConnect(t)
	crashUntilStopped(t, c)
	err := c.Wait()
	var ie *master.IntensityError
	if !errors.As(err, &ie) {
		t.Fatalf("Wait() = %v, want a *master.IntensityError", err)
	}
	if l := c.WaitLog("restart intensity exceeded", 1); l["@level"] != "error" {
		t.Errorf(`WaitLog("restart intensity exceeded", 1) = %v, want level error`, l)
	}
	if err := c.Stop(); !errors.As(err, &ie) {
		t.Errorf("Stop() after Run ended = %v, want the same *master.IntensityError", err)
	}
}

// fakeTB records what Cluster reports instead of failing the real test, so
// the failure paths can be checked. Fatal ends the calling goroutine, as
// testing does; run code that may call it with run.
type fakeTB struct {
	testing.TB // the real test: Deadline, TempDir, Name, ...

	mu       sync.Mutex
	failed   bool
	fatal    bool
	msgs     []string // Error and Fatal messages
	logs     []string // Log messages
	cleanups []func()
}

func (f *fakeTB) Helper() {}

func (f *fakeTB) Deadline() (time.Time, bool) {
	return f.TB.(*testing.T).Deadline()
}

func (f *fakeTB) Cleanup(fn func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cleanups = append(f.cleanups, fn)
}

func (f *fakeTB) Errorf(format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failed = true
	f.msgs = append(f.msgs, fmt.Sprintf(format, args...))
}

func (f *fakeTB) Error(args ...any) { f.Errorf("%s", fmt.Sprint(args...)) }

func (f *fakeTB) Fatalf(format string, args ...any) {
	f.Errorf(format, args...)
	f.mu.Lock()
	f.fatal = true
	f.mu.Unlock()
	runtime.Goexit()
}

func (f *fakeTB) Fatal(args ...any) { f.Fatalf("%s", fmt.Sprint(args...)) }

func (f *fakeTB) FailNow() { f.Fatalf("FailNow") }

func (f *fakeTB) Fail() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failed = true
}

func (f *fakeTB) Failed() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.failed
}

func (f *fakeTB) Logf(format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.logs = append(f.logs, fmt.Sprintf(format, args...))
}

func (f *fakeTB) Log(args ...any) { f.Logf("%s", fmt.Sprint(args...)) }

// run calls fn in a goroutine of its own, as testing runs a test, and
// returns once fn has returned or called Fatal.
func (f *fakeTB) run(fn func(testing.TB)) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(f)
	}()
	<-done
}

// finish runs the cleanups, last registered first, as testing does.
func (f *fakeTB) finish() {
	f.mu.Lock()
	cs := f.cleanups
	f.cleanups = nil
	f.mu.Unlock()
	for i := len(cs) - 1; i >= 0; i-- {
		cs[i]()
	}
}

// report returns the messages, for a failure of the real test.
func (f *fakeTB) report() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return fmt.Sprintf("fatal %v, errors %q, logs %q", f.fatal, f.msgs, f.logs)
}

func (f *fakeTB) said(s string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.ContainsFunc(f.msgs, func(m string) bool { return strings.Contains(m, s) })
}

func (f *fakeTB) logged(s string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.ContainsFunc(f.logs, func(m string) bool { return strings.Contains(m, s) })
}

// TestFailures checks that Start, WaitLog and the cleanup fail the test,
// with a message that says why, where they must.
func TestFailures(t *testing.T) {
	exe := executable(t)
	serve := master.Options{Command: []string{exe}, Env: workerEnv("serve"), Workers: 1, Ready: master.ReadyMode{Kind: master.ReadyIPC}}
	withSignals, withLogger, badWorkers := serve, serve, serve
	withSignals.Signals = make(chan os.Signal)
	withLogger.Logger = hclog.NewNullLogger()
	badWorkers.Workers = -1
	crash := serve
	crash.Env = workerEnv("crash")
	crash.MaxRestarts = 1
	crash.BackoffMin, crash.BackoffMax = time.Millisecond, 2*time.Millisecond

	tests := []struct {
		name string
		fn   func(testing.TB)
		want []string // in the Error or Fatal messages
		log  bool     // the cleanup printed the master's log
	}{
		{
			name: "own signals",
			fn:   func(t testing.TB) { mastertest.Start(t, withSignals) },
			want: []string{"Options.Signals must be nil"},
		},
		{
			name: "own logger",
			fn:   func(t testing.TB) { mastertest.Start(t, withLogger) },
			want: []string{"Options.Logger must be nil"},
		},
		{
			name: "invalid options",
			fn:   func(t testing.TB) { mastertest.Start(t, badWorkers) },
			want: []string{"mastertest: new master: workers -1"},
		},
		{
			name: "stopped before ready",
			fn:   func(t testing.TB) { mastertest.Start(t, crash) },
			want: []string{"master stopped before its workers were ready", "restart"},
			log:  true,
		},
		{
			name: "log line never written",
			fn: func(t testing.TB) {
				c := mastertest.Start(t, serve)
				if err := c.Stop(); err != nil {
					t.Errorf("Stop() = %v", err)
				}
				c.WaitLog("worker ready", 2)
			},
			want: []string{`master stopped (Run = <nil>) after 1 of 2 log lines "worker ready"`},
			log:  true,
		},
		{
			name: "bad count",
			fn: func(t testing.TB) {
				mastertest.Start(t, serve).WaitLog("worker ready", 0)
			},
			want: []string{"n must be at least 1"},
			log:  true,
		},
		{
			name: "uncollected run error",
			fn: func(t testing.TB) {
				c := crashOnConnect(t)
				crashUntilStopped(t, c)
			},
			want: []string{"mastertest: master Run = ", "restart"},
			log:  true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &fakeTB{TB: t}
			f.run(tt.fn)
			f.finish()
			if !f.Failed() {
				t.Fatalf("the test did not fail; %s", f.report())
			}
			for _, w := range tt.want {
				if !f.said(w) {
					t.Errorf("no failure message contains %q; %s", w, f.report())
				}
			}
			if got := f.logged("mastertest: master log:"); got != tt.log {
				t.Errorf("master log printed = %v, want %v; %s", got, tt.log, f.report())
			}
		})
	}
	if kids := children(t); len(kids) > 0 {
		t.Errorf("processes left: %v", kids)
	}
}

// TestDispatchExecWorker runs the test binary in exec-worker mode with a
// command that cannot run: it must exit 127 with one line on stderr, and
// run no test.
func TestDispatchExecWorker(t *testing.T) {
	cmd := exec.Command(executable(t), master.ExecWorkerArg, "--", "/nonexistent/clusterd-worker")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 127 {
		t.Errorf("exec-worker with a missing command: %v, want exit status 127", err)
	}
	if lines := strings.Split(strings.TrimSuffix(stderr.String(), "\n"), "\n"); len(lines) != 1 ||
		!strings.HasPrefix(lines[0], "clusterd: ") || !strings.Contains(lines[0], "/nonexistent/clusterd-worker") {
		t.Errorf("stderr = %q, want one line `clusterd: ...` naming the command", stderr.String())
	}
	if stdout.Len() != 0 {
		t.Errorf("stdout = %q, want nothing (no test may run)", stdout.String())
	}
}

// openFDs counts the test process's open descriptors.
func openFDs(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents) - 1 // the directory's own
}

// children lists the pids of the test process's children, zombies included.
func children(t testing.TB) []int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	self := os.Getpid()
	var kids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue // gone already
		}
		// "pid (comm) state ppid ...": comm may hold spaces and parens.
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) > 1 && f[1] == strconv.Itoa(self) {
			kids = append(kids, pid)
		}
	}
	return kids
}
