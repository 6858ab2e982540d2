package master

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"

	"github.com/clusterd/clusterd/ipc"
	"golang.org/x/sys/unix"
)

// ExecWorker is the exec-worker mode: it runs in the process the master
// forked, sets LISTEN_PID to this pid (known only after the fork) when
// LISTEN_FDS is set, and replaces the process with the worker command
// through execve(2), so the command keeps the pid, its inherited fds and
// LISTEN_PID == getpid() as systemd's protocol requires.
//
// args are the arguments after [ExecWorkerArg]: an optional "--", then the
// command path (resolved by the master; a name without a slash is looked up
// in PATH) and its arguments. Programs that link master dispatch to it
// first thing in main with [DispatchExecWorker]. ExecWorker returns only on
// error.
//
// The master forks this process with the parent-death signal SIGKILL, which
// the kernel keeps per thread: only the forked thread has it, threads the Go
// runtime starts later do not, and execve(2) from another thread makes that
// thread the whole process, without the signal. The worker would then
// outlive a SIGKILLed master (seen under load, when the main goroutine had
// moved off the main thread). So ExecWorker locks its goroutine to its
// thread and arms the signal again on the thread that calls execve.
func ExecWorker(args []string) error {
	// Never unlocked: the process image is replaced, or the program exits.
	runtime.LockOSThread()
	ppid := os.Getppid()
	if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(unix.SIGKILL), 0, 0, 0); err != nil {
		return fmt.Errorf("exec-worker: set parent-death signal: %w", os.NewSyscallError("prctl", err))
	}
	// The forked thread's own signal covers a master that died before this
	// point (SIGKILL ends every thread); this catches a reparenting between
	// the two calls above.
	if os.Getppid() != ppid {
		return errors.New("exec-worker: the master exited")
	}
	if len(args) > 0 && args[0] == "--" {
		args = args[1:]
	}
	if len(args) == 0 || args[0] == "" {
		return errors.New("exec-worker: no command")
	}
	path := args[0]
	if !strings.Contains(path, "/") {
		p, err := exec.LookPath(path)
		if err != nil {
			return fmt.Errorf("exec-worker: %w", err)
		}
		path = p
	}
	keep := []int{0, 1, 2}
	if v, ok := os.LookupEnv("LISTEN_FDS"); ok {
		if err := os.Setenv("LISTEN_PID", strconv.Itoa(os.Getpid())); err != nil {
			return fmt.Errorf("exec-worker: set LISTEN_PID: %w", err)
		}
		if n, err := strconv.Atoi(v); err == nil {
			for i := range n {
				keep = append(keep, 3+i)
			}
		}
	}
	if v, ok := os.LookupEnv(ipc.EnvIPCFD); ok {
		if fd, err := strconv.Atoi(v); err == nil {
			keep = append(keep, fd)
		}
	}
	if err := cloexecAllBut(keep); err != nil {
		return fmt.Errorf("exec-worker: %w", err)
	}
	err := unix.Exec(path, args, os.Environ())
	return fmt.Errorf("exec-worker: exec %s: %w", path, err)
}

// cloexecAllBut marks every fd not in keep close-on-exec. The master opens
// all its fds close-on-exec, but it may itself have inherited fds that are
// not (from whatever started it): those must not reach the worker, which
// gets exactly stdin, stdout, stderr, its listeners and its IPC end.
func cloexecAllBut(keep []int) error {
	slices.Sort(keep)
	next := 0
	for _, k := range keep {
		if k > next {
			if err := cloexecRange(next, k-1); err != nil {
				return err
			}
		}
		next = k + 1
	}
	return cloexecRange(next, -1)
}

// cloexecRange marks fds first..last (-1: all above first) close-on-exec.
func cloexecRange(first, last int) error {
	end := uint(last)
	if last < 0 {
		end = ^uint(0)
	}
	err := unix.CloseRange(uint(first), end, unix.CLOSE_RANGE_CLOEXEC)
	if err == nil {
		return nil
	}
	// close_range with CLOSE_RANGE_CLOEXEC needs Linux 5.11: walk /proc.
	ents, rerr := os.ReadDir("/proc/self/fd")
	if rerr != nil {
		return fmt.Errorf("mark inherited fds close-on-exec: %w", errors.Join(os.NewSyscallError("close_range", err), rerr))
	}
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil || fd < first || (last >= 0 && fd > last) {
			continue
		}
		// An fd that vanished (the directory's own) needs nothing.
		_, _ = unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC)
	}
	return nil
}
