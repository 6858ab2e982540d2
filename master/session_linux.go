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
	"github.com/clusterd/clusterd/sockshare"
	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

// The master's IPC session with one worker: the hello (an online event for
// the loop), then the worker's messages: ready, heartbeats and stats become
// loop events, listen requests become loop commands, user messages and
// requests go to Options.OnMessage and Options.HandleRequest from here,
// without passing through the loop.

// execProcess is a real worker process.
type execProcess struct {
	pid    int
	conn   *ipc.Conn     // nil without IPC
	notify *notifySocket // nil without NOTIFY_SOCKET
	done   chan struct{} // closed by release: ends the notify reader
	once   sync.Once
	out    *outputs
	// streams are its stdout and stderr pipes (nil entries: not relayed),
	// outR and errR their read ends (-1: none), for an upgrade.
	streams    []*stream
	outR, errR int
	// pausedAck gets a value when the worker answers an upgrade's pause.
	pausedAck chan struct{}
	// said is set once the worker's hello arrived. The loop learns it from
	// evOnline; the listening probe reads it only to stop probing a worker
	// that will report its readiness over IPC.
	said atomic.Bool
}

var _ process = (*execProcess)(nil)

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
		// Children that left the worker's process group may still hold
		// the pipes' write ends: stop waiting for their EOF.
		p.out.retire(p.streams...)
		if c := p.conn; c != nil {
			// The worker was reaped, but what it sent last may still be
			// unread: connections it gave back (balanced modes) and answers
			// to jobs. The session reads to the end of the stream, which
			// the kernel closed with the process; the close after a grace
			// unblocks it should a descendant still hold the worker's end.
			time.AfterFunc(releaseGrace, func() { c.Close() })
		}
		if p.notify != nil {
			p.notify.close() // unblocks its reader and removes the file
		}
	})
}

// releaseGrace is how long the session of a reaped worker may go on
// reading what the worker sent before it died.
const releaseGrace = 500 * time.Millisecond

// drain sends an ipc drain message. The loop calls it only for a worker
// that said hello (best effort: the stop signal is sent as well).
func (p *execProcess) drain(timeout time.Duration) {
	if p.conn == nil {
		return
	}
	m, err := ipc.NewMessage(ipc.KindDrain, ipc.Drain{Deadline: time.Now().Add(timeout)})
	if err != nil {
		return
	}
	_ = p.conn.Send(m)
}

var errNoIPC = errors.New("worker has no ipc connection")

func (p *execProcess) send(m *ipc.Message) error {
	if p.conn == nil {
		return errNoIPC
	}
	return p.conn.Send(m)
}

func (p *execProcess) call(ctx context.Context, m *ipc.Message) (*ipc.Message, error) {
	if p.conn == nil {
		return nil, errNoIPC
	}
	return p.conn.Call(ctx, m)
}

// session is the master's side of one worker's IPC connection.
type session struct {
	st   *execStarter
	p    *execProcess
	from WorkerRef
	log  hclog.Logger

	ctx      context.Context // ends with the connection
	cancel   context.CancelFunc
	handlers sync.WaitGroup // running HandleRequest calls
	slots    chan struct{}  // one token per running request
	target   *target        // balanced modes: the worker as a taker of connections
	jobs     *jobTarget     // the worker as a taker of jobs
}

// serveIPC runs the session: the hello, then the worker's messages until
// the connection closes (the worker closed it, broke the protocol, or
// exited and release closed the master's end).
func (st *execStarter) serveIPC(p *execProcess, req spawnRequest) {
	defer st.ipcWG.Done()
	ctx, cancel := context.WithCancel(context.Background())
	s := &session{
		st: st, p: p, ctx: ctx, cancel: cancel,
		from:  WorkerRef{Slot: req.slot, PID: p.pid, Generation: req.gen},
		log:   st.log.With("worker", req.slot, "pid", p.pid, "generation", req.gen),
		slots: make(chan struct{}, st.cfg.MaxRequests),
	}
	defer func() {
		cancel()
		s.handlers.Wait()
		if st.ipc != nil {
			st.ipc.end(p.conn)
		}
	}()
	peer, err := p.conn.Handshake(context.Background(), st.masterHello())
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
	s.log.Debug("ipc hello", "version", peer.Version)
	p.said.Store(true)
	if st.balance != nil {
		s.target = st.balance.newTarget(req.slot, p.pid, p.conn)
		s.target.counts = st.slots.slot(req.slot)
		// Once the session is over, connections the worker did not
		// acknowledge go to the others (its duplicates died with it).
		defer s.target.retire()
	}
	s.jobs = st.dispatcher.newTarget(s.from, p.conn)
	s.jobs.counts = st.slots.slot(req.slot)
	defer s.jobs.retire() // its outstanding jobs go to other workers
	st.post(workerEvent{pid: p.pid, kind: evOnline, target: s.target, jobTarget: s.jobs})
	err = s.serve()
	if quietIPCError(err) {
		err = nil
	} else {
		st.post(workerEvent{pid: p.pid, kind: evProtocol, err: err})
	}
	st.post(workerEvent{pid: p.pid, kind: evDisconnect, err: err})
}

// masterHello is the master's hello to its workers.
func (st *execStarter) masterHello() ipc.Hello {
	return ipc.Hello{
		Version: ipc.Version, PID: os.Getpid(), WorkerID: -1,
		HeartbeatMS: st.cfg.HeartbeatInterval.Milliseconds(), Boot: st.boot,
		Listeners: st.announced,
	}
}

// serve reads messages until the connection fails, and returns why.
func (s *session) serve() error {
	lim := newIPCLimiter(s.log, s.p.done, s.st.cfg.IPCMessageRate, s.st.cfg.IPCFDRate)
	paced := true
	for {
		m, err := s.p.conn.Recv()
		if err != nil {
			return err
		}
		if paced && !answersJob(m) && !lim.admit(len(m.FDs)) {
			// Released while paced: the worker is gone, and what is left
			// to read is what it sent before it died (the stream ended with
			// the process). It is read at once, to its end: connections it
			// gave back must reach another worker, not be dropped.
			paced = false
		}
		if err := s.handle(m); err != nil {
			return err
		}
	}
}

// answersJob reports whether m answers a job the master sent. Those are not
// paced: the master bounds them already (a worker answers only the jobs it
// was given, at most Options.MaxJobs at a time), and pacing them would
// bound Dispatch at IPCMessageRate jobs a second per worker.
func answersJob(m *ipc.Message) bool {
	return (m.Kind == ipc.KindResult || m.Kind == ipc.KindError) && m.ReplyTo&jobIDBit != 0 && len(m.FDs) == 0
}

// handle acts on one message; an error is a protocol error that ends the
// session.
func (s *session) handle(m *ipc.Message) error {
	switch m.Kind {
	case ipc.KindHello:
		// After the handshake, a worker says hello only to answer the
		// master's: Paused for an upgrade's pause, or after a resume.
		_ = m.CloseFDs()
		var h ipc.Hello
		if err := m.Decode(&h); err != nil {
			return err
		}
		if h.Paused {
			select {
			case s.p.pausedAck <- struct{}{}:
			default:
			}
		}
	case ipc.KindReady:
		_ = m.CloseFDs()
		s.st.post(workerEvent{pid: s.p.pid, kind: evReady, source: ReadyIPC})
	case ipc.KindHeartbeat:
		_ = m.CloseFDs()
		now := time.Now().UnixNano()
		if s.target != nil {
			s.target.beat.Store(now)
		}
		s.jobs.beat.Store(now)
		s.st.post(workerEvent{pid: s.p.pid, kind: evHeartbeat})
	case ipc.KindConn:
		return s.conns(m)
	case ipc.KindResult, ipc.KindError:
		_ = m.CloseFDs()
		if m.ReplyTo&jobIDBit != 0 {
			s.jobs.answer(m.ReplyTo, m)
		} else if s.log.IsTrace() {
			s.log.Trace("ipc message ignored", "kind", m.Kind.String())
		}
	case ipc.KindJob:
		_ = m.CloseFDs()
		return s.submit(m)
	case ipc.KindStats:
		_ = m.CloseFDs()
		var st ipc.Stats
		if err := m.Decode(&st); err != nil {
			return err
		}
		s.st.post(workerEvent{pid: s.p.pid, kind: evStats, stats: st.Counters})
	case ipc.KindUser:
		if h := s.st.cfg.OnMessage; h != nil {
			h(s.from, m)
		} else if s.log.IsTrace() {
			s.log.Trace("ipc message dropped: no OnMessage", "kind", m.Kind.String())
		}
		_ = m.CloseFDs()
	case ipc.KindRequest:
		return s.request(m)
	case ipc.KindListenRequest:
		_ = m.CloseFDs()
		return s.listen(m)
	default:
		// Late replies to calls that gave up, and kinds the master does
		// not read from workers.
		_ = m.CloseFDs()
		if s.log.IsTrace() {
			s.log.Trace("ipc message ignored", "kind", m.Kind.String())
		}
	}
	return nil
}

// request runs HandleRequest for m on a goroutine of its own, waiting for a
// free slot first (so a worker's requests cannot pile up goroutines).
func (s *session) request(m *ipc.Message) error {
	h := s.st.cfg.HandleRequest
	if h == nil {
		_ = m.CloseFDs()
		return s.replyError(m, ipc.CodeUnsupported, "the master handles no requests")
	}
	select {
	case s.slots <- struct{}{}:
	case <-s.p.conn.Done():
		_ = m.CloseFDs()
		return s.p.conn.Err()
	}
	s.handlers.Add(1)
	go func() {
		defer s.handlers.Done()
		defer func() { <-s.slots }()
		defer m.CloseFDs() // the handler's to read while it runs
		reply, err := h(s.ctx, s.from, m)
		if err != nil {
			code := ipc.CodeInternal
			var re *ipc.RemoteError
			if errors.As(err, &re) && re.Code != "" {
				code = re.Code
			}
			_ = s.replyError(m, code, err.Error()) // a failed send means the worker is gone
			return
		}
		r, err := m.Reply(ipc.KindResponse, reply)
		if err != nil {
			_ = s.replyError(m, ipc.CodeInternal, "encode reply: "+err.Error())
			return
		}
		_ = s.p.conn.Send(r)
	}()
	return nil
}

// submit has another worker do a job this worker submitted (worker.Submit),
// on a goroutine of its own after a free request slot, and answers with
// the result.
func (s *session) submit(m *ipc.Message) error {
	var job ipc.Job
	if err := m.Decode(&job); err != nil {
		return s.replyError(m, ipc.CodeBadRequest, err.Error())
	}
	select {
	case s.slots <- struct{}{}:
	case <-s.p.conn.Done():
		return s.p.conn.Err()
	}
	s.handlers.Add(1)
	go func() {
		defer s.handlers.Done()
		defer func() { <-s.slots }()
		res, err := s.st.dispatch(s.ctx, job.Body, s.jobs)
		if err != nil {
			code := ipc.CodeInternal
			var re *ipc.RemoteError
			switch {
			case errors.As(err, &re) && re.Code != "":
				code = re.Code
			case errors.Is(err, ErrJobQueueFull):
				code = ipc.CodeLimit
			case errors.Is(err, ErrJobOrphaned):
				code = ipc.CodeGone
			}
			_ = s.replyError(m, code, err.Error()) // a failed send means the worker is gone
			return
		}
		_ = s.p.conn.Send(&ipc.Message{Kind: ipc.KindResult, ReplyTo: m.ID, Body: res.Body})
	}()
	return nil
}

func (s *session) replyError(m *ipc.Message, code, text string) error {
	r, err := m.Reply(ipc.KindError, ipc.Error{Code: code, Text: text})
	if err != nil {
		return err
	}
	err = s.p.conn.Send(r)
	if quietIPCError(err) {
		return nil // the worker is gone; the reader will see it
	}
	return err
}

// listen answers a worker's listen request with the socket, asking the
// loop for it.
func (s *session) listen(m *ipc.Message) error {
	var req ipc.ListenRequest
	if err := m.Decode(&req); err != nil {
		return s.replyError(m, ipc.CodeBadRequest, err.Error())
	}
	spec, err := sockshare.ParseSpec(req.Addr)
	if err != nil {
		return s.replyError(m, ipc.CodeBadRequest, err.Error())
	}
	c := &listenCmd{pid: s.p.pid, spec: spec, reply: make(chan listenReply, 1)}
	select {
	case s.st.cmds <- c:
	case <-s.st.done:
		return s.replyError(m, ipc.CodeGone, "the master is stopping")
	}
	var r listenReply
	select {
	case r = <-c.reply:
	case <-s.st.done:
		return s.replyError(m, ipc.CodeGone, "the master is stopping")
	}
	if r.err != nil {
		var le *listenError
		if errors.As(r.err, &le) && le.code == "" {
			return r.err // a protocol error: the session ends, the loop kills the worker
		}
		code := ipc.CodeInternal
		if le != nil {
			code = le.code
		}
		s.log.Debug("listen request refused", "addr", req.Addr, "error", r.err)
		return s.replyError(m, code, r.err.Error())
	}
	addr := r.addr
	body := ipc.ListenReply{Addr: addr}
	if r.balanced {
		body.Balanced, body.ID = true, int(r.id)
	}
	reply, err := m.Reply(ipc.KindListenReply, body)
	if err != nil {
		return err
	}
	if !r.balanced {
		reply.FDs = []*os.File{r.f} // Send sends a duplicate; the master keeps its own
	}
	s.log.Debug("listener handed out", "addr", addr, "balanced", r.balanced)
	err = s.p.conn.Send(reply)
	if err == nil && r.balanced && s.target != nil {
		// From now on the worker gets this listener's connections; the
		// reply goes first on the stream.
		s.target.listens.Or(1 << r.id)
		s.st.balance.kick()
	}
	if quietIPCError(err) {
		return nil
	}
	return err
}

// conns reads a worker's KindConn: without descriptors a report of its
// running totals, with descriptors connections it gives back, which go to
// the other workers.
func (s *session) conns(m *ipc.Message) error {
	if s.target == nil {
		_ = m.CloseFDs()
		return fmt.Errorf("%w: conn message from a worker while connections are not balanced", ipc.ErrProtocol)
	}
	if len(m.FDs) == 0 {
		var r ipc.ConnReport
		if err := m.Decode(&r); err != nil {
			return err
		}
		s.target.report(r)
		return nil
	}
	var lid int
	if err := m.Decode(&lid); err != nil || lid < 0 || lid >= maxBalanced {
		_ = m.CloseFDs()
		return fmt.Errorf("%w: connections given back with listener id %v", ipc.ErrProtocol, m.Body)
	}
	for i, f := range m.FDs {
		fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
		_ = f.Close() // the duplicate (or nothing, on error) is what is kept
		m.FDs[i] = nil
		if err != nil {
			s.log.Warn("connection given back lost", "error", os.NewSyscallError("fcntl", err))
			continue
		}
		s.st.balance.route(uint8(lid), fd, s.target)
	}
	m.FDs = nil
	return nil
}

// quietIPCError reports errors that only mean the connection ended.
func quietIPCError(err error) bool {
	return err == nil || errors.Is(err, io.EOF) || errors.Is(err, ipc.ErrClosed) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, os.ErrClosed) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// post hands an event to the loop; false once the loop has ended.
func (st *execStarter) post(e workerEvent) bool {
	if e.kind == evProtocol && st.ipc != nil {
		st.ipc.protocolError()
	}
	select {
	case st.events <- e:
		return true
	case <-st.done:
		return false
	}
}
