package master

import (
	"bufio"
	"context"
	"runtime"
	"slices"

	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/clusterd/clusterd/sockshare"
)

// runningMaster is a master helper process under test.
type runningMaster struct {
	t    testing.TB
	cmd  *exec.Cmd
	pid  int
	done chan struct{} // closed when Wait returned
	err  error         // Wait's result, after done

	mu      sync.Mutex
	logs    []map[string]any
	stdout  []string
	stderr  []string // non-JSON stderr lines
	changed chan struct{}
	cursor  int
}

func failDeadline(t testing.TB) time.Duration {
	d := 30 * time.Second
	td, ok := t.(interface{ Deadline() (time.Time, bool) })
	if !ok {
		return d
	}
	if dl, ok := td.Deadline(); ok {
		if left := time.Until(dl) - 5*time.Second; left < d {
			d = left
		}
	}
	return d
}

// eventually polls cond until it holds and reports whether it did within
// failDeadline. It is for states no event announces (/proc, a buffer, the
// goroutine count): the one place these tests wait by sleeping.
func eventually(t testing.TB, cond func() bool) bool {
	deadline := time.Now().Add(failDeadline(t))
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

// startMaster runs the master helper with c and env added to its
// environment; the cleanup kills its process group (its workers die by
// Pdeathsig) and waits for it.
func startMaster(t testing.TB, c masterConfig, env ...string) *runningMaster {
	t.Helper()
	usedHelpers.Store("master", true)
	if len(c.Command) == 0 {
		usedHelpers.Store("worker", true)
	}
	if c.KillTimeout == 0 {
		c.KillTimeout = 5 * time.Second
	}
	cfg, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if c.ExecPath != "" {
		exe = c.ExecPath
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), envHelper+"=master", envMasterConfig+"="+string(cfg))
	cmd.Env = append(cmd.Env, env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if c.PID1 {
		cmd.SysProcAttr.Cloneflags = syscall.CLONE_NEWPID
	}
	if c.MasterUID != 0 {
		id := uint32(c.MasterUID)
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: id, Gid: id}
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	m := &runningMaster{t: t, cmd: cmd, pid: cmd.Process.Pid, done: make(chan struct{}), changed: make(chan struct{})}
	var readers sync.WaitGroup
	readers.Add(2)
	go func() {
		defer readers.Done()
		m.read(stderr, true)
	}()
	go func() {
		defer readers.Done()
		m.read(stdout, false)
	}()
	go func() {
		readers.Wait() // pipes drained before Wait, as os/exec requires
		m.err = cmd.Wait()
		close(m.done)
	}()
	t.Cleanup(func() {
		_ = syscall.Kill(-m.pid, syscall.SIGKILL)
		select {
		case <-m.done:
		case <-time.After(10 * time.Second):
			t.Errorf("master helper %d outlived SIGKILL", m.pid)
		}
		if t.Failed() {
			m.dump()
		}
	})
	return m
}

func (m *runningMaster) read(r io.Reader, isStderr bool) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		m.mu.Lock()
		var entry map[string]any
		switch {
		case isStderr && json.Unmarshal([]byte(line), &entry) == nil:
			m.logs = append(m.logs, entry)
		case isStderr:
			m.stderr = append(m.stderr, line)
		default:
			m.stdout = append(m.stdout, line)
		}
		close(m.changed)
		m.changed = make(chan struct{})
		m.mu.Unlock()
	}
}

func (m *runningMaster) dump() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, l := range m.logs {
		b, _ := json.Marshal(l)
		m.t.Logf("log: %s", b)
	}
	for _, l := range m.stderr {
		m.t.Logf("stderr: %s", l)
	}
	n := len(m.stdout)
	for _, l := range m.stdout[max(0, n-50):] {
		m.t.Logf("stdout: %s", l)
	}
}

// waitFor waits until cond (called under the lock) holds.
func (m *runningMaster) waitFor(what string, cond func() bool) {
	m.t.Helper()
	deadline := time.After(failDeadline(m.t))
	for {
		m.mu.Lock()
		ok := cond()
		ch := m.changed
		m.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-ch:
		case <-m.done:
			m.mu.Lock()
			ok := cond()
			m.mu.Unlock()
			if !ok {
				m.t.Fatalf("master exited (%v) while waiting for %s", m.err, what)
			}
			return
		case <-deadline:
			m.t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// next waits for the next log line (after the previous match) with message
// msg whose fields match kv, and returns it.
func (m *runningMaster) next(msg string, kv ...any) map[string]any {
	m.t.Helper()
	var found map[string]any
	m.waitFor(fmt.Sprintf("log %q %v", msg, kv), func() bool {
		for i := m.cursor; i < len(m.logs); i++ {
			if logMatches(m.logs[i], msg, kv) {
				found = m.logs[i]
				m.cursor = i + 1
				return true
			}
		}
		return false
	})
	return found
}

// nextEvent waits for the next event of kind (an EventKind's String, or
// "all-ready") whose fields match kv, after the previous match of next; the
// master helper logs each event as an "event" line.
func (m *runningMaster) nextEvent(kind string, kv ...any) map[string]any {
	m.t.Helper()
	return m.next("event", append([]any{"kind", kind}, kv...)...)
}

// firstEvent returns the first event of kind with fields kv, waiting for it.
func (m *runningMaster) firstEvent(kind string, kv ...any) map[string]any {
	m.t.Helper()
	return m.first("event", append([]any{"kind", kind}, kv...)...)
}

// first returns the first log line with msg and fields kv, waiting for it.
func (m *runningMaster) first(msg string, kv ...any) map[string]any {
	m.t.Helper()
	var found map[string]any
	m.waitFor(fmt.Sprintf("log %q %v", msg, kv), func() bool {
		for _, l := range m.logs {
			if logMatches(l, msg, kv) {
				found = l
				return true
			}
		}
		return false
	})
	return found
}

// count returns the number of log lines with msg so far.
func (m *runningMaster) count(msg string, kv ...any) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for _, l := range m.logs {
		if logMatches(l, msg, kv) {
			n++
		}
	}
	return n
}

func logMatches(l map[string]any, msg string, kv []any) bool {
	if l["@message"] != msg {
		return false
	}
	for i := 0; i+1 < len(kv); i += 2 {
		if fmt.Sprint(l[kv[i].(string)]) != fmt.Sprint(kv[i+1]) {
			return false
		}
	}
	return true
}

// stdoutLine waits for a relayed stdout line containing s.
func (m *runningMaster) stdoutLine(s string) string {
	m.t.Helper()
	var found string
	m.waitFor(fmt.Sprintf("stdout %q", s), func() bool {
		for _, l := range m.stdout {
			if strings.Contains(l, s) {
				found = l
				return true
			}
		}
		return false
	})
	return found
}

func (m *runningMaster) signal(sig syscall.Signal) {
	m.t.Helper()
	if err := syscall.Kill(m.pid, sig); err != nil {
		m.t.Fatalf("signal master: %v", err)
	}
}

// wait waits for the master to exit and returns its exit code.
func (m *runningMaster) wait() int {
	m.t.Helper()
	select {
	case <-m.done:
	case <-time.After(failDeadline(m.t)):
		m.t.Fatal("master did not exit")
	}
	var ee *exec.ExitError
	if errors.As(m.err, &ee) {
		return ee.ExitCode()
	}
	if m.err != nil {
		m.t.Fatalf("wait master: %v", m.err)
	}
	return 0
}

func (m *runningMaster) addr() string {
	m.t.Helper()
	l := m.next("listening")
	m.cursor = 0
	return l["addr"].(string)
}

func field(l map[string]any, k string) int {
	v, _ := l[k].(float64)
	return int(v)
}

var client = &http.Client{
	Transport: &http.Transport{DisableKeepAlives: true},
	Timeout:   10 * time.Second,
}

// get returns the pid of the worker that answered.
func get(addr, path string) (int, error) {
	resp, err := client.Get("http://" + addr + path)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	if resp.StatusCode != 200 {
		return 0, fmt.Errorf("status %s", resp.Status)
	}
	f := strings.Fields(string(b))
	if len(f) < 1 {
		return 0, fmt.Errorf("bad body %q", b)
	}
	return strconv.Atoi(f[0])
}

// underLoad runs fn while 4 clients keep sending requests, each on a new
// connection, and fails the test for any request that fails. It returns
// the number of requests made.
func underLoad(t *testing.T, addr string, fn func()) int {
	t.Helper()
	stop := make(chan struct{})
	type result struct {
		n    int
		errs []error
	}
	results := make(chan result, 4)
	for range 4 {
		go func() {
			var r result
			for {
				select {
				case <-stop:
					results <- r
					return
				default:
				}
				if _, err := get(addr, "/"); err != nil {
					r.errs = append(r.errs, err)
				}
				r.n++
			}
		}()
	}
	fn()
	close(stop)
	total := 0
	for range 4 {
		r := <-results
		total += r.n
		for _, err := range r.errs {
			t.Errorf("request failed under load: %v", err)
		}
	}
	if total == 0 {
		t.Fatal("no request was made")
	}
	return total
}

// pidsServing sends requests until n distinct pids answered.
func pidsServing(t *testing.T, addr string, n int) map[int]bool {
	t.Helper()
	pids := map[int]bool{}
	for i := 0; i < 5000 && len(pids) < n; i++ {
		pid, err := get(addr, "/")
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		pids[pid] = true
	}
	if len(pids) < n {
		t.Fatalf("saw %d distinct worker pids, want %d", len(pids), n)
	}
	return pids
}

func TestRealWorkersServe(t *testing.T) {
	for _, balance := range []string{"shared", "reuseport"} {
		t.Run(balance, func(t *testing.T) {
			t.Parallel()
			m := startMaster(t, masterConfig{
				Workers: 3, Listen: []string{"tcp://127.0.0.1:0"}, Balance: balance, Ready: "ipc",
			})
			addr := m.addr()
			m.nextEvent("all-ready")
			pids := pidsServing(t, addr, 3)
			for i := range 3 {
				l := m.firstEvent("ready", "worker", i)
				if !pids[field(l, "pid")] {
					t.Errorf("worker %d pid %v never answered", i, l["pid"])
				}
			}
			m.signal(syscall.SIGTERM)
			if code := m.wait(); code != 0 {
				t.Errorf("master exit code %d, want 0", code)
			}
			m.next("stopped")
		})
	}
}

func TestRealKill9Replacement(t *testing.T) {
	t.Parallel()
	m := startMaster(t, masterConfig{
		Workers: 2, Listen: []string{"tcp://127.0.0.1:0"}, Ready: "ipc", MinUptime: time.Millisecond,
	})
	addr := m.addr()
	m.nextEvent("all-ready")
	w1 := m.firstEvent("ready", "worker", 1)
	pid := field(w1, "pid")
	// Connections keep being accepted while the slot is empty: the socket
	// is the master's, and the other worker serves its queue.
	stopDial := make(chan struct{})
	refused := make(chan error, 1)
	go func() {
		defer close(refused)
		for {
			select {
			case <-stopDial:
				return
			default:
			}
			c, err := net.Dial("tcp", addr)
			if err != nil {
				refused <- err
				return
			}
			c.Close()
		}
	}()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	exit := m.nextEvent("exit", "worker", 1, "pid", pid)
	if exit["signal"] != "SIGKILL" || exit["exited_after_disconnect"] != false {
		t.Errorf("exit event %v, want signal SIGKILL, not after a disconnect", exit)
	}
	if l := m.first("worker exited", "pid", pid); l["@level"] != "warn" || l["uptime"] == nil {
		t.Errorf("exit log %v, want a warning with the uptime", l)
	}
	r := m.nextEvent("ready", "worker", 1, "generation", 2)
	close(stopDial)
	if err := <-refused; err != nil {
		t.Errorf("dial during the replacement: %v", err)
	}
	if field(r, "pid") == pid {
		t.Errorf("replacement has the old pid %d", pid)
	}
	pids := pidsServing(t, addr, 2)
	if pids[pid] {
		t.Errorf("killed pid %d still answered", pid)
	}
}

func TestRealCrashLoopIntensity(t *testing.T) {
	t.Parallel()
	m := startMaster(t, masterConfig{
		Workers: 1, Listen: []string{"tcp://127.0.0.1:0"}, WorkerMode: []string{"crash"},
		// Every crash counts as short-lived however slow the machine is:
		// a loaded one has taken more than the default 1s to run the helper.
		MinUptime:  time.Hour,
		BackoffMin: 20 * time.Millisecond, BackoffMax: 80 * time.Millisecond, MaxRestarts: 4, Window: time.Minute,
	})
	if code := m.wait(); code != 3 {
		t.Errorf("master exit code %d, want 3 (Run error)", code)
	}
	if n := m.count("worker exited"); n != 5 {
		t.Errorf("%d worker exits, want 5 (the first start and 4 restarts)", n)
	}
	if n := m.count("restart delayed"); n != 4 {
		t.Errorf("%d delayed restarts, want 4", n)
	}
	m.next("restart intensity exceeded")
	// The error quotes what the worker printed last, so the reason it
	// crashes reaches the operator.
	want := `run error: restart intensity exceeded: 5 restarts in 1m0s (last: worker 0 exited with code 1, after it printed "crashing on purpose")`
	m.waitFor("run error line", func() bool {
		for _, l := range m.stderr {
			if l == want {
				return true
			}
		}
		return false
	})
	m.mu.Lock()
	defer m.mu.Unlock()
	found := false
	for _, l := range m.stdout {
		if strings.HasPrefix(l, "[w0 pid ") && strings.HasSuffix(l, "] crashing on purpose") {
			found = true
		}
	}
	if !found {
		// stderr of workers goes to the master's stderr
		for _, l := range m.stderr {
			if strings.HasPrefix(l, "[w0 pid ") && strings.HasSuffix(l, "] crashing on purpose") {
				found = true
			}
		}
	}
	if !found {
		t.Errorf("no prefixed worker stderr line relayed")
	}
}

// listenerFlags reads the file status flags of pid's listening socket on
// port from /proc (the open file description the workers share).
func listenerFlags(t *testing.T, pid, port int) (flags int, n int) {
	t.Helper()
	inodes := map[string]bool{}
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 10 || f[3] != "0A" {
			continue
		}
		_, hexPort, _ := strings.Cut(f[1], ":")
		p, _ := strconv.ParseInt(hexPort, 16, 32)
		if int(p) == port {
			inodes["socket:["+f[9]+"]"] = true
		}
	}
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	flags = -1
	for _, e := range ents {
		target, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil || !inodes[target] {
			continue
		}
		info, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%s", pid, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(info), "\n") {
			if v, ok := strings.CutPrefix(line, "flags:"); ok {
				f, err := strconv.ParseInt(strings.TrimSpace(v), 8, 64)
				if err != nil {
					t.Fatal(err)
				}
				flags = int(f)
				n++
			}
		}
	}
	return flags, n
}

func TestRealListenerStaysNonBlocking(t *testing.T) {
	t.Parallel()
	// Workers that fail at once never get to switch the shared socket back to
	// non-blocking mode: if the master had made it blocking while handing it
	// over, it would stay so.
	m := startMaster(t, masterConfig{
		Workers: 2, Listen: []string{"tcp://127.0.0.1:0"}, WorkerMode: []string{"crash"},
		BackoffMin: time.Millisecond, BackoffMax: 5 * time.Millisecond, MaxRestarts: -1,
	})
	addr := m.addr()
	_, portStr, _ := net.SplitHostPort(addr)
	port, _ := strconv.Atoi(portStr)
	m.waitFor("6 worker exits", func() bool {
		n := 0
		for _, l := range m.logs {
			if l["@message"] == "worker exited" {
				n++
			}
		}
		return n >= 6
	})
	flags, n := listenerFlags(t, m.pid, port)
	if n != 1 {
		t.Fatalf("master holds %d listening sockets on port %d, want 1", n, port)
	}
	if flags&syscall.O_NONBLOCK == 0 {
		t.Errorf("master's listener flags %#o lack O_NONBLOCK after failed workers", flags)
	}
}

func TestRealWorkerFDs(t *testing.T) {
	t.Parallel()
	m := startMaster(t, masterConfig{
		Workers: 1, Listen: []string{"a=tcp://127.0.0.1:0", "b=tcp://127.0.0.1:0"}, WorkerMode: []string{"fds"},
		Ready: "ipc",
	})
	m.nextEvent("all-ready")
	line := m.stdoutLine("fds: ")
	_, got, _ := strings.Cut(line, "fds: ")
	// stdin, stdout, stderr, two listeners, the IPC end: nothing else.
	if want := "0 1 2 3 4 5"; got != want {
		t.Errorf("worker inherited fds %q, want %q", got, want)
	}
	if !strings.HasPrefix(line, "[w0 pid ") {
		t.Errorf("relayed line %q lacks the worker prefix", line)
	}
}

// fdCount counts a process's open fds.
func fdCount(t *testing.T, pid int) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func TestRealMasterFDsStableAcrossRestarts(t *testing.T) {
	t.Parallel()
	m := startMaster(t, masterConfig{
		Workers: 1, Listen: []string{"tcp://127.0.0.1:0"}, Ready: "ipc", MinUptime: time.Millisecond,
		MaxRestarts: -1,
	})
	m.nextEvent("all-ready")
	r := m.firstEvent("ready")
	base := fdCount(t, m.pid)
	const restarts = 100
	for i := range restarts {
		pid := field(r, "pid")
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		m.nextEvent("exit", "pid", pid)
		r = m.nextEvent("ready", "generation", i+2)
	}
	// The dead workers' output pipes close when their readers reach EOF,
	// which may trail the replacement's readiness: wait for it.
	var n int
	if !eventually(t, func() bool { n = fdCount(t, m.pid); return n == base }) {
		t.Fatalf("master holds %d fds after %d restarts, %d before", n, restarts, base)
	}
}

func TestRealRollingReloadKeepsServing(t *testing.T) {
	t.Parallel()
	m := startMaster(t, masterConfig{
		Workers: 2, Listen: []string{"tcp://127.0.0.1:0"}, Ready: "ipc",
	})
	addr := m.addr()
	m.nextEvent("all-ready")
	before := pidsServing(t, addr, 2)

	total := underLoad(t, addr, func() {
		for range 3 {
			m.signal(syscall.SIGHUP)
			if e := m.nextEvent("reload"); e["error"] != nil {
				t.Errorf("reload: %v", e["error"])
			}
		}
	})
	after := pidsServing(t, addr, 2)
	for pid := range after {
		if before[pid] {
			t.Errorf("pid %d served before and after the reloads", pid)
		}
	}
	for i := range 2 {
		m.firstEvent("ready", "worker", i, "generation", 4)
	}
	t.Logf("%d requests across 3 reloads", total)
}

func TestRealGracefulStopWaitsForRequest(t *testing.T) {
	t.Parallel()
	m := startMaster(t, masterConfig{Workers: 1, Listen: []string{"tcp://127.0.0.1:0"}, Ready: "ipc"})
	addr := m.addr()
	m.nextEvent("all-ready")
	// Get returns once the response headers arrive, which the worker
	// sends before it sleeps: from then on the request is in flight.
	resp, err := client.Get("http://" + addr + "/slow?d=700ms")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	m.signal(syscall.SIGTERM)
	if b, err := io.ReadAll(resp.Body); err != nil || !strings.HasSuffix(string(b), "slow\n") {
		t.Errorf("in-flight request during graceful stop: body %q, %v", b, err)
	}
	if code := m.wait(); code != 0 {
		t.Errorf("master exit code %d, want 0", code)
	}
	e := m.nextEvent("exit")
	if e["exit_code"] != float64(0) {
		t.Errorf("worker exit %v, want code 0", e)
	}
}

func TestRealKillTimeout(t *testing.T) {
	t.Parallel()
	m := startMaster(t, masterConfig{
		Workers: 1, Listen: []string{"tcp://127.0.0.1:0"}, Ready: "ipc", WorkerMode: []string{"ignore-term"},
		KillTimeout: 300 * time.Millisecond,
	})
	m.nextEvent("all-ready")
	start := time.Now()
	m.signal(syscall.SIGTERM)
	m.next("worker killed after kill timeout")
	e := m.nextEvent("exit")
	if e["signal"] != "SIGKILL" {
		t.Errorf("worker exit %v, want signal SIGKILL", e)
	}
	if code := m.wait(); code != 0 {
		t.Errorf("master exit code %d, want 0", code)
	}
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Errorf("stopped after %v, before the kill timeout", d)
	}
}

func TestRealNotifyReadiness(t *testing.T) {
	t.Parallel()
	m := startMaster(t, masterConfig{
		Workers: 2, Listen: []string{"tcp://127.0.0.1:0"}, Ready: "notify", WorkerMode: []string{"notify", "hello"},
	})
	m.nextEvent("all-ready")
	for i := range 2 {
		line := m.stdoutLine(fmt.Sprintf("hello from worker %d", i))
		if !strings.HasPrefix(line, fmt.Sprintf("[w%d pid ", i)) {
			t.Errorf("relayed line %q lacks the worker prefix", line)
		}
	}
}

func TestRealReadyTimeoutAbortsReload(t *testing.T) {
	t.Parallel()
	m := startMaster(t, masterConfig{
		Workers: 1, Listen: []string{"tcp://127.0.0.1:0"}, Ready: "ipc", ReadyTimeout: 5 * time.Second,
		WorkerMode: []string{"reload-never-ready"},
	})
	addr := m.addr()
	m.nextEvent("all-ready")
	old := field(m.firstEvent("ready"), "pid")
	m.signal(syscall.SIGHUP)
	a := m.nextEvent("reload")
	if want := "reload: worker 0 (pid "; !strings.HasPrefix(fmt.Sprint(a["error"]), want) ||
		!strings.HasSuffix(fmt.Sprint(a["error"]), ") not ready after 5s") {
		t.Errorf("reload aborted with %q, want it to name worker 0 and the timeout", a["error"])
	}
	if l := m.first("reload aborted"); l["@level"] != "error" || l["error"] != a["error"] {
		t.Errorf("reload aborted logged as %v, want an error line with the event's error", l)
	}
	// The old worker kept serving and still does.
	for range 20 {
		pid, err := get(addr, "/")
		if err != nil {
			t.Fatal(err)
		}
		if pid != old {
			t.Fatalf("pid %d answered, want the old worker %d", pid, old)
		}
	}
}

func TestRealMasterKilledLeavesNoWorkers(t *testing.T) {
	t.Parallel()
	for range 3 {
		m := startMaster(t, masterConfig{Workers: 2, Listen: []string{"tcp://127.0.0.1:0"}, Ready: "ipc"})
		m.nextEvent("all-ready")
		var pids []int
		for i := range 2 {
			pids = append(pids, field(m.firstEvent("ready", "worker", i), "pid"))
		}
		m.signal(syscall.SIGKILL)
		m.wait()
		survivor := 0
		if !eventually(t, func() bool {
			survivor = 0
			for _, pid := range pids {
				if alive(pid) {
					survivor = pid
				}
			}
			return survivor == 0
		}) {
			t.Fatalf("worker %d survived its master", survivor)
		}
	}
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(b), ')')
	return i >= 0 && i+2 < len(b) && b[i+2] != 'Z'
}

func TestRealPIDFile(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "clusterd.pid")
	m := startMaster(t, masterConfig{Workers: 1, Listen: []string{"tcp://127.0.0.1:0"}, PIDFile: path})
	m.nextEvent("all-ready")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(b)); got != strconv.Itoa(m.pid) {
		t.Errorf("pid file holds %q, want %d", got, m.pid)
	}
	m.signal(syscall.SIGINT)
	if code := m.wait(); code != 0 {
		t.Errorf("master exit code %d, want 0", code)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pid file after stop: %v, want it removed", err)
	}
}

func TestRealBindError(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	m := startMaster(t, masterConfig{Workers: 1, Listen: []string{"tcp://" + ln.Addr().String()}})
	if code := m.wait(); code != 3 {
		t.Errorf("master exit code %d, want 3", code)
	}
	m.waitFor("bind error", func() bool {
		for _, l := range m.stderr {
			if strings.HasPrefix(l, "run error: listen tcp://"+ln.Addr().String()) &&
				strings.Contains(l, "address already in use") {
				return true
			}
		}
		return false
	})
	if n := m.count("worker ready"); n != 0 {
		t.Errorf("%d workers started despite the bind error", n)
	}
}

// TestInProcessOwnWorkersOnly runs a Master inside the test binary:
// without Options.Subreaper (the default) it waits for its own workers only, so it coexists with
// the other tests' children. It checks the public API and that Run leaves
// no goroutine and no fd behind.
func TestInProcessOwnWorkersOnly(t *testing.T) {
	usedHelpers.Store("worker", true)
	spec, err := sockshareSpec("tcp://127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// os/signal starts its one permanent goroutine on first use.
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGCHLD)
	signal.Stop(c)
	fdsBefore := fdCount(t, os.Getpid())
	goroutinesBefore := runtime.NumGoroutine()
	var out syncBuffer
	sigs := make(chan os.Signal)
	m, err := New(Options{
		Command: []string{exe}, Env: []string{envHelper + "=worker", envWorkerMode + "=hello"},
		Workers: 2, Listen: []sockshare.Spec{spec}, Ready: ReadyMode{Kind: ReadyIPC},
		Stdout: &out, Stderr: &out, Signals: sigs, KillTimeout: 5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	if m.Addrs() != nil {
		t.Error("Addrs before Listening is not nil")
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	select {
	case <-m.Ready():
	case err := <-done:
		t.Fatalf("Run = %v before ready", err)
	case <-time.After(failDeadline(t)):
		t.Fatal("not ready")
	}
	<-m.Listening()
	addrs := m.Addrs()
	if len(addrs) != 1 {
		t.Fatalf("Addrs = %v, want one", addrs)
	}
	pidsServing(t, addrs[0].String(), 2)
	if err := m.Run(ctx); err == nil {
		t.Error("second Run = nil, want an error")
	}
	sigs <- syscall.SIGTTIN
	if !eventually(t, func() bool { return strings.Contains(out.String(), "hello from worker 2") }) {
		t.Fatalf("TTIN started no worker 2; output:\n%s", out.String())
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run after cancel = %v, want nil", err)
		}
	case <-time.After(failDeadline(t)):
		t.Fatal("Run did not return after cancel")
	}
	if n := fdCount(t, os.Getpid()); n != fdsBefore {
		t.Errorf("test process holds %d fds after Run, %d before", n, fdsBefore)
	}
	// Run's own goroutines are gone; the http client may still be closing
	// connections, so allow it a moment.
	var n int
	if !eventually(t, func() bool { n = runtime.NumGoroutine(); return n <= goroutinesBefore }) {
		buf := make([]byte, 1<<20)
		t.Fatalf("%d goroutines after Run, %d before:\n%s", n, goroutinesBefore, buf[:runtime.Stack(buf, true)])
	}
	for i := range 3 {
		if !strings.Contains(out.String(), fmt.Sprintf("[w%d pid ", i)) {
			t.Errorf("output lacks worker %d's prefixed lines:\n%s", i, out.String())
		}
	}
}

func sockshareSpec(s string) (sockshare.Spec, error) { return sockshare.ParseSpec(s) }

func TestRealMasterSDNotify(t *testing.T) {
	t.Parallel()
	sock := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	msgs := make(chan string, 64)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				close(msgs)
				return
			}
			msgs <- string(buf[:n])
		}
	}()
	want := func(prefix string) {
		t.Helper()
		for {
			select {
			case got := <-msgs:
				if strings.HasPrefix(got, "STATUS=") {
					continue // the status line, which status_test.go follows
				}
				if !strings.HasPrefix(got, prefix) {
					t.Fatalf("sd_notify %q, want %q", got, prefix)
				}
				return
			case <-time.After(failDeadline(t)):
				t.Fatalf("no sd_notify %q", prefix)
			}
		}
	}
	m := startMaster(t, masterConfig{Workers: 1, Listen: []string{"tcp://127.0.0.1:0"}, Ready: "ipc"},
		"NOTIFY_SOCKET="+sock)
	want("READY=1")
	m.signal(syscall.SIGHUP)
	want("RELOADING=1")
	want("READY=1")
	m.signal(syscall.SIGTERM)
	want("STOPPING=1")
	if code := m.wait(); code != 0 {
		t.Errorf("master exit code %d", code)
	}
}

func TestRealScaleReusePort(t *testing.T) {
	t.Parallel()
	m := startMaster(t, masterConfig{
		Workers: 1, Listen: []string{"tcp://127.0.0.1:0"}, Balance: "reuseport", Ready: "ipc",
	})
	addr := m.addr()
	m.nextEvent("all-ready")
	_, portStr, _ := net.SplitHostPort(addr)
	port, _ := strconv.Atoi(portStr)
	m.signal(syscall.SIGTTIN)
	m.nextEvent("ready", "worker", 1)
	pidsServing(t, addr, 2)
	if _, n := listenerFlags(t, m.pid, port); n != 2 {
		t.Errorf("master holds %d reuseport sockets for 2 slots, want 2", n)
	}
	m.signal(syscall.SIGTTOU)
	m.nextEvent("exit", "worker", 1)
	if _, n := listenerFlags(t, m.pid, port); n != 1 {
		t.Errorf("master holds %d reuseport sockets after scaling down, want 1", n)
	}
	if v, err := readMigrateReq(); err == nil && v != "1" {
		m.first("closed a reuseport socket; the kernel resets its queued connections unless net.ipv4.tcp_migrate_req=1")
	}
	for range 20 {
		if _, err := get(addr, "/"); err != nil {
			t.Fatalf("request after scaling down: %v", err)
		}
	}
}

// procStatus reads a field of /proc/PID/status; ok false when pid is gone.
func procStatus(pid int, key string) (string, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return "", false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, key+":"); ok {
			return strings.TrimSpace(v), true
		}
	}
	return "", true
}

func TestRealOrphansReaped(t *testing.T) {
	t.Parallel()
	m := startMaster(t, masterConfig{
		Workers: 1, Listen: []string{"tcp://127.0.0.1:0"}, Ready: "ipc", WorkerMode: []string{"orphan"},
	})
	m.nextEvent("all-ready")
	line := m.stdoutLine("orphan: ")
	_, v, _ := strings.Cut(line, "orphan: ")
	orphan, err := strconv.Atoi(v)
	if err != nil {
		t.Fatalf("orphan line %q", line)
	}
	worker := field(m.firstEvent("ready"), "pid")
	if err := syscall.Kill(worker, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	m.nextEvent("exit", "pid", worker)
	// The orphan is re-parented to the master (a child subreaper), which
	// reaps it when it exits: it must vanish, not linger as a zombie.
	sawParent := false
	var ppid string
	if !eventually(t, func() bool {
		var ok bool
		ppid, ok = procStatus(orphan, "PPid")
		if ok && ppid == strconv.Itoa(m.pid) {
			sawParent = true
		}
		return !ok
	}) {
		state, _ := procStatus(orphan, "State")
		t.Fatalf("orphan %d still there (parent %s, state %s)", orphan, ppid, state)
	}
	if !sawParent {
		t.Log("orphan exited before it was seen re-parented to the master")
	}
	m.nextEvent("ready", "generation", 2)
}

// BenchmarkCrashToReady measures how long a killed worker's slot goes
// without a ready worker: from the master reaping it to its replacement's
// readiness (ipc), from the master's log timestamps. It reports the median.
func BenchmarkCrashToReady(b *testing.B) {
	m := startMaster(b, masterConfig{
		Workers: 1, Listen: []string{"tcp://127.0.0.1:0"}, Ready: "ipc", MinUptime: time.Nanosecond,
		MaxRestarts: -1,
	})
	m.nextEvent("all-ready")
	r := m.firstEvent("ready")
	var ds []time.Duration
	for i := 0; b.Loop(); i++ {
		pid := field(r, "pid")
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			b.Fatal(err)
		}
		e := m.nextEvent("exit", "pid", pid)
		r = m.nextEvent("ready", "generation", i+2)
		t0, err0 := time.Parse(time.RFC3339Nano, e["@timestamp"].(string))
		t1, err1 := time.Parse(time.RFC3339Nano, r["@timestamp"].(string))
		if err0 != nil || err1 != nil {
			b.Fatal(err0, err1)
		}
		ds = append(ds, t1.Sub(t0))
	}
	slices.Sort(ds)
	b.ReportMetric(float64(ds[len(ds)/2].Microseconds())/1000, "ms-median-crash-to-ready")
}

func TestRealUserAndGroup(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("dropping privileges needs root")
	}
	t.Parallel()
	// The master's binary is exec'd by the worker after the credential
	// change: it must be reachable for nobody, so run a copy of it.
	cp := reachableTestBinary(t)
	m := startMaster(t, masterConfig{
		Workers: 1, Listen: []string{"tcp://127.0.0.1:0"}, User: "nobody", Group: "nogroup",
		WorkerMode: []string{"ids"}, ExecPath: cp, Ready: "ipc",
	})
	m.nextEvent("all-ready")
	line := m.stdoutLine("ids: ")
	if _, got, _ := strings.Cut(line, "ids: "); got != "65534 65534 [65534]" {
		t.Errorf("worker ids %q, want uid, gid and groups 65534", got)
	}
}

func TestRealOutputRaw(t *testing.T) {
	t.Parallel()
	m := startMaster(t, masterConfig{
		Workers: 1, Listen: []string{"tcp://127.0.0.1:0"}, Ready: "ipc", Output: "raw", WorkerMode: []string{"hello"},
	})
	m.nextEvent("all-ready")
	if line := m.stdoutLine("hello from worker 0"); line != "hello from worker 0" {
		t.Errorf("raw output line %q, want it untouched", line)
	}
	m.waitFor("raw stderr line", func() bool {
		for _, l := range m.stderr {
			if l == "hello on stderr from worker 0" {
				return true
			}
		}
		return false
	})
}

// TestRealMasterAsPID1 runs the master as PID 1 of its own pid namespace,
// as the entrypoint of a container: it must start, reap, reload and stop
// there too (PID 1 gets only the signals it handles).
func TestRealMasterAsPID1(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("a new pid namespace needs root")
	}
	t.Parallel()
	m := startMaster(t, masterConfig{
		Workers: 2, Listen: []string{"tcp://127.0.0.1:0"}, Ready: "ipc", PID1: true, WorkerMode: []string{"orphan"},
	})
	addr := m.addr()
	m.nextEvent("all-ready")
	pidsServing(t, addr, 2)
	m.signal(syscall.SIGHUP)
	if e := m.nextEvent("reload"); e["error"] != nil {
		t.Errorf("reload: %v", e["error"])
	}
	pidsServing(t, addr, 2)
	m.signal(syscall.SIGTERM)
	if code := m.wait(); code != 0 {
		t.Errorf("master as PID 1 exit code %d, want 0", code)
	}
	for i := range 2 {
		if e := m.firstEvent("exit", "worker", i, "generation", 2); e["exit_code"] != float64(0) {
			t.Errorf("worker %d exit %v, want code 0", i, e)
		}
	}
}

func TestRealScaleUnderLoad(t *testing.T) {
	t.Parallel()
	m := startMaster(t, masterConfig{Workers: 2, Listen: []string{"tcp://127.0.0.1:0"}, Ready: "ipc"})
	addr := m.addr()
	m.nextEvent("all-ready")
	total := underLoad(t, addr, func() {
		for range 2 {
			m.signal(syscall.SIGTTIN)
			m.nextEvent("ready", "worker", 2)
			m.signal(syscall.SIGTTOU)
			m.nextEvent("exit", "worker", 2)
		}
		m.signal(syscall.SIGTTOU)
		m.nextEvent("exit", "worker", 1)
	})
	pidsServing(t, addr, 1)
	t.Logf("%d requests across 2 TTIN, 3 TTOU", total)
}

func TestRealReadyLateAndNever(t *testing.T) {
	t.Run("late", func(t *testing.T) {
		t.Parallel()
		m := startMaster(t, masterConfig{
			Workers: 1, Listen: []string{"tcp://127.0.0.1:0"}, Ready: "ipc", WorkerMode: []string{"ready-late"},
		})
		m.nextEvent("ready")
		r := m.first("worker ready")
		d, err := time.ParseDuration(fmt.Sprint(r["duration"]))
		if err != nil || d < 200*time.Millisecond {
			t.Errorf("ready after %v (%v), want at least the worker's 200ms start-up", r["duration"], err)
		}
	})
	t.Run("never", func(t *testing.T) {
		t.Parallel()
		m := startMaster(t, masterConfig{
			Workers: 1, Listen: []string{"tcp://127.0.0.1:0"}, Ready: "ipc", WorkerMode: []string{"never-ready"},
			ReadyTimeout: 300 * time.Millisecond, BackoffMin: time.Millisecond,
		})
		m.next("worker not ready", "worker", 0, "generation", 1)
		e := m.nextEvent("exit", "generation", 1)
		if e["signal"] != "SIGKILL" || e["reason"] != "not ready after 300ms" {
			t.Errorf("exit %v, want SIGKILL for not being ready", e)
		}
		m.nextEvent("fork", "generation", 2) // and it is retried
	})
}

func TestInProcessActivated(t *testing.T) {
	spec, err := sockshare.ParseSpec("tcp://127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m, named, stop := runActivated(t, spec)
	addr := m.Addrs()[0].String()
	if _, err := get(addr, "/"); err != nil {
		t.Errorf("request to the activated socket: %v", err)
	}
	if err := stop(); err != nil {
		t.Errorf("Run = %v", err)
	}
	if err := named.Close(); !errors.Is(err, os.ErrClosed) {
		t.Errorf("activated socket after Run: Close = %v, want it closed by Run", err)
	}
}

// runActivated runs an in-process master of one worker helper on a socket
// bound for spec and handed over as socket activation would ("web"), and
// waits until it is ready. stop cancels Run and returns its result.
func runActivated(t *testing.T, spec sockshare.Spec) (m *Master, named *os.File, stop func() error) {
	t.Helper()
	f, err := sockshare.Listen(spec, sockshare.ListenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	named = os.NewFile(uintptr(dupFD(t, f)), "web")
	f.Close()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	usedHelpers.Store("worker", true)
	m, err = New(Options{
		Command: []string{exe}, Env: []string{envHelper + "=worker"}, Workers: 1,
		Activated: []*os.File{named}, Ready: ReadyMode{Kind: ReadyIPC},
		Stdout: io.Discard, Stderr: io.Discard,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	select {
	case <-m.Ready():
	case err := <-done:
		t.Fatalf("Run = %v", err)
	}
	return m, named, func() error {
		cancel()
		return <-done
	}
}

// dupFD duplicates f's descriptor (close-on-exec) without touching its mode.
func dupFD(t *testing.T, f *os.File) int {
	t.Helper()
	fd, err := rawFD(f)
	if err != nil {
		t.Fatal(err)
	}
	nfd, err := syscall.Dup(fd)
	if err != nil {
		t.Fatal(err)
	}
	syscall.CloseOnExec(nfd)
	return nfd
}

func TestRealNoListenWarns(t *testing.T) {
	t.Parallel()
	m := startMaster(t, masterConfig{Workers: 1, Ready: "ipc"})
	m.next("all workers ready")
	const msg = "no listen address: workers get no sockets from clusterd"
	if l := m.first(msg); l["@level"] != "warn" || m.count(msg) != 1 {
		t.Errorf("%d %q lines (%v), want one warning", m.count(msg), msg, l)
	}
	m2 := startMaster(t, masterConfig{Workers: 1, Ready: "ipc", Listen: []string{"tcp://127.0.0.1:0"}})
	m2.next("all workers ready")
	if n := m2.count(msg); n != 0 {
		t.Errorf("%d %q lines with a listen address, want none", n, msg)
	}
}
