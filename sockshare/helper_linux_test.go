package sockshare

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// helperProc is a running helper process: the test binary re-executed with
// CLUSTERD_TEST_HELPER set.
type helperProc struct {
	cmd    *exec.Cmd
	stdout *bufio.Reader
	stderr bytes.Buffer

	waitOnce sync.Once
	waitErr  error
}

// startHelper starts the helper name with extra at descriptors 3, 4, ... and env
// added to the environment (from which inherited LISTEN_* variables are removed).
// The child gets its own process group and SIGKILL if this process dies; a cleanup
// kills the group and reaps the child if the test did not wait for it.
func startHelper(t testing.TB, name string, extra []*os.File, env ...string) *helperProc {
	t.Helper()
	if helpers[name] == nil {
		t.Fatalf("startHelper(%q): no such helper", name)
	}
	helperUsed.Store(name, true)
	exe, err := os.Executable()
	if err != nil {
		t.Fatalf("os.Executable: %v", err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(StripListenEnv(os.Environ()), envTestHelper+"="+name)
	// The race detector sleeps a second before exiting unless told not to.
	cmd.Env = append(cmd.Env, "GORACE=atexit_sleep_ms=0")
	cmd.Env = append(cmd.Env, env...)
	cmd.ExtraFiles = extra
	// The death signal follows the thread that forked; the Go runtime keeps its
	// threads for the life of the process unless a goroutine exits while locked to
	// one, which no test here does.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	h := &helperProc{cmd: cmd}
	cmd.Stderr = &h.stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatalf("StdoutPipe: %v", err)
	}
	h.stdout = bufio.NewReader(out)
	if err := cmd.Start(); err != nil {
		t.Fatalf("start helper %s: %v", name, err)
	}
	t.Cleanup(func() {
		// Killing an exited group fails with ESRCH, which is fine.
		_ = unix.Kill(-cmd.Process.Pid, unix.SIGKILL)
		h.wait()
	})
	return h
}

// line reads the helper's next line of stdout.
func (h *helperProc) line(t testing.TB) string {
	t.Helper()
	s, err := h.stdout.ReadString('\n')
	if err != nil {
		t.Fatalf("read helper stdout: %v (stderr: %s)", err, h.stderrText())
	}
	return strings.TrimSuffix(s, "\n")
}

// wait drains stdout and reaps the helper, once; it returns the exit error with
// stderr attached.
func (h *helperProc) wait() error {
	h.waitOnce.Do(func() {
		_, _ = io.Copy(io.Discard, h.stdout) // Wait closes the pipe: drain it first
		if err := h.cmd.Wait(); err != nil {
			h.waitErr = fmt.Errorf("%w (stderr: %s)", err, h.stderrText())
		}
	})
	return h.waitErr
}

func (h *helperProc) stderrText() string {
	// cmd.Stderr is written by exec's copying goroutine until Wait returns; read it
	// only after wait.
	if h.cmd.ProcessState == nil {
		return "<still running>"
	}
	return strings.TrimSpace(h.stderr.String())
}

// fdFlags returns the descriptor flags (F_GETFD) and file status flags (F_GETFL) of
// fd.
func fdFlags(fd int) (fdFlags, flFlags int, err error) {
	if fdFlags, err = unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil {
		return 0, 0, fmt.Errorf("fcntl F_GETFD fd %d: %w", fd, err)
	}
	if flFlags, err = unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0); err != nil {
		return 0, 0, fmt.Errorf("fcntl F_GETFL fd %d: %w", fd, err)
	}
	return fdFlags, flFlags, nil
}

// cloexecNonblocking returns an error, for a helper to report, unless the
// descriptor under c is close-on-exec and in non-blocking mode.
func cloexecNonblocking(c syscall.Conn) error {
	fd, err := connFD(c)
	if err != nil {
		return err
	}
	fdfl, fl, err := fdFlags(fd)
	if err != nil {
		return err
	}
	if fdfl&unix.FD_CLOEXEC == 0 || fl&unix.O_NONBLOCK == 0 {
		return fmt.Errorf("fd %d: flags %#x, status %#x; want close-on-exec and non-blocking", fd, fdfl, fl)
	}
	return nil
}

// connFD returns the descriptor under c without touching its mode.
func connFD(c syscall.Conn) (int, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	if err := rc.Control(func(u uintptr) { fd = int(u) }); err != nil {
		return -1, err
	}
	return fd, nil
}

// isNonblocking reports whether the socket under c is in non-blocking mode.
func isNonblocking(c syscall.Conn) (bool, error) {
	fd, err := connFD(c)
	if err != nil {
		return false, err
	}
	_, fl, err := fdFlags(fd)
	if err != nil {
		return false, err
	}
	return fl&unix.O_NONBLOCK != 0, nil
}

// mustNonblocking fails t unless c is in non-blocking mode.
func mustNonblocking(t testing.TB, what string, c syscall.Conn) {
	t.Helper()
	nb, err := isNonblocking(c)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if !nb {
		t.Errorf("%s is in blocking mode, want non-blocking", what)
	}
}

// openFDs returns the open descriptors of this process with what they refer to.
func openFDs(t testing.TB) map[int]string {
	t.Helper()
	dir, err := os.Open("/proc/self/fd")
	if err != nil {
		t.Fatalf("open /proc/self/fd: %v", err)
	}
	defer dir.Close()
	self, err := connFD(dir)
	if err != nil {
		t.Fatalf("fd of /proc/self/fd: %v", err)
	}
	names, err := dir.Readdirnames(-1)
	if err != nil {
		t.Fatalf("read /proc/self/fd: %v", err)
	}
	fds := make(map[int]string, len(names))
	for _, name := range names {
		fd, err := strconv.Atoi(name)
		if err != nil || fd == self {
			continue
		}
		target, _ := os.Readlink("/proc/self/fd/" + name) // gone meanwhile: still counted
		fds[fd] = target
	}
	return fds
}

// checkFDs fails t if a descriptor is open now that was not in before (from
// openFDs), naming each with what it refers to.
func checkFDs(t testing.TB, what string, before map[int]string) {
	t.Helper()
	for fd, target := range openFDs(t) {
		if _, ok := before[fd]; !ok {
			t.Errorf("%s: fd %d (%s) leaked", what, fd, target)
		}
	}
}
