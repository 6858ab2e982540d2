package main

import (
	"errors"
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"

	"github.com/clusterd/clusterd/master"
)

// execWorker runs master.ExecWorker so that the worker keeps the
// parent-death signal the master gave it.
//
// The master forks `clusterd exec-worker` with Pdeathsig SIGKILL, which the
// kernel keeps per thread: only the thread that was forked has it, and the
// threads the Go runtime starts afterwards do not. execve(2) from any other
// thread makes that thread the new process, without the signal, and the
// worker then outlives a SIGKILLed master (seen in TestNoWorkerSurvivesKilledMaster
// under load: the main goroutine had moved off the main thread). So the
// signal is armed again on the thread that will call execve.
func execWorker(args []string) error {
	// Never unlocked: the process image is replaced, or the program exits.
	runtime.LockOSThread()
	ppid := os.Getppid()
	if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(unix.SIGKILL), 0, 0, 0); err != nil {
		return fmt.Errorf("exec-worker: set parent-death signal: %w", os.NewSyscallError("prctl", err))
	}
	// The master may have died before the signal was armed on this thread.
	if os.Getppid() != ppid {
		return errors.New("exec-worker: the master exited")
	}
	return master.ExecWorker(args)
}
