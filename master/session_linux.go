package master

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/clusterd/clusterd/ipc"
	"golang.org/x/sys/unix"
)

// The master's IPC session with one worker: the hello, then the worker's
// messages turned into loop events, and the drain message.

// execProcess is a real worker process.
type execProcess struct {
	pid     int
	conn    *ipc.Conn     // nil without IPC
	notify  *notifySocket // nil without NOTIFY_SOCKET
	done    chan struct{} // closed by release
	once    sync.Once
	helloOK atomic.Bool // the worker said hello: it reads its IPC end
}

// reportsExec: the exec-worker step reports its execve (awaitExec).
func (p *execProcess) reportsExec() bool { return true }

var _ execReporter = (*execProcess)(nil)

func (p *execProcess) signal(sig syscall.Signal) error {
	if err := unix.Kill(-p.pid, sig); err != nil {
		return fmt.Errorf("signal process group %d: %w", p.pid, os.NewSyscallError("kill", err))
	}
	return nil
}

func (p *execProcess) release() {
	p.once.Do(func() {
		close(p.done)
		if p.conn != nil {
			p.conn.Close() // unblocks serveIPC; the conn is of no further use
		}
		if p.notify != nil {
			p.notify.close() // unblocks its reader and removes the file
		}
	})
}

// drain sends an ipc drain message (best effort: a worker that does not
// speak the protocol has the stop signal).
func (p *execProcess) drain(timeout time.Duration) {
	if p.conn == nil || !p.helloOK.Load() {
		return
	}
	m, err := ipc.NewMessage(ipc.KindDrain, ipc.Drain{Deadline: time.Now().Add(timeout)})
	if err != nil {
		return
	}
	_ = p.conn.Send(m)
}

// serveIPC reads the worker's messages: its hello, then ready, heartbeats
// and errors, turned into loop events. It returns when the connection
// closes (the worker exited and release closed the master's end).
func (st *execStarter) serveIPC(p *execProcess, req spawnRequest) {
	defer st.ipcWG.Done()
	log := st.log.With("worker", req.slot, "pid", p.pid, "generation", req.gen)
	local := ipc.Hello{Version: ipc.Version, PID: os.Getpid(), WorkerID: -1}
	peer, err := p.conn.Handshake(context.Background(), local)
	if err != nil {
		if !quietIPCError(err) {
			st.post(workerEvent{pid: p.pid, kind: evProtocol, err: fmt.Errorf("ipc hello: %w", err)})
		}
		return
	}
	if peer.PID != p.pid || peer.WorkerID != req.slot || peer.Generation != req.gen {
		st.post(workerEvent{pid: p.pid, kind: evProtocol, err: fmt.Errorf(
			"ipc hello from pid %d worker %d generation %d: want pid %d worker %d generation %d",
			peer.PID, peer.WorkerID, peer.Generation, p.pid, req.slot, req.gen)})
		return
	}
	p.helloOK.Store(true)
	log.Debug("ipc hello", "version", peer.Version)
	for {
		m, err := p.conn.Recv()
		if err != nil {
			if !quietIPCError(err) {
				st.post(workerEvent{pid: p.pid, kind: evProtocol, err: err})
			}
			return
		}
		_ = m.CloseFDs() // no message the master reads carries fds it keeps
		switch m.Kind {
		case ipc.KindReady:
			st.post(workerEvent{pid: p.pid, kind: evReady, source: ReadyIPC})
		case ipc.KindHeartbeat:
			st.post(workerEvent{pid: p.pid, kind: evWatchdog})
		default:
			if log.IsTrace() {
				log.Trace("ipc message ignored", "kind", m.Kind.String())
			}
		}
	}
}

// quietIPCError reports errors that only mean the connection ended.
func quietIPCError(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, ipc.ErrClosed) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, os.ErrClosed) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// post hands an event to the loop; false once the loop has ended.
func (st *execStarter) post(e workerEvent) bool {
	select {
	case st.events <- e:
		return true
	case <-st.done:
		return false
	}
}
