package worker

import (
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/clusterd/clusterd/ipc"
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

// readIPC reads the master's messages until the connection ends. It is the
// connection's only reader. Its owner is the process: the connection lives
// as long as the worker does, and the goroutine ends when the master closes
// its end or the worker exits.
func (p *process) readIPC(conn *ipc.Conn) {
	for {
		m, err := conn.Recv()
		if err != nil {
			// EOF: the master closed the connection (it is exiting, and
			// Pdeathsig or the stop signal will follow). Anything else is a
			// protocol error; either way there is nothing more to read, and
			// nobody to report it to but the master, which is gone.
			return
		}
		m.CloseFDs() // no message this package handles carries fds
		switch m.Kind {
		case ipc.KindDrain:
			var d ipc.Drain
			// A drain with an unreadable body is still a drain, without
			// a deadline.
			if err := m.Decode(&d); err != nil {
				d = ipc.Drain{}
			}
			p.startDrain(d.Deadline)
		}
	}
}
