// Command clusterd supervises a cluster of worker processes that share
// listening sockets: `clusterd run --listen :8080 -w 4 -- ./server` binds the
// address, starts four servers on it, restarts the ones that crash and
// replaces them all, one by one, on SIGHUP without refusing a connection.
//
// Run `clusterd --help` and `clusterd run --help` for the flags, their
// CLUSTERD_* environment variables, and the signals the master acts on.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/clusterd/clusterd/master"
)

// startArgs and startEnv are the program's arguments, binary and
// environment as it started (before run removes the CLUSTERD_* variables
// it read): an in-place upgrade execs the new binary with them, so that it
// builds the same options.
var (
	startArgs = os.Args
	startEnv  = os.Environ()
	startExe  = executable()
)

// executable is the path of the running binary, or "" when unknown.
func executable() string {
	exe, err := os.Executable()
	if err != nil {
		return ""
	}
	return exe
}

func main() {
	// A worker is started as `clusterd exec-worker -- COMMAND...`: it must
	// reach execve as fast as possible, without building the command tree.
	// The master's guardian, `clusterd guardian`, started by run before any
	// worker, must not build it either; the same call dispatches it.
	master.DispatchExecWorker()
	os.Exit(execute(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}

// Exit codes.
const (
	exitOK    = 0
	exitError = 1 // the command failed
	exitUsage = 2 // bad usage: unknown flag, bad flag value, missing command
	// exitExecFailed is the status of an exec-worker that could not execve
	// the worker command, as a shell's "command not found".
	exitExecFailed = master.ExecWorkerExitCode
)

// execute runs the command tree on args and returns the exit code, after
// printing a failure as one line `clusterd: <error>` to stderr.
func execute(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := newRootCommand()
	root.SetArgs(scaleArgs(args))
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return exitOK
	}
	fmt.Fprintf(stderr, "clusterd: %s\n", oneLine(err))
	var ue *usageError
	if errors.As(err, &ue) {
		return exitUsage
	}
	var ec exitCoder
	if errors.As(err, &ec) {
		return ec.exitCode()
	}
	return exitError
}

// oneLine renders err on one line: the lines of joined errors are
// separated by "; ".
func oneLine(err error) string {
	return strings.ReplaceAll(strings.TrimSpace(err.Error()), "\n", "; ")
}

// usageError marks an error in how clusterd was called; it exits with
// status 2.
type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error {
	return &usageError{fmt.Errorf(format, args...)}
}

// isUsage reports whether err is a usage error.
func isUsage(err error) bool {
	var ue *usageError
	return errors.As(err, &ue)
}
