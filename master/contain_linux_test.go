package master

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

// stdoutPIDs waits until n relayed stdout lines contain tag and returns the
// pids that follow tag on them ("escaped: 123", "bg: 123 456").
func (m *runningMaster) stdoutPIDs(tag string, n int) []int {
	m.t.Helper()
	var pids []int
	m.waitFor(fmt.Sprintf("%d stdout lines %q", n, tag), func() bool {
		pids = pids[:0]
		lines := 0
		for _, l := range m.stdout {
			_, rest, ok := strings.Cut(l, tag)
			if !ok {
				continue
			}
			lines++
			for _, f := range strings.Fields(rest) {
				if pid, err := strconv.Atoi(f); err == nil {
					pids = append(pids, pid)
				}
			}
		}
		return lines >= n
	})
	return pids
}

// killAtCleanup SIGKILLs pids when the test ends, whatever happened: a
// test that fails must not leave its escaped processes running.
func killAtCleanup(t *testing.T, pids []int) {
	t.Cleanup(func() {
		for _, pid := range pids {
			if alive(pid) {
				t.Errorf("process %d of the cluster still alive at the end of the test", pid)
				_ = unix.Kill(pid, unix.SIGKILL)
			}
		}
	})
}

// requireCgroup skips (fails under CI=true) a test that needs the master
// to have made a cgroup for its cluster.
func requireCgroup(t *testing.T, m *runningMaster) {
	t.Helper()
	c := m.first("containment")
	if c["mechanism"] == "cgroup and guardian" {
		return
	}
	msg := fmt.Sprintf("no cgroup for the cluster here (%v): escaped processes of a killed master are not contained", c["cgroup_error"])
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// pidfds opens a pidfd for each pid (before anything may kill them, so no
// pid can be reused in between).
func pidfds(t *testing.T, pids []int) []int {
	t.Helper()
	var fds []int
	for _, pid := range pids {
		fd, err := unix.PidfdOpen(pid, 0)
		if err != nil {
			t.Fatalf("pidfd_open(%d): %v", pid, err)
		}
		fds = append(fds, fd)
	}
	t.Cleanup(func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	})
	return fds
}

// exitedBy waits until every pidfd is readable (its process exited) or the
// deadline passes, and returns the pids still running then.
func exitedBy(deadline time.Time, pids, fds []int) []int {
	left := make(map[int]int) // fd -> pid
	for i, fd := range fds {
		left[fd] = pids[i]
	}
	for len(left) > 0 {
		ms := int(time.Until(deadline).Milliseconds())
		if ms < 0 {
			break
		}
		var pfds []unix.PollFd
		for fd := range left {
			pfds = append(pfds, unix.PollFd{Fd: int32(fd), Events: unix.POLLIN})
		}
		if _, err := unix.Poll(pfds, ms); err != nil && err != unix.EINTR {
			break
		}
		for _, p := range pfds {
			if p.Revents != 0 {
				delete(left, int(p.Fd))
			}
		}
	}
	var pending []int
	for _, pid := range left {
		pending = append(pending, pid)
	}
	return pending
}

// A master SIGKILLed while its workers, shell scripts, have background
// children, one of which called setsid: the guardian kills the cluster's
// cgroup, and within a second no process of it is left and the port binds
// again. 20 trials, as the reproduction.
func TestRealMasterKilledLeavesNothing(t *testing.T) {
	t.Parallel()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// The shape of countless entrypoint scripts: a helper in the
	// background, then exec the server. Both helpers inherit the listener;
	// the second prints its pid from its new session, so it has escaped
	// the worker's process group before the master is killed.
	script := `sleep 300 & a=$!; b=$(setsid -f sh -c 'echo $$; exec sleep 300 >/dev/null 2>&1'); echo "bg: $a $b"; exec "$0"`
	for trial := range 20 {
		m := startMaster(t, masterConfig{
			Workers: 2, Listen: []string{"tcp://127.0.0.1:0"}, Ready: "ipc", Contain: true,
			Command: []string{"/bin/sh", "-c", script, exe},
			Env:     []string{envHelper + "=worker", envWorkerMode + "="},
		}, "GORACE=atexit_sleep_ms=0") // the race runtime's exit delay is not the guardian's
		usedHelpers.Store("worker", true)
		addr := m.addr()
		if trial == 0 {
			requireCgroup(t, m)
		}
		cg := fmt.Sprint(m.first("containment")["cgroup"])
		m.next("all workers ready")
		pids := m.stdoutPIDs("bg: ", 2)
		for i := range 2 {
			pids = append(pids, field(m.first("worker ready", "worker", i), "pid"))
		}
		guardian := field(m.first("containment"), "guardian")
		killAtCleanup(t, append(pids, guardian))
		fds := pidfds(t, pids)
		gfd := pidfds(t, []int{guardian})

		m.signal(syscall.SIGKILL)
		deadline := time.Now().Add(time.Second)
		if left := exitedBy(deadline, pids, fds); len(left) > 0 {
			t.Fatalf("trial %d: processes %v of the cluster (of %v) still running 1s after the master was killed", trial, left, pids)
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("trial %d: bind %s after the cluster died: %v", trial, addr, err)
		}
		ln.Close()
		if left := exitedBy(time.Now().Add(failDeadline(t)), []int{guardian}, gfd); len(left) > 0 {
			t.Fatalf("trial %d: guardian %d did not exit after its kill pass", trial, guardian)
		}
		m.wait()
		if !eventually(t, func() bool { _, err := os.Stat(cg); return os.IsNotExist(err) }) {
			t.Errorf("trial %d: the guardian left cgroup %s behind", trial, cg)
		}
	}
}

// A graceful stop with escaped processes (setsid), one of which ignores
// SIGTERM: the master exits within the kill timeout plus a second, and
// none of them outlives it. With Contain they are found in the cgroup;
// without, as orphans reparented to the master (a child subreaper).
func TestRealGracefulStopEndsEscaped(t *testing.T) {
	t.Parallel()
	for _, contain := range []bool{true, false} {
		t.Run(fmt.Sprintf("contain=%v", contain), func(t *testing.T) {
			t.Parallel()
			const killTimeout = 3 * time.Second
			// The race detector's runtime sleeps a second at exit by
			// default: not part of the stop under test.
			m := startMaster(t, masterConfig{
				Workers: 2, Listen: []string{"tcp://127.0.0.1:0"}, Ready: "ipc", Contain: contain,
				KillTimeout: killTimeout, WorkerMode: []string{"escape", "escape-stubborn"},
			}, "GORACE=atexit_sleep_ms=0")
			m.next("all workers ready")
			if contain {
				requireCgroup(t, m)
			}
			pids := m.stdoutPIDs("escaped: ", 4)
			killAtCleanup(t, pids)
			start := time.Now()
			m.signal(syscall.SIGTERM)
			if code := m.wait(); code != 0 {
				t.Errorf("master exit code %d, want 0", code)
			}
			took := time.Since(start)
			for _, pid := range pids {
				if alive(pid) {
					t.Errorf("escaped process %d outlived the master", pid)
				}
			}
			// The bound is on the master's own stop, from its "stopping" to
			// its "stopped" line: the time to deliver the signal and to see
			// the process end on a loaded machine is not the master's, and
			// gets a generous failure bound instead.
			if d := logTime(t, m.first("stopped")).Sub(logTime(t, m.first("stopping"))); d > killTimeout+time.Second {
				t.Errorf("graceful stop took %v from stopping to stopped, want at most the kill timeout %v + 1s", d, killTimeout)
			}
			if took > killTimeout+5*time.Second {
				t.Errorf("master exited %v after SIGTERM, want well within the kill timeout %v", took, killTimeout)
			}
			t.Logf("master exited %v after SIGTERM (kill timeout %v)", took, killTimeout)
			if k := m.first("killing processes left by workers"); field(k, "processes") != 2 {
				t.Errorf("killed %v, want the 2 that ignore SIGTERM", k)
			}
			m.first("processes left by workers are gone")
		})
	}
}

// Each restart of a worker whose child called setsid (and so keeps the
// worker's output pipes open) must not leave the master holding the pipes.
// The children clear their environment, so that they outlive their worker
// (the hole of orphans_linux.go) and keep the pipes open.
func TestRealRestartEscapedChildLeaksNoFD(t *testing.T) {
	t.Parallel()
	m := startMaster(t, masterConfig{
		Workers: 1, Listen: []string{"tcp://127.0.0.1:0"}, Ready: "ipc", MinUptime: time.Millisecond,
		MaxRestarts: -1, WorkerMode: []string{"escape-bare"},
	})
	m.next("all workers ready")
	r := m.first("worker ready")
	killAtCleanup(t, m.stdoutPIDs("escaped: ", 1))
	base := fdCount(t, m.pid)
	const restarts = 10
	for i := range restarts {
		pid := field(r, "pid")
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		m.next("worker exited", "pid", pid)
		r = m.next("worker ready", "generation", i+2)
	}
	escaped := m.stdoutPIDs("escaped: ", restarts+1)
	killAtCleanup(t, escaped)
	var n int
	if !eventually(t, func() bool { n = fdCount(t, m.pid); return n == base }) {
		t.Fatalf("master holds %d fds after %d restarts of a worker with an escaped child, %d before", n, restarts, base)
	}
	for _, pid := range escaped {
		if !alive(pid) {
			t.Fatalf("escaped process %d died while the cluster ran: the test proves nothing", pid)
		}
	}
	m.signal(syscall.SIGTERM)
	if code := m.wait(); code != 0 {
		t.Errorf("master exit code %d, want 0", code)
	}
	for _, pid := range escaped {
		if alive(pid) {
			t.Errorf("escaped process %d outlived the master", pid)
		}
	}
}

// A worker killed while its children that called setsid still run: they
// die with it (their environment names its slot and generation), while
// the cluster keeps running, with and without a cgroup; the child of the
// worker that replaced it is left alone.
func TestRealEscapedDieWithWorker(t *testing.T) {
	t.Parallel()
	for _, contain := range []bool{true, false} {
		t.Run(fmt.Sprintf("contain=%v", contain), func(t *testing.T) {
			t.Parallel()
			m := startMaster(t, masterConfig{
				Workers: 1, Listen: []string{"tcp://127.0.0.1:0"}, Ready: "ipc", Contain: contain,
				MinUptime: time.Millisecond, MaxRestarts: -1, WorkerMode: []string{"escape", "escape-stubborn"},
				KillTimeout: 100 * time.Millisecond, // the stubborn one of generation 2, at the stop
			}, "GORACE=atexit_sleep_ms=0")
			m.next("all workers ready")
			first := field(m.first("worker ready", "generation", 1), "pid")
			escaped := m.stdoutPIDs("escaped: ", 2)
			killAtCleanup(t, escaped)
			fds := pidfds(t, escaped)
			if err := syscall.Kill(first, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			m.next("worker ready", "generation", 2)
			if left := exitedBy(time.Now().Add(failDeadline(t)), escaped, fds); len(left) > 0 {
				t.Fatalf("escaped processes %v of the killed worker still run", left)
			}
			if k := m.first("killed processes left by exited worker", "worker", 0, "generation", 1); field(k, "processes") != 2 {
				t.Errorf("killed %v, want the 2 escaped ones", k)
			}
			next := m.stdoutPIDs("escaped: ", 4)[2:]
			killAtCleanup(t, next)
			for _, pid := range next {
				if !alive(pid) {
					t.Errorf("escaped process %d of the running worker was killed", pid)
				}
			}
			m.signal(syscall.SIGTERM)
			if code := m.wait(); code != 0 {
				t.Errorf("master exit code %d, want 0", code)
			}
		})
	}
}

// startSleep starts "sleep 300" with attr and waits for it at cleanup.
func startSleep(t *testing.T, attr *syscall.SysProcAttr) *exec.Cmd {
	t.Helper()
	attr.Pdeathsig = syscall.SIGKILL
	cmd := exec.Command("/bin/sleep", "300")
	cmd.SysProcAttr = attr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait() // a second Wait after the test's own returns an error: fine
	})
	return cmd
}

// killedBySIGKILL waits for cmd and reports whether SIGKILL ended it.
func killedBySIGKILL(cmd *exec.Cmd) bool {
	err := cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL
}

// The guardian on its own, without a master: what it was told is killed
// when its stdin ends — a process group, an orphan by pid and start time,
// the cgroup where one can be made — and a pid whose start time does not
// match (reused by an unrelated process) is left alone.
func TestGuardianKillsWhatItWasTold(t *testing.T) {
	t.Parallel()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	group := startSleep(t, &syscall.SysProcAttr{Setpgid: true})
	orphan := startSleep(t, &syscall.SysProcAttr{Setsid: true})
	reused := startSleep(t, &syscall.SysProcAttr{Setsid: true})
	facts := fmt.Sprintf("group %d\n", group.Process.Pid)
	for _, c := range []struct {
		cmd   *exec.Cmd
		shift uint64
	}{{orphan, 0}, {reused, 1}} {
		st, ok := readProcStat(c.cmd.Process.Pid)
		if !ok {
			t.Fatalf("read /proc/%d/stat", c.cmd.Process.Pid)
		}
		facts += fmt.Sprintf("proc %d %d\n", c.cmd.Process.Pid, st.start+c.shift)
	}
	facts += "ungroup 12345\nunproc 12345\nnonsense line\n"

	var inCgroup *exec.Cmd
	cg, cgErr := makeCgroup(os.Getpid())
	if cgErr == nil {
		defer cg.close()
		t.Cleanup(func() { _ = cg.remove(time.Second) })
		inCgroup = startSleep(t, &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: cg.fd, Setsid: true})
		facts += "cgroup " + cg.dir + "\n"
	} else {
		t.Logf("no cgroup here, the cgroup part is not tried: %v", cgErr)
	}

	g := exec.Command(exe, GuardianArg)
	g.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=0")
	g.Stdin = strings.NewReader(facts) // EOF after the facts: the master is gone
	out, err := g.CombinedOutput()
	if err != nil {
		t.Fatalf("guardian: %v: %s", err, out)
	}
	if !killedBySIGKILL(group) {
		t.Error("a process of a group the guardian was told of survived")
	}
	if !killedBySIGKILL(orphan) {
		t.Error("an orphan the guardian was told of survived")
	}
	if inCgroup != nil {
		if !killedBySIGKILL(inCgroup) {
			t.Error("a member of the cgroup survived")
		}
		if _, err := os.Stat(cg.dir); !os.IsNotExist(err) {
			t.Errorf("guardian left cgroup %s behind (%v)", cg.dir, err)
		}
	}
	if !alive(reused.Process.Pid) {
		t.Error("the guardian killed a process whose start time did not match")
	}
}

// A crash loop whose workers each leave an escaped process behind: when
// the restart intensity stops the cluster, the master sweeps them (here
// found as orphans reparented to it, without a cgroup) before it exits.
// The escaped processes clear their environment: otherwise the kill of an
// exited worker's descendants (orphans_linux.go) may end them first, each
// soon after its worker, and whether any is left for the sweep is a race.
func TestRealIntensityStopEndsEscaped(t *testing.T) {
	t.Parallel()
	m := startMaster(t, masterConfig{
		Workers: 1, Listen: []string{"tcp://127.0.0.1:0"},
		// The pid is printed from inside the new session, so the process
		// has escaped the worker's group before the worker exits.
		Command:    []string{"/bin/sh", "-c", `p=$(setsid -f env -i /bin/sh -c 'echo $$; exec /bin/sleep 300 >/dev/null 2>&1'); echo "bg: $p"; exit 1`},
		BackoffMin: 20 * time.Millisecond, BackoffMax: 80 * time.Millisecond, MaxRestarts: 2, Window: time.Minute,
	}, "GORACE=atexit_sleep_ms=0")
	if code := m.wait(); code != 3 {
		t.Errorf("master exit code %d, want 3 (Run error)", code)
	}
	m.first("restart intensity exceeded")
	pids := m.stdoutPIDs("bg: ", 3)
	killAtCleanup(t, pids)
	if w := m.first("waiting for processes left by workers"); field(w, "processes") != len(pids) {
		t.Errorf("%v: want the sweep to find the %d escaped processes", w, len(pids))
	}
	if g := m.first("processes left by workers are gone"); field(g, "killed") != 0 {
		t.Errorf("%v: want the escaped processes ended by the stop signal, none killed", g)
	}
	for _, pid := range pids {
		if alive(pid) {
			t.Errorf("escaped process %d outlived the master", pid)
		}
	}
}

// After "done" (the master ended the cluster itself) the groups and pids
// the guardian knew may belong to others by now: it kills none of them.
func TestGuardianDoneKillsNothing(t *testing.T) {
	t.Parallel()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	group := startSleep(t, &syscall.SysProcAttr{Setpgid: true})
	st, ok := readProcStat(group.Process.Pid)
	if !ok {
		t.Fatalf("read /proc/%d/stat", group.Process.Pid)
	}
	g := exec.Command(exe, GuardianArg)
	g.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=0")
	g.Stdin = strings.NewReader(fmt.Sprintf("group %d\nproc %d %d\ndone\n", group.Process.Pid, group.Process.Pid, st.start))
	if out, err := g.CombinedOutput(); err != nil {
		t.Fatalf("guardian: %v: %s", err, out)
	}
	if !alive(group.Process.Pid) {
		t.Error("the guardian killed a group after the master said done")
	}
}

// A program that sets Contain but does not dispatch guardian mode is told
// so when Run starts, not when its master dies unguarded.
func TestGuardianMustSayHello(t *testing.T) {
	r, err := startReaper(true) // waits for its own pids only: safe in a test binary
	if err != nil {
		t.Fatal(err)
	}
	defer r.stop()
	for _, exe := range []string{"/bin/true", "/bin/echo"} {
		g, err := startGuardian(exe, nil, r, hclog.NewNullLogger())
		if err == nil {
			g.close()
			t.Fatalf("startGuardian(%s) = nil error, want one", exe)
		}
		if !strings.Contains(err.Error(), "before saying hello") || !strings.Contains(err.Error(), "master.Guardian") {
			t.Errorf("startGuardian(%s) = %q, want it to say there was no hello and name master.Guardian", exe, err)
		}
	}
}

// Where no cgroup can be made (here: a master running as nobody), the
// guardian still kills what the master told it of: an escaped process
// whose worker died, reparented to the master. The hole the docs state is
// shown too: the escaped child of a worker still alive when the master is
// killed is nobody's the master could see.
func TestRealGuardianWithoutCgroup(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("running the master as another user needs root")
	}
	t.Parallel()
	m := startMaster(t, masterConfig{
		Workers: 1, Listen: []string{"tcp://127.0.0.1:0"}, Ready: "ipc", Contain: true, MasterUID: 65534,
		// escape-bare: the orphan is not killed with its worker (it has no
		// CLUSTERD_WORKER_ID), so only the guardian can end it.
		ExecPath: reachableTestBinary(t), WorkerMode: []string{"escape-bare"}, MinUptime: time.Millisecond,
	}, "GORACE=atexit_sleep_ms=0")
	c := m.first("containment")
	if c["mechanism"] != "guardian and process groups" {
		t.Fatalf("containment %v, want the guardian without a cgroup", c)
	}
	guardian := field(c, "guardian")
	m.next("all workers ready")
	first := field(m.first("worker ready", "generation", 1), "pid")
	orphan := m.stdoutPIDs("escaped: ", 1)[0]
	if err := syscall.Kill(first, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	m.next("guardian told of orphan", "pid", orphan)
	m.next("worker ready", "generation", 2)
	escaped := m.stdoutPIDs("escaped: ", 2)
	killAtCleanup(t, []int{orphan})
	t.Cleanup(func() { // the hole: not the test's failure
		for _, pid := range escaped {
			_ = unix.Kill(pid, unix.SIGKILL)
		}
	})
	fds := pidfds(t, []int{orphan, guardian})
	m.signal(syscall.SIGKILL)
	if left := exitedBy(time.Now().Add(failDeadline(t)), []int{orphan, guardian}, fds); len(left) > 0 {
		t.Fatalf("processes %v outlived the master (orphan %d, guardian %d)", left, orphan, guardian)
	}
	m.wait()
}

// logTime is the @timestamp of a log line.
func logTime(t *testing.T, l map[string]any) time.Time {
	t.Helper()
	ts, err := time.Parse(time.RFC3339Nano, fmt.Sprint(l["@timestamp"]))
	if err != nil {
		t.Fatalf("log %v: @timestamp: %v", l, err)
	}
	return ts
}
