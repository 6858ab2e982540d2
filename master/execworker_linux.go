package master

import (
	"encoding/binary"
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
// The master learns the outcome without waiting for that exit: it passes
// the write end of a close-on-exec pipe (named by CLUSTERD_EXEC_FD), which
// a successful execve closes, and to which ExecWorker writes the errno of
// a failure before it returns.
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
	report := execReportFD()
	err := execWorker(args)
	if report >= 0 {
		writeExecErrno(report, err)
	}
	return err
}

// envExecFD names the fd of the exec-outcome pipe's write end in the
// exec-worker step; it is removed before the worker command runs.
const envExecFD = "CLUSTERD_EXEC_FD"

// envNoPdeath, set for the exec-worker step, keeps the worker free of a
// parent-death signal (a master that can upgrade in place: see doc.go).
const envNoPdeath = "CLUSTERD_EXEC_NO_PDEATH"

// execReportFD takes the exec-outcome fd from the environment (-1: none)
// and removes the variable, so the worker command never sees it.
func execReportFD() int {
	v, ok := os.LookupEnv(envExecFD)
	if !ok {
		return -1
	}
	os.Unsetenv(envExecFD)
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 3 {
		return -1
	}
	return fd
}

// writeExecErrno writes err's errno (EINVAL when it has none) to the
// exec-outcome pipe as 4 bytes in host order. Best effort: the exit status
// 127 follows anyway.
func writeExecErrno(fd int, err error) {
	errno := unix.EINVAL
	var e unix.Errno
	if errors.As(err, &e) {
		errno = e
	} else if errors.Is(err, exec.ErrNotFound) {
		errno = unix.ENOENT
	}
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], uint32(errno))
	_, _ = unix.Write(fd, b[:])
}

func execWorker(args []string) error {
	ppid := os.Getppid()
	_, noPdeath := os.LookupEnv(envNoPdeath)
	os.Unsetenv(envNoPdeath)
	if noPdeath {
		// A master that can upgrade in place (see doc.go).
		if err := unix.Prctl(unix.PR_SET_PDEATHSIG, 0, 0, 0, 0); err != nil {
			return fmt.Errorf("exec-worker: clear parent-death signal: %w", os.NewSyscallError("prctl", err))
		}
	} else if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(unix.SIGKILL), 0, 0, 0); err != nil {
		return fmt.Errorf("exec-worker: set parent-death signal: %w", os.NewSyscallError("prctl", err))
	}
	// The forked thread's own signal covers a master that died before this
	// point (SIGKILL ends every thread); this catches a reparenting between
	// the two calls above.
	if os.Getppid() != ppid {
		return fmt.Errorf("exec-worker: the master exited: %w", unix.ESRCH)
	}
	if len(args) > 0 && args[0] == "--" {
		args = args[1:]
	}
	if len(args) == 0 || args[0] == "" {
		return fmt.Errorf("exec-worker: no command: %w", unix.EINVAL)
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
	// The exec-outcome fd is not kept: marked close-on-exec here, it is
	// closed by a successful execve, which the master sees as end-of-file.
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
