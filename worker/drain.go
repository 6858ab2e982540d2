package worker

import (
	"context"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// Drain returns a channel that is closed, once, when this worker must stop
// accepting and finish what it has: when the master sends a drain message
// over IPC (under clusterd), or when one of the signals given to
// [DrainOnSignal] arrives. Outside clusterd, and without DrainOnSignal, it is
// never closed.
//
// The first call opens the IPC connection to the master if it is not open
// yet (see [Ready]), so that its drain message can be received; an error
// doing so leaves the channel to the signals. Drain is safe for concurrent
// use and always returns the same channel.
func Drain() <-chan struct{} {
	p := self()
	// An error is not reported here: Ready reports the same one, and a
	// worker that cannot reach its master is still stopped by its signal.
	_, _ = p.ipcConn()
	return p.drain
}

// DrainOnSignal makes the given signals (SIGTERM, clusterd's default stop
// signal, if none is given) close the [Drain] channel. It installs a handler
// with [signal.Notify], so those signals no longer kill the process: the
// program is expected to exit once drained. This package installs no signal
// handler unless asked to. Calling it again adds signals.
func DrainOnSignal(sigs ...os.Signal) {
	p := self()
	if len(sigs) == 0 {
		sigs = []os.Signal{stopSignal}
	}
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, sigs...)
	// The goroutine ends when the first signal arrives (until then it lives
	// as long as the process); the handler stays installed so that later
	// signals do not kill a draining worker.
	go func() {
		<-ch
		p.startDrain(time.Time{})
	}()
}

// stopSignal is clusterd's default stop signal.
const stopSignal = syscall.SIGTERM

// DrainDeadline reports the deadline by which the master wants this worker
// gone, when its drain message carried one. After it, the master kills the
// worker's process group.
func DrainDeadline() (time.Time, bool) {
	p := self()
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.deadline, !p.deadline.IsZero()
}

// startDrain records the deadline, if any, and closes the drain channel once.
func (p *process) startDrain(deadline time.Time) {
	if !deadline.IsZero() {
		p.mu.Lock()
		if p.deadline.IsZero() || deadline.Before(p.deadline) {
			p.deadline = deadline
		}
		p.mu.Unlock()
	}
	p.drainOnce.Do(func() { close(p.drain) })
}

// Draining returns a context that is done when this worker must drain, at the
// moment [Drain] is closed: the master's drain message or a signal given to
// [DrainOnSignal]. Its Err is then [context.Canceled], and its Deadline is the
// drain message's deadline (the time after which the master kills the worker),
// as with [context.WithDeadline] from the moment the message arrives; before
// it, and for a drain started by a signal, it has no deadline. Outside
// clusterd, without DrainOnSignal, it is never done.
//
// Pass it, or a context derived from it, to work that must stop when the
// worker drains; derive one with [context.WithoutCancel] for work that must
// finish anyway within the deadline. Like Drain, the first call opens the IPC
// connection. Draining is safe for concurrent use; every call returns an
// equivalent context.
func Draining() context.Context {
	p := self()
	_, _ = p.ipcConn() // as in Drain: the error is Ready's to report
	return drainContext{p}
}

// drainContext is the context of [Draining]. It is a type of its own, not a
// context.WithDeadline, because its deadline is learnt only when it is done.
type drainContext struct{ p *process }

func (c drainContext) Deadline() (time.Time, bool) {
	c.p.mu.Lock()
	defer c.p.mu.Unlock()
	return c.p.deadline, !c.p.deadline.IsZero()
}

func (c drainContext) Done() <-chan struct{} { return c.p.drain }

func (c drainContext) Err() error {
	select {
	case <-c.p.drain:
		return context.Canceled
	default:
		return nil
	}
}

func (c drainContext) Value(any) any { return nil }

// String names the context in panics and logs, as the context package's do.
func (c drainContext) String() string { return "worker.Draining" }
