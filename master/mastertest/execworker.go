package mastertest

import (
	"fmt"
	"os"

	"github.com/clusterd/clusterd/master"
)

// DispatchExecWorker handles the exec-worker step of a test binary that
// runs a master: when os.Args[1] is [master.ExecWorkerArg], the process was
// forked by the master to start a worker, and DispatchExecWorker runs
// [master.ExecWorker], which replaces the process with the worker command.
// If that fails it prints the error on one line to stderr and exits with
// code 127, as a shell does for a command it cannot run. Otherwise it
// returns at once and does nothing.
//
// Call it first thing in TestMain, before anything opens a file or starts
// a goroutine that could. It is the one function of this package that may
// end the process: in exec-worker mode the process exists only to exec the
// worker, and must not run the tests.
func DispatchExecWorker() {
	if len(os.Args) < 2 || os.Args[1] != master.ExecWorkerArg {
		return
	}
	err := master.ExecWorker(os.Args[2:])
	fmt.Fprintln(os.Stderr, "clusterd:", err)
	os.Exit(127)
}
