package worker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/clusterd/clusterd/ipc"
)

// Balanced listeners (--balance round-robin and least-conn): the master
// keeps the listening socket, accepts, and sends each connection to one
// worker as an ipc KindConn message. Listen returns a net.Listener whose
// Accept takes them, so an http.Server needs no change.
//
// The worker's half of the hand-off (ipc/doc.go tells all of it): the
// session's reader counts every connection it receives and queues it on its
// listener; a connection it cannot queue (no listener of that id, the
// listener closed, or its queue full) goes back to the master, which hands
// it to another worker. A reporter goroutine sends the running totals
// (received, closed) whenever they change; the master closes its copy of a
// connection once "received" covers it, and least-conn counts "received
// minus closed" as the worker's open connections.

// balancedQueue is how many received connections a balanced listener holds
// for Accept; past it they go back to the master.
const balancedQueue = 256

// handoff is the process's balanced listeners and the totals it reports.
type handoff struct {
	mu   sync.Mutex
	byID map[int]*balancedListener
	conn *ipc.Conn // the master's connection, once a KindConn came

	received atomic.Uint64
	closed   atomic.Uint64
	kick     chan struct{} // capacity 1: the totals changed
	started  sync.Once
}

// listener returns the balanced listener of id for Listen, making it if
// the reader or an earlier Listen did not; a closed one is replaced (the
// program listens again on an address it closed).
func (h *handoff) listener(id int, addr net.Addr) *balancedListener {
	h.mu.Lock()
	defer h.mu.Unlock()
	l := h.byID[id]
	if l == nil || l.isClosed() {
		l = h.newListener(id)
	}
	if l.addr == nil {
		l.addr = addr
	}
	return l
}

// queue returns the listener the reader queues connections of id on: the
// one Listen made, closed or not, or a new one when the master's
// connections came before Listen took its reply (both arrive on the one
// stream, and the reply goes to Listen's goroutine). Only Listen replaces
// a closed listener: a closed one that the reader replaced would queue
// connections that no Accept ever takes, and that the worker's exit would
// reset, where a closed one gives them back.
//
// Called with h.mu held.
func (h *handoff) queue(id int) *balancedListener {
	if l := h.byID[id]; l != nil {
		return l
	}
	return h.newListener(id)
}

// newListener makes the listener of id; called with h.mu held.
func (h *handoff) newListener(id int) *balancedListener {
	if h.byID == nil {
		h.byID = make(map[int]*balancedListener)
	}
	l := &balancedListener{h: h, id: id, conns: make(chan *os.File, balancedQueue), done: make(chan struct{})}
	h.byID[id] = l
	return l
}

// receive takes a KindConn message from the master: its descriptors go to
// their listener's queue, or back to the master.
func (h *handoff) receive(conn *ipc.Conn, m *ipc.Message) {
	h.startReporter(conn)
	var id int
	if err := m.Decode(&id); err != nil || id < 0 {
		// A master that breaks the protocol: the connections cannot be
		// routed, not even back.
		h.received.Add(uint64(len(m.FDs)))
		h.closed.Add(uint64(len(m.FDs)))
		_ = m.CloseFDs()
		h.changed()
		return
	}
	var back []*os.File
	h.mu.Lock()
	h.conn = conn
	l := h.queue(id)
	for _, f := range m.FDs {
		if l.isClosed() {
			back = append(back, f)
			continue
		}
		select {
		case l.conns <- f:
			h.received.Add(1)
		default:
			back = append(back, f)
		}
	}
	h.mu.Unlock()
	m.FDs = nil
	if len(back) > 0 {
		// Counted as received only once they are queued back to the
		// master: a report covering them then follows them on the stream,
		// and if the worker dies first the master still has its copies.
		h.giveBack(conn, id, back, false)
		h.received.Add(uint64(len(back)))
	}
	h.changed()
}

// giveBack sends connections the worker will not serve back to the master
// and closes its own copies. flush waits until they are written (bounded):
// for connections the master may no longer hold a copy of, which the
// process must not exit with.
func (h *handoff) giveBack(conn *ipc.Conn, id int, files []*os.File, flush bool) {
	var err error
	for rest := files; len(rest) > 0 && err == nil; {
		n := min(len(rest), ipc.DefaultMaxFDs) // the most one frame may carry
		var m *ipc.Message
		if m, err = ipc.NewMessage(ipc.KindConn, id); err == nil {
			m.FDs = rest[:n]
			err = conn.Send(m) // sends duplicates; ours are closed below
		}
		rest = rest[n:]
	}
	if err == nil && flush {
		ctx, cancel := context.WithTimeout(context.Background(), giveBackTimeout)
		err = conn.Flush(ctx)
		cancel()
	}
	_ = err // the master is gone (or stuck): nobody is left to take them
	for _, f := range files {
		_ = f.Close()
	}
	h.closed.Add(uint64(len(files)))
	h.changed()
}

// reportSpacing is the least time between two reports of the totals.
const reportSpacing = time.Millisecond

// giveBackTimeout bounds how long closing a balanced listener waits for
// the connections it gives back to be written.
const giveBackTimeout = time.Second

func (h *handoff) changed() {
	select {
	case h.kick <- struct{}{}:
	default:
	}
}

// startReporter starts, once, the goroutine that sends the totals.
func (h *handoff) startReporter(conn *ipc.Conn) {
	h.started.Do(func() { go h.report(conn) })
}

func (h *handoff) report(conn *ipc.Conn) {
	for {
		select {
		case <-h.kick:
		case <-conn.Done():
			return
		}
		// One report covers every change since the last: under load the
		// totals move thousands of times a second, and reports at most
		// every reportSpacing keep well within the master's IPC pacing.
		time.Sleep(reportSpacing)
		m, err := ipc.NewMessage(ipc.KindConn, ipc.ConnReport{Received: h.received.Load(), Closed: h.closed.Load()})
		if err == nil {
			err = conn.Send(m)
		}
		if err != nil {
			return // the connection is gone
		}
	}
}

// balancedListener is the net.Listener of a balanced address.
type balancedListener struct {
	h     *handoff
	id    int
	addr  net.Addr
	conns chan *os.File
	done  chan struct{}
	once  sync.Once
}

func (l *balancedListener) isClosed() bool {
	select {
	case <-l.done:
		return true
	default:
		return false
	}
}

// Accept returns the next connection the master handed to this worker. The
// connection is the worker's; closing it is counted in the totals the
// worker reports.
func (l *balancedListener) Accept() (net.Conn, error) {
	for {
		select {
		case f := <-l.conns:
			c, err := net.FileConn(f) // a duplicate
			_ = f.Close()
			if err != nil {
				// A connection that cannot be used is closed; the client
				// sees a reset. Not a reason to stop serving.
				l.h.closed.Add(1)
				l.h.changed()
				continue
			}
			return &handedConn{Conn: c, h: l.h}, nil
		case <-l.done:
			return nil, &net.OpError{Op: "accept", Net: l.Addr().Network(), Addr: l.Addr(), Err: net.ErrClosed}
		}
	}
}

// Close stops Accept; the connections queued and not yet accepted go back
// to the master, which hands them to other workers. Connections accepted
// before stay open.
func (l *balancedListener) Close() error {
	l.once.Do(func() {
		l.h.mu.Lock()
		close(l.done)
		conn := l.h.conn
		var back []*os.File
		for {
			select {
			case f := <-l.conns:
				back = append(back, f)
				continue
			default:
			}
			break
		}
		l.h.mu.Unlock()
		if len(back) > 0 {
			l.h.giveBack(conn, l.id, back, true) // conn is set: they came on it
		}
	})
	return nil
}

// Addr returns the address the master's socket is bound to.
func (l *balancedListener) Addr() net.Addr {
	if l.addr == nil {
		return &net.TCPAddr{}
	}
	return l.addr
}

// handedConn counts its close in the worker's totals.
type handedConn struct {
	net.Conn
	h      *handoff
	closed atomic.Bool
}

func (c *handedConn) Close() error {
	err := c.Conn.Close()
	if c.closed.CompareAndSwap(false, true) {
		c.h.closed.Add(1)
		c.h.changed()
	}
	return err
}

// CloseWrite shuts down the writing side of a TCP or unix connection.
func (c *handedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

// SetKeepAlive, SetKeepAlivePeriod and SetNoDelay reach the TCP connection
// (http.Server and others tune it through these).
func (c *handedConn) SetKeepAlive(on bool) error {
	if tc, ok := c.Conn.(*net.TCPConn); ok {
		return tc.SetKeepAlive(on)
	}
	return nil
}

func (c *handedConn) SetKeepAlivePeriod(d time.Duration) error {
	if tc, ok := c.Conn.(*net.TCPConn); ok {
		return tc.SetKeepAlivePeriod(d)
	}
	return nil
}

func (c *handedConn) SetNoDelay(on bool) error {
	if tc, ok := c.Conn.(*net.TCPConn); ok {
		return tc.SetNoDelay(on)
	}
	return nil
}

// balancedAddr parses the bound address of a listen reply.
func balancedAddr(network, addr string) (net.Addr, error) {
	if network == "unix" {
		return &net.UnixAddr{Name: addr, Net: "unix"}, nil
	}
	a, err := net.ResolveTCPAddr("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("balanced address %q from the master: %w", addr, err)
	}
	return a, nil
}
