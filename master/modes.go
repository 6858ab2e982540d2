package master

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// The enumerations of Options: balancing, restart policy, readiness rule and
// output mode, each with the parser the CLI uses and a String that round-trips.

// Balance says how connections of a listen address are spread over workers.
type Balance int

const (
	// BalanceShared (the zero value) hands the same listening socket to every
	// worker; the kernel gives each connection to one accept caller.
	BalanceShared Balance = iota
	// BalanceReusePort binds one SO_REUSEPORT socket per slot and address. The
	// socket belongs to the slot: a replacement worker inherits it, so its
	// accept backlog survives restarts and reloads. Unix sockets stay shared.
	BalanceReusePort
	// BalanceRoundRobin keeps every listening socket in the master, which
	// accepts and hands each connection to the next ready worker in turn,
	// over IPC (ipc KindConn, SCM_RIGHTS). Workers must link the worker
	// library (worker.Listen); other binaries cannot take connections.
	BalanceRoundRobin
	// BalanceLeastConn is BalanceRoundRobin, but each connection goes to the
	// ready worker with the fewest open connections it was handed.
	BalanceLeastConn
)

// ParseBalance parses "shared", "reuseport", "round-robin" or "least-conn".
func ParseBalance(s string) (Balance, error) {
	switch s {
	case "shared":
		return BalanceShared, nil
	case "reuseport":
		return BalanceReusePort, nil
	case "round-robin":
		return BalanceRoundRobin, nil
	case "least-conn":
		return BalanceLeastConn, nil
	}
	return 0, fmt.Errorf("parse balance %q: want shared, reuseport, round-robin or least-conn", s)
}

// overIPC reports whether the master accepts and hands connections to
// workers over IPC.
func (b Balance) overIPC() bool { return b == BalanceRoundRobin || b == BalanceLeastConn }

// String returns the name ParseBalance accepts.
func (b Balance) String() string {
	switch b {
	case BalanceShared:
		return "shared"
	case BalanceReusePort:
		return "reuseport"
	case BalanceRoundRobin:
		return "round-robin"
	case BalanceLeastConn:
		return "least-conn"
	}
	return "Balance(" + strconv.Itoa(int(b)) + ")"
}

// RestartPolicy says which worker exits lead to a restart.
type RestartPolicy int

const (
	// RestartAlways (the zero value) restarts every worker that exits
	// unexpectedly, whatever its status.
	RestartAlways RestartPolicy = iota
	// RestartOnFailure restarts a worker unless it exited with code 0.
	RestartOnFailure
	// RestartNever leaves the slot of an exited worker empty.
	RestartNever
)

// ParseRestartPolicy parses "always", "on-failure" or "never".
func ParseRestartPolicy(s string) (RestartPolicy, error) {
	switch s {
	case "always":
		return RestartAlways, nil
	case "on-failure":
		return RestartOnFailure, nil
	case "never":
		return RestartNever, nil
	}
	return 0, fmt.Errorf("parse restart policy %q: want always, on-failure or never", s)
}

// String returns the name ParseRestartPolicy accepts.
func (p RestartPolicy) String() string {
	switch p {
	case RestartAlways:
		return "always"
	case RestartOnFailure:
		return "on-failure"
	case RestartNever:
		return "never"
	}
	return "RestartPolicy(" + strconv.Itoa(int(p)) + ")"
}

// ReadyKind says which event makes a worker ready.
type ReadyKind int

const (
	// ReadyExec (the zero value): ready as soon as the worker process runs.
	ReadyExec ReadyKind = iota
	// ReadyNotify: ready when the worker sends READY=1 on NOTIFY_SOCKET.
	ReadyNotify
	// ReadyIPC: ready when the worker sends an ipc ready message after its hello.
	ReadyIPC
	// ReadyDelay: ready once the worker has stayed up for ReadyMode.Delay.
	ReadyDelay
)

// ReadyMode is a readiness rule. The zero value is ReadyExec.
type ReadyMode struct {
	Kind  ReadyKind
	Delay time.Duration // only for ReadyDelay; must be positive there
}

// ParseReadyMode parses "exec", "notify", "ipc" or "delay=DUR" (a
// time.ParseDuration string, e.g. "delay=500ms").
func ParseReadyMode(s string) (ReadyMode, error) {
	switch s {
	case "exec":
		return ReadyMode{Kind: ReadyExec}, nil
	case "notify":
		return ReadyMode{Kind: ReadyNotify}, nil
	case "ipc":
		return ReadyMode{Kind: ReadyIPC}, nil
	}
	if v, ok := strings.CutPrefix(s, "delay="); ok {
		d, err := time.ParseDuration(v)
		if err != nil {
			return ReadyMode{}, fmt.Errorf("parse ready mode %q: %w", s, err)
		}
		if d <= 0 {
			return ReadyMode{}, fmt.Errorf("parse ready mode %q: delay must be positive", s)
		}
		return ReadyMode{Kind: ReadyDelay, Delay: d}, nil
	}
	return ReadyMode{}, fmt.Errorf("parse ready mode %q: want exec, notify, ipc or delay=DURATION", s)
}

// String returns the form ParseReadyMode accepts.
func (r ReadyMode) String() string {
	switch r.Kind {
	case ReadyExec:
		return "exec"
	case ReadyNotify:
		return "notify"
	case ReadyIPC:
		return "ipc"
	case ReadyDelay:
		return "delay=" + r.Delay.String()
	}
	return "ReadyKind(" + strconv.Itoa(int(r.Kind)) + ")"
}

// OutputMode says what happens to the workers' stdout and stderr.
type OutputMode int

const (
	// OutputPrefix (the zero value) relays each line a worker writes, prefixed
	// with "[w3 pid 1234] ", to Options.Stdout or Options.Stderr.
	OutputPrefix OutputMode = iota
	// OutputRaw passes the master's stdout and stderr (or Options.Stdout and
	// Options.Stderr when they are *os.File) to workers untouched.
	OutputRaw
)

// ParseOutputMode parses "prefix" or "raw".
func ParseOutputMode(s string) (OutputMode, error) {
	switch s {
	case "prefix":
		return OutputPrefix, nil
	case "raw":
		return OutputRaw, nil
	}
	return 0, fmt.Errorf("parse output mode %q: want prefix or raw", s)
}

// String returns the name ParseOutputMode accepts.
func (o OutputMode) String() string {
	switch o {
	case OutputPrefix:
		return "prefix"
	case OutputRaw:
		return "raw"
	}
	return "OutputMode(" + strconv.Itoa(int(o)) + ")"
}
