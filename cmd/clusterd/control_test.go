package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The tests in this file run real clusters (the test binary as clusterd
// and as its workers) and drive them through the control socket with the
// client commands, in-process.

// controlPath returns the path of c's control socket, from its log.
func (c *cluster) controlPath() string {
	c.t.Helper()
	_, e := c.waitLog(0, "control socket listening")
	return e.str("path")
}

// ctl runs `clusterd CMD --control PATH ARGS...` in-process.
func (c *cluster) ctl(cmd string, args ...string) (code int, stdout, stderr string) {
	c.t.Helper()
	return client(c.t.Context(), append([]string{cmd, "--control", c.controlPath()}, args...)...)
}

func client(ctx context.Context, args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = execute(ctx, args, &out, &errb)
	return code, out.String(), errb.String()
}

// status runs status --json and decodes it.
func (c *cluster) status() statusJSON {
	c.t.Helper()
	code, out, errs := c.ctl("status", "--json")
	if code != 0 {
		c.t.Fatalf("status --json: exit %d: %s", code, errs)
	}
	var st statusJSON
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		c.t.Fatalf("status --json: %v in %q", err, out)
	}
	return st
}

// parentOf returns the parent pid of pid from /proc.
func parentOf(t testing.TB, pid int) int {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		t.Fatalf("worker %d: %v", pid, err)
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	ppid, err := strconv.Atoi(f[1])
	if err != nil {
		t.Fatalf("/proc/%d/stat: %v", pid, err)
	}
	return ppid
}

func workerPIDs(st statusJSON) []int {
	var pids []int
	for _, w := range st.Workers {
		pids = append(pids, w.PID)
	}
	slices.Sort(pids)
	return pids
}

func TestControlStatusMatchesChildren(t *testing.T) {
	t.Parallel()
	made := filepath.Join(t.TempDir(), "made") // the master makes it
	c := startCluster(t, clusterConfig{flags: []string{listenAny, "-w", "3", "--ready", "ipc"}, env: []string{"RUNTIME_DIRECTORY=" + made}})
	addr, pids := c.waitStarted()
	slices.Sort(pids)
	for path, want := range map[string]os.FileMode{made: 0o700, c.controlPath(): 0o600} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Errorf("%s: %v", path, err)
		} else if fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", path, fi.Mode().Perm(), want)
		}
	}
	if dir := filepath.Dir(c.controlPath()); dir != made {
		t.Errorf("control socket in %s, want $RUNTIME_DIRECTORY %s", dir, made)
	}
	st := c.status()
	if got := workerPIDs(st); !slices.Equal(got, pids) {
		t.Fatalf("status pids %v, want the ready workers %v", got, pids)
	}
	if st.Master.PID != c.pid {
		t.Errorf("status master pid %d, want %d", st.Master.PID, c.pid)
	}
	if want := "tcp://" + addr; !slices.Contains(st.Listeners, want) {
		t.Errorf("status listeners %v, want %s among them", st.Listeners, want)
	}
	slots := map[int]bool{}
	for _, w := range st.Workers {
		if ppid := parentOf(t, w.PID); ppid != c.pid {
			t.Errorf("worker %d (slot %d): parent %d, want the master %d", w.PID, w.Slot, ppid, c.pid)
		}
		if w.State != "ready" || w.Generation != 1 || !w.Online || w.Restarts != 0 {
			t.Errorf("worker %+v: want ready, generation 1, online, no restarts", w)
		}
		if w.RSSBytes <= 0 || w.CPUPercent < 0 {
			t.Errorf("worker %d: rss %d, cpu %v: want them read from /proc", w.PID, w.RSSBytes, w.CPUPercent)
		}
		slots[w.Slot] = true
	}
	if len(slots) != 3 {
		t.Errorf("slots %v, want 0, 1 and 2", slots)
	}

	code, out, errs := c.ctl("status")
	if code != 0 {
		t.Fatalf("status: exit %d: %s", code, errs)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 6 || !strings.HasPrefix(lines[0], "SLOT") {
		t.Fatalf("status table:\n%s\nwant a header, 3 workers, listeners and master", out)
	}
	for i, pid := range pids {
		if !strings.Contains(out, " "+strconv.Itoa(pid)+" ") {
			t.Errorf("status table has no row for pid %d (%d):\n%s", pid, i, out)
		}
	}
	if !strings.Contains(lines[5], fmt.Sprintf("pid %d", c.pid)) || !strings.Contains(lines[4], addr) {
		t.Errorf("status table:\n%s\nwant the listener %s and master pid %d", out, addr, c.pid)
	}
}

func TestControlScaleSignalStop(t *testing.T) {
	t.Parallel()
	c := startCluster(t, clusterConfig{flags: []string{listenAny, "-w", "2", "--ready", "ipc"}})
	c.waitStarted()

	from := c.logLen()
	if code, out, errs := c.ctl("scale", "+2"); code != 0 || out != "scaled to 4 workers\n" {
		t.Fatalf("scale +2: exit %d, %q %s", code, out, errs)
	}
	c.waitFor("2 more workers ready", func() bool {
		n := 0
		for _, e := range c.logs[from:] {
			if e.msg() == "worker ready" {
				n++
			}
		}
		return n >= 2
	})
	if n := len(c.status().Workers); n != 4 {
		t.Fatalf("after scale +2: %d workers, want 4", n)
	}
	if code, out, errs := c.ctl("scale", "-1"); code != 0 || out != "scaled to 3 workers\n" {
		t.Fatalf("scale -1: exit %d, %q %s", code, out, errs)
	}
	if code, out, errs := c.ctl("scale", "2"); code != 0 || out != "scaled to 2 workers\n" {
		t.Fatalf("scale 2: exit %d, %q %s", code, out, errs)
	}
	for _, bad := range []string{"0", "+0", "x", "-"} {
		if code, _, errs := c.ctl("scale", bad); code != exitUsage || strings.Count(errs, "\n") != 1 {
			t.Errorf("scale %s: exit %d, %q; want %d and one line", bad, code, errs, exitUsage)
		}
	}
	if code, _, errs := c.ctl("scale", "-5"); code != exitError || !strings.Contains(errs, "at least 1 worker") {
		t.Errorf("scale -5 of 2: exit %d, %q; want %d, at least 1 worker", code, errs, exitError)
	}

	// Signal one slot: its worker dies of it and is restarted.
	var victim int
	for _, w := range c.status().Workers {
		if w.Slot == 1 {
			victim = w.PID
		}
	}
	from = c.logLen()
	if code, out, errs := c.ctl("signal", "KILL", "--slot", "1"); code != 0 || out != "sent SIGKILL to worker 1\n" {
		t.Fatalf("signal KILL --slot 1: exit %d, %q %s", code, out, errs)
	}
	c.waitLog(from, "worker exited", "pid", victim, "signal", "SIGKILL")
	c.waitLog(from, "worker ready", "worker", 1)
	for _, w := range c.status().Workers {
		if w.Slot == 1 && (w.PID == victim || w.Restarts != 1 || !strings.Contains(w.LastExit, "SIGKILL")) {
			t.Errorf("slot 1 after SIGKILL: %+v; want a new pid, 1 restart, the last exit by SIGKILL", w)
		}
	}
	if code, _, errs := c.ctl("signal", "KILL", "--slot", "7"); code != exitError || !strings.Contains(errs, "no such worker") {
		t.Errorf("signal --slot 7: exit %d, %q; want %d, no such worker", code, errs, exitError)
	}
	if code, _, errs := c.ctl("signal", "NOPE"); code != exitUsage || !strings.Contains(errs, "unknown signal") {
		t.Errorf("signal NOPE: exit %d, %q; want %d, unknown signal", code, errs, exitUsage)
	}

	path := c.controlPath()
	if code, out, errs := c.ctl("stop"); code != 0 || out != "stopped\n" {
		t.Fatalf("stop: exit %d, %q %s", code, out, errs)
	}
	// stop answers once the loop ended: every worker has been reaped.
	if got := markedPIDs(c.mark); len(got) != 0 {
		t.Errorf("after stop answered, workers %v still run", got)
	}
	if code, _ := c.wait(); code != 0 {
		t.Errorf("master exit code %d after stop, want 0", code)
	}
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Errorf("control socket %s after the master exited: %v, want it removed", path, err)
	}
	code, _, errs := client(t.Context(), "status", "--control", path)
	if code != exitNoMaster || errs != "clusterd: no master running at "+path+"\n" {
		t.Errorf("status after stop: exit %d, %q; want %d, no master running at %s", code, errs, exitNoMaster, path)
	}
}

func TestControlStopTimeoutKills(t *testing.T) {
	t.Parallel()
	c := startCluster(t, clusterConfig{
		flags:      []string{listenAny, "-w", "1", "--ready", "ipc", "--kill-timeout", "1h"},
		workerArgs: []string{"-ignore-term"},
	})
	c.waitStarted()
	if code, out, errs := c.ctl("stop", "--timeout", "100ms"); code != 0 || out != "stopped\n" {
		t.Fatalf("stop --timeout 100ms: exit %d, %q %s", code, out, errs)
	}
	c.waitLog(0, "worker exited", "signal", "SIGKILL")
	if code, _ := c.wait(); code != 0 {
		t.Errorf("master exit code %d, want 0", code)
	}
}

func TestControlReloadWait(t *testing.T) {
	t.Parallel()
	c := startCluster(t, clusterConfig{flags: []string{listenAny, "-w", "2", "--ready", "ipc"}})
	_, old := c.waitStarted()
	code, out, errs := c.ctl("reload", "--wait")
	if code != 0 {
		t.Fatalf("reload --wait: exit %d: %s", code, errs)
	}
	st := c.status()
	for _, w := range st.Workers {
		if w.State == "draining" {
			if !slices.Contains(old, w.PID) {
				t.Errorf("after reload: draining worker %+v is not an old one (%v)", w, old)
			}
			continue
		}
		if slices.Contains(old, w.PID) || w.Generation != 2 {
			t.Errorf("after reload: worker %+v, want a new one of generation 2 (old %v)", w, old)
		}
		for _, what := range []string{"started", "ready"} {
			want := fmt.Sprintf("worker %d pid %d (generation 2) %s\n", w.Slot, w.PID, what)
			if !strings.Contains(out, want) {
				t.Errorf("reload --wait output has no %q:\n%s", want, out)
			}
		}
	}
	if !strings.HasSuffix(out, "\n") || !strings.Contains(out, "reload completed: 2 workers replaced in ") {
		t.Errorf("reload --wait output:\n%s\nwant it to end with the completion", out)
	}
	if code, out, errs := c.ctl("reload"); code != 0 || out != "reload started\n" {
		t.Errorf("reload: exit %d, %q %s", code, out, errs)
	}
}

func TestControlReloadAborted(t *testing.T) {
	t.Parallel()
	c := startCluster(t, clusterConfig{
		flags:      []string{listenAny, "-w", "2", "--ready", "ipc"},
		workerArgs: []string{"-fail-gens", "2-99"},
	})
	_, old := c.waitStarted()
	slices.Sort(old)
	code, out, errs := c.ctl("reload", "--wait")
	if code != exitReloadAborted {
		t.Fatalf("reload --wait of failing workers: exit %d, %q %q; want %d", code, out, errs, exitReloadAborted)
	}
	if strings.Count(errs, "\n") != 1 || !strings.Contains(errs, "old workers keep serving") || !strings.Contains(errs, "reload: worker ") {
		t.Errorf("reload --wait error %q: want one line naming the worker, and that the old ones keep serving", errs)
	}
	if !strings.Contains(out, "(generation 2) started") || !strings.Contains(out, "exited with code 1") {
		t.Errorf("reload --wait progress:\n%s\nwant the failed replacement's start and exit", out)
	}
	if got := workerPIDs(c.status()); !slices.Equal(got, old) {
		t.Errorf("after the aborted reload workers %v, want the old ones %v", got, old)
	}
}

func TestControlReloadInProgress(t *testing.T) {
	t.Parallel()
	c := startCluster(t, clusterConfig{
		flags:      []string{listenAny, "-w", "1", "--ready", "ipc", "--ready-timeout", "1h"},
		workerArgs: []string{"-never-ready-gens", "2-99"},
	})
	c.waitStarted()
	from := c.logLen()
	first := make(chan int, 1)
	go func() {
		code, _, _ := c.ctl("reload", "--wait")
		first <- code
	}()
	// The replacement runs and never becomes ready: the reload is running.
	c.waitLog(from, "worker started", "generation", 2)
	for _, args := range [][]string{{"reload"}, {"reload", "--wait"}} {
		code, _, errs := c.ctl(args[0], args[1:]...)
		if code != exitReloadInProgress || errs != "clusterd: master: reload already in progress\n" {
			t.Errorf("%v during a reload: exit %d, %q; want %d, reload already in progress", args, code, errs, exitReloadInProgress)
		}
	}
	if code, _, errs := c.ctl("stop"); code != 0 {
		t.Fatalf("stop: exit %d: %s", code, errs)
	}
	select {
	case code := <-first:
		if code == 0 || code == exitReloadAborted {
			t.Errorf("reload --wait ended by a stop: exit %d, want a failure that is not an abort", code)
		}
	case <-time.After(failAfter(t)):
		t.Fatal("reload --wait did not return after the stop")
	}
}

// clientProcess runs `clusterd ARGS...` as a process (the test binary)
// with env added to its environment.
func clientProcess(t *testing.T, env []string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, args...)
	cmd.Env = append(append(os.Environ(), helperEnv+"=clusterd"), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	err = cmd.Run()
	if _, ok := err.(*exec.ExitError); err != nil && !ok {
		t.Fatalf("run clusterd %v: %v", args, err)
	}
	return cmd.ProcessState.ExitCode(), out.String(), errb.String()
}

// lines runs a client command in the background and delivers its stdout
// line by line; cancel ends it.
func (c *cluster) lines(ctx context.Context, args ...string) (<-chan string, <-chan int) {
	pr, pw := io.Pipe()
	lines := make(chan string, 1024)
	codes := make(chan int, 1)
	path := c.controlPath()
	go func() {
		code := execute(ctx, append([]string{args[0], "--control", path}, args[1:]...), pw, io.Discard)
		pw.Close()
		codes <- code
	}()
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	return lines, codes
}

func waitLine(t *testing.T, lines <-chan string, want string) string {
	t.Helper()
	deadline := time.After(failAfter(t))
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("output ended before a line with %q", want)
			}
			if strings.Contains(l, want) {
				return l
			}
		case <-deadline:
			t.Fatalf("no line with %q", want)
		}
	}
}

func TestControlLogsFollow(t *testing.T) {
	t.Parallel()
	c := startCluster(t, clusterConfig{flags: []string{listenAny, "-w", "2", "--ready", "ipc"}})
	addr, _ := c.waitStarted()
	// Some output before anyone follows: logs prints it.
	before := get(t, "http://"+addr+"/print?text=before-follow")
	c.waitStdout("before-follow") // relayed, so in the ring
	code, out, errs := c.ctl("logs")
	if code != 0 || !strings.Contains(out, fmt.Sprintf("pid %d stdout] before-follow\n", pidOf(t, before))) {
		t.Fatalf("logs: exit %d, %q %s; want the line printed before", code, out, errs)
	}

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	all, allDone := c.lines(ctx, "logs", "-f")
	waitLine(t, all, "before-follow") // the kept lines come first
	var slot0 int
	for _, w := range c.status().Workers {
		if w.Slot == 0 {
			slot0 = w.PID
		}
	}
	one, oneDone := c.lines(ctx, "logs", "-f", "--slot", "0")
	// New lines reach the followers as the workers print them.
	for i := range 20 {
		text := "line-" + strconv.Itoa(i)
		pid := pidOf(t, get(t, "http://"+addr+"/print?text="+url.QueryEscape(text)))
		l := waitLine(t, all, "] "+text)
		if !strings.Contains(l, fmt.Sprintf("pid %d stdout]", pid)) {
			t.Errorf("logs -f line %q: want pid %d", l, pid)
		}
		if pid == slot0 {
			waitLine(t, one, "] "+text)
		}
	}
	cancel()
	for _, done := range []<-chan int{allDone, oneDone} {
		if code := <-done; code != 0 {
			t.Errorf("logs -f ended by an interrupt: exit %d, want 0", code)
		}
	}
	// --slot 0 saw slot 0 only.
	code, out, _ = c.ctl("logs", "--slot", "0")
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if l != "" && !strings.Contains(l, " [w0 ") {
			t.Errorf("logs --slot 0 has %q", l)
		}
	}
}

// The control socket refuses a user who is neither root nor the master's:
// by its mode (connect fails) and, when the mode lets it in, by SO_PEERCRED.
func TestControlRefusesOtherUID(t *testing.T) {
	if os.Getuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("this test must run as root under CI (it setuid()s a client to nobody)")
		}
		t.Skip("needs root: a client process setuid()s to nobody")
	}
	t.Parallel()
	dir, err := os.MkdirTemp("", "clusterd-control-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "refuse.sock")
	c := startCluster(t, clusterConfig{flags: []string{listenAny, "-w", "1", "--control", path}})
	c.waitStarted()
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("control socket %s: %v, %v; want mode 0600", path, err, fi)
	}
	nobody := func() (int, string) {
		t.Helper()
		useHelper(t, "nobody")
		exe, err := os.Executable()
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(exe, "status", "--control", path)
		cmd.Env = append(os.Environ(), helperEnv+"=nobody")
		var errb bytes.Buffer
		cmd.Stderr = &errb
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		err = cmd.Run()
		if _, ok := err.(*exec.ExitError); err != nil && !ok {
			t.Fatalf("run status as nobody: %v", err)
		}
		return cmd.ProcessState.ExitCode(), errb.String()
	}
	code, errs := nobody()
	if code != exitPermission || !strings.HasPrefix(errs, "clusterd: permission denied: "+path) {
		t.Errorf("status as nobody: exit %d, %q; want %d, permission denied", code, errs, exitPermission)
	}
	// Let nobody reach the socket: the master itself refuses it.
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
	from := c.logLen()
	code, errs = nobody()
	if code != exitPermission || !strings.Contains(errs, "permission denied: uid 65534 may not control this cluster") {
		t.Errorf("status as nobody through a 0666 socket: exit %d, %q; want %d, uid 65534 refused", code, errs, exitPermission)
	}
	_, e := c.waitLog(from, "control connection refused", "uid", 65534)
	if e.int("pid") <= 0 {
		t.Errorf("refusal log %v: want the peer's pid", e)
	}
	// The master's own user still gets in.
	if code, _, errs := client(t.Context(), "status", "--control", path); code != 0 {
		t.Errorf("status as root: exit %d: %s", code, errs)
	}
}

func TestControlTwoClustersByName(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	env := []string{"RUNTIME_DIRECTORY=" + dir}
	a := startCluster(t, clusterConfig{flags: []string{listenAny, "-w", "1", "--name", "alpha"}, env: env})
	b := startCluster(t, clusterConfig{flags: []string{listenAny, "-w", "2", "--name", "beta"}, env: env})
	_, apids := a.waitStarted()
	_, bpids := b.waitStarted()
	// The clients run as processes: they find the sockets in their
	// RUNTIME_DIRECTORY, and the tests run in parallel.
	client := func(_ context.Context, args ...string) (int, string, string) {
		t.Helper()
		return clientProcess(t, env, args...)
	}
	for _, tc := range []struct {
		name string
		c    *cluster
		pids []int
	}{{"alpha", a, apids}, {"beta", b, bpids}} {
		code, out, errs := client(t.Context(), "status", "--json", "--name", tc.name)
		if code != 0 {
			t.Fatalf("status --name %s: exit %d: %s", tc.name, code, errs)
		}
		var st statusJSON
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			t.Fatal(err)
		}
		slices.Sort(tc.pids)
		if st.Master.PID != tc.c.pid || st.Master.Name != tc.name || !slices.Equal(workerPIDs(st), tc.pids) {
			t.Errorf("status --name %s: master %d %q workers %v; want %d, its workers %v", tc.name, st.Master.PID, st.Master.Name, workerPIDs(st), tc.c.pid, tc.pids)
		}
	}
	code, out, errs := client(t.Context(), "ls")
	if code != 0 {
		t.Fatalf("ls: exit %d: %s", code, errs)
	}
	for _, want := range []string{
		fmt.Sprintf("alpha  %d", a.pid), filepath.Join(dir, "alpha.sock"),
		fmt.Sprintf("beta   %d", b.pid), filepath.Join(dir, "beta.sock"),
	} {
		if !strings.Contains(out, want) {
			t.Errorf("ls:\n%s\nwant %q", out, want)
		}
	}
	if code, _, errs := client(t.Context(), "status"); code != exitUsage || errs != "clusterd: 2 clusters run here (alpha, beta): name one with --name\n" {
		t.Errorf("status without --name beside two clusters: exit %d, %q", code, errs)
	}
	// A third master with a name in use refuses to start.
	c := startCluster(t, clusterConfig{flags: []string{listenAny, "-w", "1", "--name", "alpha"}, env: env})
	if code, last := c.wait(); code != exitError || !strings.Contains(last, "another master is serving it") {
		t.Errorf("a second master named alpha: exit %d, %q; want %d, another master", code, last, exitError)
	}
	if code, _, _ := client(t.Context(), "stop", "--name", "alpha"); code != 0 {
		t.Errorf("stop --name alpha: exit %d", code)
	}
	if code, _ := a.wait(); code != 0 {
		t.Errorf("alpha exit %d after stop", code)
	}
	if code, _, errs := client(t.Context(), "status", "--name", "alpha"); code != exitNoMaster || !strings.Contains(errs, filepath.Join(dir, "alpha.sock")) {
		t.Errorf("status --name alpha after its stop: exit %d, %q; want %d and where it looked", code, errs, exitNoMaster)
	}
	// Now one is left: the clients find it without --name.
	if code, out, errs := client(t.Context(), "status", "--json"); code != 0 || !strings.Contains(out, fmt.Sprintf(`"pid": %d`, b.pid)) {
		t.Errorf("status beside one cluster: exit %d, %q %s; want beta's", code, out, errs)
	}
}

// Clients that connect and say nothing hold at most maxControlConns
// connections; the next is closed at once, and a slot freed serves again.
func TestControlConnectionLimit(t *testing.T) {
	t.Parallel()
	c := startCluster(t, clusterConfig{flags: []string{listenAny, "-w", "1"}})
	c.waitStarted()
	path := c.controlPath()
	const limit = 64 // master.maxControlConns
	var idle []net.Conn
	defer func() {
		for _, nc := range idle {
			nc.Close()
		}
	}()
	for range limit {
		nc, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		idle = append(idle, nc)
	}
	// Each held connection has had the master's hello: it was accepted.
	for i, nc := range idle {
		nc.SetReadDeadline(time.Now().Add(failAfter(t)))
		if _, err := nc.Read(make([]byte, 1)); err != nil {
			t.Fatalf("held connection %d: %v, want the master's hello", i, err)
		}
	}
	from := c.logLen()
	extra, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	extra.SetReadDeadline(time.Now().Add(failAfter(t)))
	if n, err := extra.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("connection %d: read %d bytes, %v; want EOF", limit+1, n, err)
	}
	c.waitLog(from, "control connection refused: too many connections")
	from = c.logLen()
	idle[0].Close()
	idle = idle[1:]
	// The freed connection's handler ends at its EOF (logged at debug,
	// just before it gives its place back); then a client is served again.
	c.waitLog(from, "control handshake")
	deadline := time.Now().Add(failAfter(t))
	for {
		code, _, errs := c.ctl("status")
		if code == 0 {
			break
		}
		if code != exitNoMaster || time.Now().After(deadline) {
			t.Fatalf("status after a connection was freed: exit %d: %s", code, errs)
		}
	}
}
