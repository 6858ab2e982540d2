package main

import (
	"fmt"
	"os"

	"github.com/clusterd/clusterd/master"
)

// execWorker is the hidden exec-worker mode: master.ExecWorker sets
// LISTEN_PID, re-arms the parent-death signal on the exec'ing thread and
// replaces this process with the worker command.
func execWorker(args []string) error {
	return master.ExecWorker(args)
}

// guardian is the hidden guardian mode: it waits for the master to be gone
// and kills what is left of its cluster (see master.Guardian). It returns
// the exit code.
func guardian() int {
	if err := master.Guardian(); err != nil {
		fmt.Fprintf(os.Stderr, "clusterd: %v\n", err)
		return exitError
	}
	return exitOK
}
