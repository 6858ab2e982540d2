package ipc

import (
	"fmt"
	"strconv"
)

// Environment variables of the master↔worker protocol. The master sets them in
// every worker's environment; a worker that finds EnvIPCFD knows it runs under
// clusterd. Workers that do not link clusterd may ignore them all.
const (
	// EnvIPCFD is the number of the descriptor, inherited by the worker, that is
	// its end of the IPC socketpair (a connected unix stream socket, blocking
	// mode, not close-on-exec because it was inherited). Pass
	// os.NewFile(fd, ...) to [NewConn].
	EnvIPCFD = "CLUSTERD_IPC_FD"

	// EnvWorkerID is the worker's slot number, 0..N-1. It is stable across
	// restarts of the slot, like PM2's NODE_APP_INSTANCE.
	EnvWorkerID = "CLUSTERD_WORKER_ID"

	// EnvWorkerGen is the generation of the worker: the incarnation counter of
	// its slot, starting at 1 and incremented by every restart or reload.
	EnvWorkerGen = "CLUSTERD_WORKER_GEN"
)

// Env is the protocol environment of one worker: what [ParseEnv] reads in the
// worker and [Env.Environ] builds in the master.
type Env struct {
	// IPCFD is the descriptor number of the IPC end; -1 when absent.
	IPCFD int
	// WorkerID is the slot number; -1 when absent.
	WorkerID int
	// Generation is the slot's incarnation counter; 0 when absent.
	Generation int
}

// Environ returns the "KEY=value" entries for e, for a child's environment. Fields
// that are absent (IPCFD or WorkerID negative, Generation 0) are left out.
func (e Env) Environ() []string {
	var env []string
	if e.IPCFD >= 0 {
		env = append(env, EnvIPCFD+"="+strconv.Itoa(e.IPCFD))
	}
	if e.WorkerID >= 0 {
		env = append(env, EnvWorkerID+"="+strconv.Itoa(e.WorkerID))
	}
	if e.Generation > 0 {
		env = append(env, EnvWorkerGen+"="+strconv.Itoa(e.Generation))
	}
	return env
}

// ParseEnv reads the protocol variables through lookup (os.LookupEnv in
// production; tests pass their own). A variable that is absent leaves its field at
// the absent value (see [Env]); one that is present but not a non-negative decimal
// integer is an error naming it. ok reports whether EnvIPCFD was present, that is
// whether the process runs under clusterd with an IPC channel.
func ParseEnv(lookup func(string) (string, bool)) (e Env, ok bool, err error) {
	e = Env{IPCFD: -1, WorkerID: -1}
	vars := []struct {
		name string
		dst  *int
	}{
		{EnvIPCFD, &e.IPCFD},
		{EnvWorkerID, &e.WorkerID},
		{EnvWorkerGen, &e.Generation},
	}
	for _, v := range vars {
		s, present := lookup(v.name)
		if !present {
			continue
		}
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			return Env{IPCFD: -1, WorkerID: -1}, false, fmt.Errorf("ipc: environment variable %s=%q: not a non-negative integer", v.name, s)
		}
		*v.dst = n
	}
	return e, e.IPCFD >= 0, nil
}
