package worker

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"time"

	"github.com/clusterd/clusterd/ipc"
)

// The worker's side of the IPC session: once the hello is exchanged, one
// goroutine reads the master's messages and dispatches them (drain, user
// messages, requests), and another sends heartbeats with the program's
// metrics. Both belong to the process: the connection lives as long as the
// worker does, and they end when the master closes its end.

// MaxConcurrentRequests is how many of the master's requests a worker
// answers at once. The session stops reading while that many handlers run,
// so a master that sends more waits for a reply (back-pressure), and the
// worker's memory does not grow with what the master sends.
const MaxConcurrentRequests = 256

// messageBuffer is the capacity of the [Messages] channel: messages that
// arrived but the program has not taken yet. Past it the session stops
// reading, and the master's sends wait.
const messageBuffer = 256

// startSession starts the session's goroutines on an open connection;
// local is the worker's hello, master the master's.
func (p *process) startSession(conn *ipc.Conn, local, master ipc.Hello) {
	go p.readSession(conn, local, master.Boot)
	if master.HeartbeatMS > 0 {
		go p.heartbeat(conn, time.Duration(master.HeartbeatMS)*time.Millisecond)
	}
}

// readSession reads the master's messages until the connection ends. It is
// the connection's only reader, and the only sender on p.msgs.
func (p *process) readSession(conn *ipc.Conn, local ipc.Hello, boot int64) {
	ctx, cancel := context.WithCancel(context.Background())
	h := newHandlers(func(t task) { t.do(ctx, conn) })
	defer func() {
		// The connection is gone: running handlers have nobody to answer.
		cancel()
		h.end()
		p.closeMessages()
	}()
	for {
		m, err := conn.Recv()
		if err != nil {
			// EOF: the master closed the connection (it is exiting, and
			// Pdeathsig or the stop signal will follow). Anything else is a
			// protocol error; either way there is nothing more to read, and
			// nobody to report it to but the master, which is gone.
			return
		}
		if m.Kind == ipc.KindConn {
			p.handoff.receive(conn, m) // takes the descriptors
			continue
		}
		// No other message this package hands over keeps descriptors
		// (listen replies go to their Call, not here).
		_ = m.CloseFDs()
		switch m.Kind {
		case ipc.KindHello:
			boot = p.masterHello(conn, m, local, boot)
		case ipc.KindDrain:
			var d ipc.Drain
			// A drain with an unreadable body is still a drain, without
			// a deadline.
			if err := m.Decode(&d); err != nil {
				d = ipc.Drain{}
			}
			p.startDrain(d.Deadline)
		case ipc.KindUser:
			// Blocking here is the back-pressure: while the program does
			// not take its messages, the session reads no more, and the
			// master's sends wait in the socket buffers.
			p.msgs <- Message{body: m.Body}
		case ipc.KindJob:
			p.mu.Lock()
			jh := p.jobHandler
			p.mu.Unlock()
			if jh == nil {
				reply(conn, m, nil, &ipc.RemoteError{Code: ipc.CodeUnsupported, Text: "worker: no job handler (worker.HandleJobs)"})
				continue
			}
			h.run(task{m: m, job: jh})
		case ipc.KindRequest:
			p.mu.Lock()
			rh := p.handler
			p.mu.Unlock()
			if rh == nil {
				reply(conn, m, nil, &ipc.RemoteError{Code: ipc.CodeUnsupported, Text: "worker: no request handler (worker.Handle)"})
				continue
			}
			h.run(task{m: m, req: rh})
		}
	}
}

// task is a job or a request the session read, with the handler that
// answers it: a value, so that handing it over allocates nothing.
type task struct {
	m   *ipc.Message
	job JobHandler // for a job
	req Handler    // for a request
}

// do runs the task and answers the master.
func (t task) do(ctx context.Context, conn *ipc.Conn) {
	if t.job != nil {
		runJob(ctx, conn, t.job, t.m)
		return
	}
	v, err := t.req(ctx, Message{body: t.m.Body})
	reply(conn, t.m, v, err)
}

// handlers runs the session's jobs and requests (each a T, run by do), at
// most MaxConcurrentRequests at a time, on goroutines that stay alive
// between them: a goroutine started for each one paid for growing its
// small stack again every time (in the msgpack decoder, a fifth of a
// worker's CPU per job). Only the session's reader calls run.
type handlers[T any] struct {
	do func(T)
	// busy holds a token for each handler that runs or was handed to a
	// goroutine: run waits for a free one (back-pressure on the master).
	busy chan struct{}
	// work hands a task to an idle goroutine; closed by end.
	work chan T
	// started counts the goroutines; they end when work is closed.
	started int
	wg      sync.WaitGroup
}

func newHandlers[T any](do func(T)) *handlers[T] {
	return &handlers[T]{do: do, busy: make(chan struct{}, MaxConcurrentRequests), work: make(chan T)}
}

// run has t run on one of the goroutines, waiting while
// MaxConcurrentRequests handlers run.
func (h *handlers[T]) run(t T) {
	h.busy <- struct{}{}
	select {
	case h.work <- t: // an idle goroutine took it
		return
	default:
	}
	if h.started > 0 {
		// None is idle: perhaps they were handed their tasks and have not
		// run yet. The reader reads what arrived in one go, so without
		// letting them run first a worker started a goroutine for each
		// job outstanding (256 with the master's default JobQueue), and
		// the collector scanned every one of their stacks on each cycle:
		// a quarter of a worker's CPU per 4 KiB job. Handlers that block
		// are still idle after the yield, and get a new goroutine as
		// before.
		runtime.Gosched()
		select {
		case h.work <- t:
			return
		default:
		}
	}
	if h.started < MaxConcurrentRequests {
		h.started++
		h.wg.Add(1)
		go h.loop(t)
		return
	}
	// Every goroutine exists and none is idle yet; one is finishing, since
	// fewer than MaxConcurrentRequests handlers hold a token besides t.
	h.work <- t
}

// loop runs t, then the tasks it is handed, until end. (A receive alone,
// not a select with a second channel to end it: the select was most of
// what a worker spent between two jobs.)
func (h *handlers[T]) loop(t T) {
	defer h.wg.Done()
	for ok := true; ok; t, ok = <-h.work {
		h.do(t)
		<-h.busy
	}
}

// end stops the goroutines once their tasks return, and waits for them;
// run must not be called again.
func (h *handlers[T]) end() {
	close(h.work)
	h.wg.Wait()
}

// masterHello answers a hello the master sends after the handshake; boot
// is the Boot of the master's last hello, and the one of this hello is
// returned. A hello with Pause comes before the master replaces its own
// image under the same pid (an in-place upgrade): the worker answers with
// its hello marked Paused, the last frame it writes, and holds what it
// sends from then on. The next hello, from the new image or from the old
// one that gave up its upgrade, is answered with the worker's hello, and
// the held messages follow; when it comes from a new image (another Boot),
// the requests the old one had read but not answered are sent again.
func (p *process) masterHello(conn *ipc.Conn, m *ipc.Message, local ipc.Hello, boot int64) int64 {
	var h ipc.Hello
	if err := m.Decode(&h); err != nil {
		return boot // not a hello this worker can act on
	}
	if h.Pause {
		paused := local
		paused.Paused = true
		if r, err := ipc.NewMessage(ipc.KindHello, &paused); err == nil {
			_ = conn.Hold(r) // fails only on a dead connection or a second pause
		}
		return boot
	}
	if r, err := ipc.NewMessage(ipc.KindHello, &local); err == nil {
		_ = conn.Resume(r, h.Boot != boot)
	}
	return h.Boot
}

// replyBuffers holds the buffers replies are encoded in, up to
// maxPooledReply bytes each.
var replyBuffers = sync.Pool{New: func() any { return new([]byte) }}

const maxPooledReply = 64 << 10

// reply answers the request req with v, or with err as a [ipc.KindError]. A
// failure to send means the connection is gone: nobody is left to tell.
func reply(conn *ipc.Conn, req *ipc.Message, v any, err error) {
	replyKind(conn, req, ipc.KindResponse, v, err)
}

// replyKind is reply with a reply of kind k when there is no error.
func replyKind(conn *ipc.Conn, req *ipc.Message, k ipc.Kind, v any, err error) {
	if err == nil {
		// Encoded into a pooled buffer: Send copies the body into the
		// connection's own before it returns.
		buf := replyBuffers.Get().(*[]byte)
		var body []byte
		if body, err = ipc.AppendEncode((*buf)[:0], v); err == nil {
			_ = conn.Send(&ipc.Message{Kind: k, ReplyTo: req.ID, Body: body})
		}
		if cap(body) <= maxPooledReply {
			*buf = body[:0]
			replyBuffers.Put(buf)
		}
		if err == nil {
			return
		}
		err = fmt.Errorf("worker: encode reply: %w", err)
	}
	e := ipc.Error{Code: ipc.CodeInternal, Text: err.Error()}
	if re, ok := errors.AsType[*ipc.RemoteError](err); ok {
		e = ipc.Error{Code: re.Code, Text: re.Text}
	}
	r, _ := req.Reply(ipc.KindError, e) // an Error body always encodes
	_ = conn.Send(r)
}

// heartbeat sends a heartbeat every interval, preceded by the program's
// metrics when it has any, until the connection ends.
func (p *process) heartbeat(conn *ipc.Conn, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	var seq uint64
	for {
		seq++
		// The stats go first, so that a master that sees heartbeat n has the
		// values as of n.
		if counters := p.metrics.snapshot(); len(counters) > 0 {
			m, err := ipc.NewMessage(ipc.KindStats, ipc.Stats{Counters: counters})
			if err == nil {
				err = conn.Send(m)
			}
			if err != nil {
				return // the connection is gone
			}
		}
		m, err := ipc.NewMessage(ipc.KindHeartbeat, ipc.Heartbeat{Seq: seq})
		if err == nil {
			err = conn.Send(m)
		}
		if err != nil {
			return
		}
		select {
		case <-t.C:
		case <-conn.Done():
			return
		}
	}
}

// closeMessages closes the Messages channel once.
func (p *process) closeMessages() {
	p.msgsClosed.Do(func() { close(p.msgs) })
}
