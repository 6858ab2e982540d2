package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// failAfter bounds every wait of a test: a failure deadline, never a delay.
func failAfter(t testing.TB) time.Duration {
	const max = 60 * time.Second
	if d, ok := t.(interface{ Deadline() (time.Time, bool) }); ok {
		if dl, ok := d.Deadline(); ok {
			if left := time.Until(dl) - 5*time.Second; left < max {
				return left
			}
		}
	}
	return max
}

// logEntry is one line of the master's stderr: a JSON log line (keys as
// hclog writes them, "@message", "@level", ...) or {"@raw": line}.
type logEntry map[string]any

func (e logEntry) msg() string { s, _ := e["@message"].(string); return s }

func (e logEntry) str(k string) string {
	switch v := e[k].(type) {
	case string:
		return v
	case float64:
		return strconv.FormatFloat(v, 'f', -1, 64)
	case nil:
		return ""
	default:
		return fmt.Sprint(v)
	}
}

func (e logEntry) int(k string) int {
	v, _ := e[k].(float64)
	return int(v)
}

// cluster is a clusterd master run by a test: the test binary re-executed
// as the real command, its workers the test binary as workerHelper.
type cluster struct {
	t          *testing.T
	cmd        *exec.Cmd
	pid        int
	mark       string // CLUSTERD_TEST_MARK of its workers, to find them in /proc
	runtimeDir string // its RUNTIME_DIRECTORY, where its control socket is

	mu      sync.Mutex
	logs    []logEntry
	stdout  []string
	changed chan struct{} // closed and replaced on every new line
	exited  bool
	waitErr error
	readers sync.WaitGroup
	done    chan struct{} // closed once the master was waited for
}

type clusterConfig struct {
	flags      []string // run's flags, before "--"
	helper     string   // worker helper name; "" means "worker"
	workerArgs []string // the helper's arguments
	command    []string // instead of helper: the worker command itself

	prefix []string   // argv before "run" (e.g. exec-worker -- <exe>)
	shell  bool       // run /bin/sh with prefix (e.g. -c SCRIPT ARG0 <exe>), not the test binary
	extra  []*os.File // the master's fds 3, 4, ...
	env    []string   // added to the master's environment
	stdout *os.File   // the master's stdout instead of a pipe the test reads
	stderr *os.File   // the master's stderr likewise; its log is then not read

	// launcher is a command that execs the master, the test binary's
	// path and the master's argv appended (systemd-socket-activate ...);
	// nil: none.
	launcher []string
	// exe is the master's binary, a copy of the test binary (an upgrade
	// test replaces it); "": the test binary itself.
	exe string
}

// startCluster starts `clusterd run --log-json FLAGS -- <test binary> ARGS`.
// Cleanup kills the master if it still runs and checks that no worker of it
// survives.
func startCluster(t *testing.T, cfg clusterConfig) *cluster {
	t.Helper()
	useHelper(t, "clusterd")
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster{
		t:       t,
		mark:    fmt.Sprintf("%d-%d", os.Getpid(), rand.Uint64()),
		changed: make(chan struct{}),
		done:    make(chan struct{}),
	}
	args := []string{"run", "--log-json", "--log-level", "debug", "--env", "CLUSTERD_TEST_MARK=" + c.mark}
	args = append(args, cfg.flags...)
	if cfg.command != nil {
		args = append(args, "--env", helperEnv+"=worker", "--")
		args = append(args, cfg.command...)
	} else {
		helper := cfg.helper
		if helper == "" {
			helper = "worker"
		}
		useHelper(t, helper)
		args = append(args, "--env", helperEnv+"="+helper, "--", exe)
		args = append(args, cfg.workerArgs...)
	}
	master := exe
	if cfg.exe != "" {
		master = cfg.exe
	}
	argv := append(append([]string{master}, cfg.prefix...), args...)
	if cfg.shell {
		argv = append(append([]string{"/bin/sh"}, cfg.prefix...), args...)
	}
	argv = append(slices.Clip(cfg.launcher), argv...)
	c.cmd = exec.Command(argv[0], argv[1:]...)
	// Each cluster's control socket in a directory of its own: parallel
	// tests run the same worker command, so the same default name.
	c.runtimeDir = t.TempDir()
	c.cmd.Env = append(os.Environ(), helperEnv+"=clusterd", "RUNTIME_DIRECTORY="+c.runtimeDir)
	c.cmd.Env = append(c.cmd.Env, cfg.env...)
	c.cmd.ExtraFiles = cfg.extra
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	stderrR, stderrW := (*os.File)(nil), cfg.stderr
	if stderrW == nil {
		if stderrR, stderrW, err = os.Pipe(); err != nil {
			t.Fatal(err)
		}
		defer stderrW.Close()
	}
	stdoutR, stdoutW := (*os.File)(nil), cfg.stdout
	if stdoutW == nil {
		if stdoutR, stdoutW, err = os.Pipe(); err != nil {
			t.Fatal(err)
		}
		defer stdoutW.Close()
	}
	c.cmd.Stderr, c.cmd.Stdout = stderrW, stdoutW
	if err := c.cmd.Start(); err != nil {
		for _, r := range []*os.File{stderrR, stdoutR} {
			if r != nil {
				r.Close()
			}
		}
		t.Fatalf("start clusterd: %v", err)
	}
	c.pid = c.cmd.Process.Pid
	t.Cleanup(c.cleanup)
	if stderrR != nil {
		c.readers.Add(1)
		go c.read(stderrR, true)
	}
	if stdoutR != nil {
		c.readers.Add(1)
		go c.read(stdoutR, false)
	}
	go func() {
		c.readers.Wait() // the pipes are at EOF: the master has exited
		err := c.cmd.Wait()
		c.mu.Lock()
		c.exited, c.waitErr = true, err
		c.broadcastLocked()
		c.mu.Unlock()
		close(c.done)
	}()
	return c
}

func (c *cluster) read(r *os.File, isStderr bool) {
	defer c.readers.Done()
	defer r.Close()
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		c.mu.Lock()
		if isStderr {
			e := logEntry{}
			if err := json.Unmarshal([]byte(line), &e); err != nil || e.msg() == "" {
				e = logEntry{"@raw": line}
			}
			c.logs = append(c.logs, e)
		} else {
			c.stdout = append(c.stdout, line)
		}
		c.broadcastLocked()
		c.mu.Unlock()
	}
}

func (c *cluster) broadcastLocked() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// waitFor waits until cond, called with the lock held on every change, is
// true. It fails the test at the deadline, or when the master has exited
// and cond is still false.
func (c *cluster) waitFor(what string, cond func() bool) {
	c.t.Helper()
	deadline := time.NewTimer(failAfter(c.t))
	defer deadline.Stop()
	for {
		c.mu.Lock()
		ok, exited, ch := cond(), c.exited, c.changed
		c.mu.Unlock()
		if ok {
			return
		}
		if exited {
			c.t.Fatalf("clusterd exited (%v) while waiting for %s", c.waitErr, what)
		}
		select {
		case <-ch:
		case <-deadline.C:
			c.t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// waitLog waits for a log line from index from on whose message is msg and
// whose fields match kv (pairs of key and value, compared as strings). It
// returns the line's index.
func (c *cluster) waitLog(from int, msg string, kv ...any) (int, logEntry) {
	c.t.Helper()
	var idx int
	var found logEntry
	c.waitFor(fmt.Sprintf("log %q %v", msg, kv), func() bool {
		for i := from; i < len(c.logs); i++ {
			if e := c.logs[i]; e.msg() == msg && matches(e, kv) {
				idx, found = i, e
				return true
			}
		}
		return false
	})
	return idx, found
}

func matches(e logEntry, kv []any) bool {
	for i := 0; i+1 < len(kv); i += 2 {
		if e.str(kv[i].(string)) != fmt.Sprint(kv[i+1]) {
			return false
		}
	}
	return true
}

// countLogs counts lines with message msg from index from on.
func (c *cluster) countLogs(from int, msg string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for i := from; i < len(c.logs); i++ {
		if c.logs[i].msg() == msg {
			n++
		}
	}
	return n
}

// logLen is the number of log lines so far: a cursor for waitLog.
func (c *cluster) logLen() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.logs)
}

// waitStdout waits for a line of the workers' relayed output containing s.
func (c *cluster) waitStdout(s string) string {
	c.t.Helper()
	var line string
	c.waitFor(fmt.Sprintf("output %q", s), func() bool {
		for _, l := range c.stdout {
			if strings.Contains(l, s) {
				line = l
				return true
			}
		}
		return false
	})
	return line
}

// waitStarted waits until the master listens and all workers are ready,
// and returns the first listen address and the ready workers' pids.
func (c *cluster) waitStarted() (addr string, pids []int) {
	c.t.Helper()
	_, l := c.waitLog(0, "listening")
	end, _ := c.waitLog(0, "all workers ready")
	c.mu.Lock()
	for _, e := range c.logs[:end] {
		if e.msg() == "worker ready" {
			pids = append(pids, e.int("pid"))
		}
	}
	c.mu.Unlock()
	return l.str("addr"), pids
}

// signal sends sig to the master.
func (c *cluster) signal(sig syscall.Signal) {
	c.t.Helper()
	if err := syscall.Kill(c.pid, sig); err != nil {
		c.t.Fatalf("signal clusterd %d with %v: %v", c.pid, sig, err)
	}
}

// wait waits for the master to exit and returns its exit code and the last
// line of its stderr.
func (c *cluster) wait() (code int, last string) {
	c.t.Helper()
	select {
	case <-c.done:
	case <-time.After(failAfter(c.t)):
		c.t.Fatalf("clusterd did not exit")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.logs) > 0 {
		last = c.logs[len(c.logs)-1].str("@raw")
	}
	return c.cmd.ProcessState.ExitCode(), last
}

func (c *cluster) cleanup() {
	t := c.t
	select {
	case <-c.done:
	default:
		syscall.Kill(-c.pid, syscall.SIGKILL)
		select {
		case <-c.done:
		case <-time.After(10 * time.Second):
			t.Errorf("clusterd %d did not exit after SIGKILL", c.pid)
		}
	}
	// Its workers die with it (Pdeathsig); none may survive.
	for _, pid := range markedPIDs(c.mark) {
		if !waitGone(pid, 30*time.Second) {
			t.Errorf("worker %d of clusterd %d outlived it", pid, c.pid)
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	if t.Failed() {
		c.mu.Lock()
		var b strings.Builder
		for _, e := range c.logs {
			if raw, ok := e["@raw"]; ok {
				fmt.Fprintf(&b, "%s\n", raw)
				continue
			}
			j, _ := json.Marshal(e)
			fmt.Fprintf(&b, "%s\n", j)
		}
		for _, l := range c.stdout {
			fmt.Fprintf(&b, "stdout: %s\n", l)
		}
		c.mu.Unlock()
		t.Logf("clusterd %d output:\n%s", c.pid, b.String())
	}
}

// markedPIDs lists the processes whose environment holds
// CLUSTERD_TEST_MARK=mark: the workers of one test's cluster.
func markedPIDs(mark string) []int {
	want := []byte("CLUSTERD_TEST_MARK=" + mark + "\x00")
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		env, err := os.ReadFile("/proc/" + e.Name() + "/environ")
		if err != nil {
			continue
		}
		if bytes.Contains(env, want) && !isZombie(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

func isZombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	// The state follows the command name in parentheses.
	i := bytes.LastIndexByte(b, ')')
	return i >= 0 && i+2 < len(b) && (b[i+2] == 'Z' || b[i+2] == 'X')
}

// waitGone waits until process pid has terminated (its pidfd is readable)
// and reports whether it did within timeout.
func waitGone(pid int, timeout time.Duration) bool {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return errors.Is(err, unix.ESRCH)
	}
	defer unix.Close(fd)
	return pidfdExited(fd, timeout)
}

// pidfdExited waits until the process of pidfd fd has terminated (fd is
// readable) and reports whether it did within timeout. A poll interrupted
// by a signal is resumed.
func pidfdExited(fd int, timeout time.Duration) bool {
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	deadline := time.Now().Add(timeout)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return false
		}
		n, err := unix.Poll(fds, int(left.Milliseconds())+1)
		if err == unix.EINTR {
			continue
		}
		return err == nil && n > 0
	}
}

// get fetches url with a new connection and returns the body.
func get(t testing.TB, url string) string {
	t.Helper()
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: failAfter(t)}
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s = %d, %q, %v; want 200", url, resp.StatusCode, body, err)
	}
	return string(body)
}

// pidOf reads the pid from a worker helper's answer "pid=P worker=W gen=G".
func pidOf(t testing.TB, body string) int {
	t.Helper()
	var pid, id, gen int
	if _, err := fmt.Sscanf(body, "pid=%d worker=%d gen=%d", &pid, &id, &gen); err != nil {
		t.Fatalf("worker answer %q: %v", body, err)
	}
	return pid
}

// load keeps conns clients busy with GET requests until stopped, and counts
// the outcomes.
type load struct {
	stop    chan struct{}
	wg      sync.WaitGroup
	ok      atomic.Int64
	refused atomic.Int64
	hung    atomic.Int64
	failed  atomic.Int64
	served  chan struct{} // capacity 1: a request succeeded (waitServed)

	mu     sync.Mutex
	errors []string // the first few
}

// startLoad starts conns clients against url; keepAlive chooses between
// one persistent connection per client and a new connection per request.
func startLoad(t *testing.T, url string, conns int, keepAlive bool) *load {
	l := &load{stop: make(chan struct{}), served: make(chan struct{}, 1)}
	tr := &http.Transport{
		DisableKeepAlives:   !keepAlive,
		MaxIdleConnsPerHost: conns,
		MaxIdleConns:        conns,
	}
	// A request that takes this long has hung: workers answer in
	// microseconds, and a drain takes a fraction of a second.
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	for range conns {
		l.wg.Go(func() {
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				l.do(client, url)
			}
		})
	}
	t.Cleanup(l.halt)
	return l
}

// do sends one request. It is a POST: Go's client retries a GET (an
// idempotent request) that failed on a reused keep-alive connection, which
// would hide a connection closed under a request; a POST's failure shows.
func (l *load) do(client *http.Client, url string) {
	resp, err := client.Post(url, "text/plain", strings.NewReader("ping"))
	if err == nil {
		var body []byte
		body, err = io.ReadAll(resp.Body)
		resp.Body.Close()
		if err == nil && resp.StatusCode != http.StatusOK {
			err = fmt.Errorf("status %d", resp.StatusCode)
		}
		if err == nil {
			// The test helpers answer "pid=..."; the Python example
			// worker "hello from python pid ...".
			if !strings.HasPrefix(string(body), "pid=") && !strings.HasPrefix(string(body), "hello from python pid ") {
				err = fmt.Errorf("answer %q", body)
			} else {
				l.ok.Add(1)
				select {
				case l.served <- struct{}{}:
				default:
				}
				return
			}
		}
	}
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		l.refused.Add(1)
	case errors.As(err, &ne) && ne.Timeout():
		l.hung.Add(1)
	default:
		l.failed.Add(1)
	}
	l.mu.Lock()
	if len(l.errors) < 10 {
		l.errors = append(l.errors, err.Error())
	}
	l.mu.Unlock()
}

// waitServed waits until n requests have succeeded, or fails the test
// after failAfter.
func (l *load) waitServed(t *testing.T, n int64) {
	t.Helper()
	deadline := time.NewTimer(failAfter(t))
	defer deadline.Stop()
	for l.ok.Load() < n {
		select {
		case <-l.served:
		case <-deadline.C:
			l.mu.Lock()
			errs := l.errors
			l.mu.Unlock()
			t.Fatalf("load: %d requests served, want %d; failed %d, first errors %q", l.ok.Load(), n, l.failed.Load(), errs)
		}
	}
}

// halt stops the clients and waits for them; idempotent.
func (l *load) halt() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	l.wg.Wait()
}

// check stops the load and fails the test on any failed request.
func (l *load) check(t *testing.T) {
	t.Helper()
	l.halt()
	ok, refused, hung, failed := l.ok.Load(), l.refused.Load(), l.hung.Load(), l.failed.Load()
	t.Logf("load: %d ok, %d refused, %d hung, %d failed", ok, refused, hung, failed)
	if refused+hung+failed > 0 {
		t.Errorf("load: %d refused, %d hung, %d failed of %d requests; first errors: %q",
			refused, hung, failed, ok+refused+hung+failed, l.errors)
	}
	if ok == 0 {
		t.Errorf("load: no request succeeded")
	}
}
