package main

import "github.com/clusterd/clusterd/master"

// execWorker is the hidden exec-worker mode: master.ExecWorker sets
// LISTEN_PID, re-arms the parent-death signal on the exec'ing thread and
// replaces this process with the worker command.
func execWorker(args []string) error {
	return master.ExecWorker(args)
}
