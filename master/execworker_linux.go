package master

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"

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
// in PATH) and its arguments. Programs that link master call it first thing
// in main when os.Args[1] == ExecWorkerArg, before anything opens a file:
//
//	if len(os.Args) > 1 && os.Args[1] == master.ExecWorkerArg {
//		err := master.ExecWorker(os.Args[2:])
//		fmt.Fprintln(os.Stderr, "clusterd:", err)
//		os.Exit(127)
//	}
//
// ExecWorker returns only on error; the caller should print it on one line
// and exit with code 127, as a shell does for a command it cannot run.
func ExecWorker(args []string) error {
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
	if _, ok := os.LookupEnv("LISTEN_FDS"); ok {
		if err := os.Setenv("LISTEN_PID", strconv.Itoa(os.Getpid())); err != nil {
			return fmt.Errorf("exec-worker: set LISTEN_PID: %w", err)
		}
	}
	err := unix.Exec(path, args, os.Environ())
	return fmt.Errorf("exec-worker: exec %s: %w", path, err)
}
