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
	// library (worker.Listen); other binaries cannot take connections:
	// when no worker has said hello on IPC ReadyTimeout after Run began
	// (whether they wait or crash-loop), Run fails with an error that names
	// BalanceShared and BalanceReusePort, and an IntensityError reached
	// first says the same in its Note.
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
	// ReadyExec (the zero value): ready as soon as the exec-worker step has
	// executed the worker command (not when it failed to).
	ReadyExec ReadyKind = iota
	// ReadyNotify: ready when the worker sends READY=1 on NOTIFY_SOCKET.
	ReadyNotify
	// ReadyIPC: ready when the worker sends an ipc ready message after its hello.
	ReadyIPC
	// ReadyDelay: ready once the worker has stayed up for ReadyMode.Delay.
	ReadyDelay
	// ReadyListening: ready when the worker waits for connections on an
	// inherited listener, as /proc shows it: one of its threads (or of its
	// descendants') is blocked in accept(2)/accept4(2) on it, or in
	// poll(2)/select(2) with it in the set (gunicorn's sync worker, puma),
	// or the listener is registered in one of their epoll sets (Go,
	// Node/libuv, asyncio and uvicorn, lighttpd, nginx). An IPC ready
	// message counts as well, whichever comes first, and once a worker has
	// said its IPC hello the probe stops and leaves it to that message. A
	// worker with no inherited listener, or one not seen waiting within
	// ReadyMode.Delay, is ready after ReadyMode.Delay, with one log line that
	// says so.
	ReadyListening
)

// DefaultListeningFallback is the ReadyMode.Delay of ReadyListening when
// none is given: how long a worker has to be seen waiting on its listener
// before it counts as ready anyway.
// It is long because every common way of waiting is seen: what is left
// (a socket of its own, io_uring, a sleeping loop) is rare, and a late
// "ready" costs a slower reload, an early one a reload onto a worker that
// does not serve yet.
const DefaultListeningFallback = 10 * time.Second

// ReadyMode is a readiness rule. The zero value is ReadyExec.
type ReadyMode struct {
	Kind ReadyKind
	// Delay is the delay of ReadyDelay (must be positive there) and the
	// fallback delay of ReadyListening (0 means DefaultListeningFallback).
	Delay time.Duration
}

// ParseReadyMode parses "exec", "notify", "ipc", "listening",
// "listening=FALLBACK" or "delay=DUR" (durations as time.ParseDuration
// takes them, e.g. "delay=500ms").
func ParseReadyMode(s string) (ReadyMode, error) {
	switch s {
	case "exec":
		return ReadyMode{Kind: ReadyExec}, nil
	case "notify":
		return ReadyMode{Kind: ReadyNotify}, nil
	case "ipc":
		return ReadyMode{Kind: ReadyIPC}, nil
	case "listening":
		return ReadyMode{Kind: ReadyListening, Delay: DefaultListeningFallback}, nil
	}
	for _, m := range []struct {
		prefix string
		kind   ReadyKind
	}{{"delay=", ReadyDelay}, {"listening=", ReadyListening}} {
		v, ok := strings.CutPrefix(s, m.prefix)
		if !ok {
			continue
		}
		d, err := time.ParseDuration(v)
		if err != nil {
			return ReadyMode{}, fmt.Errorf("parse ready mode %q: %w", s, err)
		}
		if d <= 0 {
			return ReadyMode{}, fmt.Errorf("parse ready mode %q: duration must be positive", s)
		}
		return ReadyMode{Kind: m.kind, Delay: d}, nil
	}
	return ReadyMode{}, fmt.Errorf("parse ready mode %q: want listening[=FALLBACK], exec, notify, ipc or delay=DURATION", s)
}

// accepts reports whether readiness reported by src counts under r.
func (r ReadyMode) accepts(src ReadyKind) bool {
	return src == r.Kind || (r.Kind == ReadyListening && src == ReadyIPC)
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
	case ReadyListening:
		if r.Delay == 0 || r.Delay == DefaultListeningFallback {
			return "listening"
		}
		return "listening=" + r.Delay.String()
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
