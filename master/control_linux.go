package master

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/clusterd/clusterd/ipc"
	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

// controlFrameSize bounds the frames of a control connection: a hello and
// a request are small, the status of a few thousand workers is not.
const controlFrameSize = 4 << 20

// maxControlConns bounds the connections served at a time (each has a
// goroutine and buffers); more are closed at once, and logged.
const maxControlConns = 64

// controlHandshakeTimeout bounds how long a client may take to say hello.
const controlHandshakeTimeout = 10 * time.Second

// controlCloseGrace bounds how long the server, when it closes, waits for
// clients to read their last answer.
const controlCloseGrace = 5 * time.Second

// controlServer serves the control socket. It owns the listener and one
// goroutine per connection; close stops them all and removes the socket.
type controlServer struct {
	m       *Master
	log     hclog.Logger
	path    string
	ln      *net.UnixListener
	started time.Time
	uid     int
	ctx     context.Context // canceled by close: ends follows and waits
	cancel  context.CancelFunc
	wg      sync.WaitGroup

	mu    sync.Mutex
	conns map[*net.UnixConn]struct{}
	cpu   map[int]cpuSample // the previous sample of each pid, for CPU%
}

type cpuSample struct {
	at    time.Time
	ticks uint64
}

// listenControl creates the control socket at path: its directory made
// with mode 0700 if missing (0711 for /run/clusterd), the socket with mode
// 0600. A stale socket
// (nobody listening) is replaced; a live one is an error, since another
// master serves it.
//
// inherited, when not nil, is the listening socket of the previous image of
// this master (an in-place upgrade): it is served as it is, and clients
// that connected during the exec wait in its queue.
func listenControl(m *Master, path string, log hclog.Logger, inherited *os.File) (*controlServer, error) {
	if inherited != nil {
		l, err := net.FileListener(inherited)
		inherited.Close() // FileListener made its own copy
		if err != nil {
			return nil, fmt.Errorf("control socket %s of the previous image: %w", path, err)
		}
		ln, ok := l.(*net.UnixListener)
		if !ok {
			l.Close()
			return nil, fmt.Errorf("control socket %s of the previous image: not a unix socket", path)
		}
		ln.SetUnlinkOnClose(true)
		return serveControl(m, path, log, ln), nil
	}
	dir := filepath.Dir(path)
	mode := os.FileMode(0o700)
	if dir == rootControlDir {
		// Shared with the notify directories of workers that run as
		// another user: they must pass through it (not list it). The
		// sockets' own mode and SO_PEERCRED keep others out.
		mode = 0o711
	}
	if err := os.MkdirAll(dir, mode); err != nil {
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("control socket %s: exists and is not a socket", path)
		}
		c, err := net.DialTimeout("unix", path, time.Second)
		if err == nil {
			c.Close()
			return nil, fmt.Errorf("control socket %s: another master is serving it (pick another --name or --control)", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("control socket %s: remove stale socket: %w", path, err)
		}
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	ln.SetUnlinkOnClose(true)
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	return serveControl(m, path, log, ln), nil
}

// serveControl starts answering on ln.
func serveControl(m *Master, path string, log hclog.Logger, ln *net.UnixListener) *controlServer {
	ctx, cancel := context.WithCancel(context.Background())
	s := &controlServer{
		m: m, log: log, path: path, ln: ln, started: m.started, uid: os.Getuid(),
		ctx: ctx, cancel: cancel,
		conns: make(map[*net.UnixConn]struct{}), cpu: make(map[int]cpuSample),
	}
	s.wg.Add(1)
	go s.accept()
	log.Info("control socket listening", "path", path)
	return s
}

// close stops accepting, ends every connection, waits for their goroutines
// and removes the socket file.
func (s *controlServer) close() error {
	s.cancel() // ends log follows and requests still being read; first, so accept knows its error is the close
	err := s.ln.Close()
	// The handlers answer what they were doing (a stop is answered now,
	// once the loop has ended); a client that does not read its answer
	// has its connection closed after a grace period.
	handled := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(handled)
	}()
	t := time.NewTimer(controlCloseGrace)
	defer t.Stop()
	select {
	case <-handled:
	case <-t.C:
		s.mu.Lock()
		for c := range s.conns {
			// shutdown(2), not close: conn holds a dup of the socket.
			_ = c.CloseRead() // ends a blocked write; the handler reports nothing more
			_ = c.CloseWrite()
		}
		s.mu.Unlock()
		<-handled
	}
	if err != nil {
		return fmt.Errorf("control socket %s: %w", s.path, err)
	}
	return nil
}

func (s *controlServer) accept() {
	defer s.wg.Done()
	var backoff time.Duration
	for {
		c, err := s.ln.AcceptUnix()
		if err != nil {
			if s.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of fds, say: try again, as net/http's Serve does, with
			// a backoff from 5ms to 1s.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.log.Error("control socket accept", "error", err, "backoff", backoff.String())
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-s.ctx.Done():
				t.Stop()
				return
			}
			continue
		}
		backoff = 0
		s.mu.Lock()
		full := len(s.conns) >= maxControlConns
		if !full {
			s.conns[c] = struct{}{}
		}
		s.mu.Unlock()
		if full {
			s.log.Warn("control connection refused: too many connections", "limit", maxControlConns)
			c.Close()
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer func() {
				s.mu.Lock()
				delete(s.conns, c)
				s.mu.Unlock()
			}()
			s.serve(c)
		}()
	}
}

// peerCred returns the pid and uid of the process at the other end of c.
func peerCred(c *net.UnixConn) (*unix.Ucred, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, err
	}
	if cerr != nil {
		return nil, os.NewSyscallError("getsockopt SO_PEERCRED", cerr)
	}
	return cred, nil
}

// serve answers one connection: hello, one request, its answer.
func (s *controlServer) serve(uc *net.UnixConn) {
	cred, err := peerCred(uc)
	if err != nil {
		s.log.Warn("control connection refused", "error", err)
		uc.Close()
		return
	}
	allowed := cred.Uid == 0 || int(cred.Uid) == s.uid
	if !allowed {
		// Logged at once, whatever the peer does next; it is answered
		// after the hellos, so that its client can say why.
		s.log.Warn("control connection refused", "pid", cred.Pid, "uid", cred.Uid, "master_uid", s.uid)
	}
	f, err := uc.File() // a dup; uc stays in conns so close can end it
	if err != nil {
		s.log.Warn("control connection", "pid", cred.Pid, "uid", cred.Uid, "error", err)
		uc.Close()
		return
	}
	defer uc.Close()
	conn, err := ipc.NewConn(f, ipc.Options{MaxFrameSize: controlFrameSize, MaxFDs: 1})
	if err != nil {
		s.log.Warn("control connection", "pid", cred.Pid, "uid", cred.Uid, "error", err)
		return
	}
	defer conn.Close()
	// uc stays open beside conn's dup of it, for the shutdown(2) of the
	// server's grace-period close.

	hctx, cancel := context.WithTimeout(s.ctx, controlHandshakeTimeout)
	_, err = conn.Handshake(hctx, ipc.Hello{PID: os.Getpid(), WorkerID: -1})
	cancel()
	if err != nil {
		s.log.Debug("control handshake", "pid", cred.Pid, "uid", cred.Uid, "error", err)
		return
	}
	// The request follows the hello at once; a server that closes does
	// not wait for it.
	stop := context.AfterFunc(s.ctx, func() { conn.Close() })
	var msg *ipc.Message
	if allowed {
		msg, err = conn.Recv()
	} else {
		// A refused client is answered only once its request is in: an
		// answer sent (and the connection closed) before the client wrote
		// its request would meet that write with EPIPE, and the client
		// would see a broken pipe instead of the refusal. The wait is
		// bounded as the hello's was.
		late := time.AfterFunc(controlHandshakeTimeout, func() { conn.Close() })
		msg, err = conn.Recv()
		late.Stop()
	}
	if !stop() || err != nil {
		return
	}
	_ = msg.CloseFDs() // no request carries descriptors
	if !allowed {
		s.fail(conn, msg.ID, ipc.CodeForbidden, fmt.Sprintf("uid %d may not control this cluster (only root and uid %d)", cred.Uid, s.uid))
		return
	}
	if msg.Kind != ipc.KindRequest {
		s.fail(conn, msg.ID, ipc.CodeBadRequest, fmt.Sprintf("want a request, got %s", msg.Kind))
		return
	}
	var req ControlRequest
	if err := msg.Decode(&req); err != nil {
		s.fail(conn, msg.ID, ipc.CodeBadRequest, err.Error())
		return
	}
	s.log.Debug("control request", "op", req.Op, "pid", cred.Pid, "uid", cred.Uid)
	x := &exchange{s: s, conn: conn, id: msg.ID}
	body, code, err := s.handle(x, req)
	if err != nil {
		s.fail(conn, msg.ID, code, err.Error())
		return
	}
	x.answer(body)
}

// exchange is one request's connection, for streaming and answering.
type exchange struct {
	s    *controlServer
	conn *ipc.Conn
	id   uint64
}

// progress streams one ControlProgress; false when the client is gone.
func (x *exchange) progress(p ControlProgress) bool {
	m, err := ipc.NewMessage(ipc.KindUser, &p)
	if err != nil {
		return false
	}
	m.ReplyTo = x.id
	return x.conn.Send(m) == nil
}

func (x *exchange) answer(body any) {
	m, err := ipc.NewMessage(ipc.KindResponse, body)
	if err != nil {
		x.s.fail(x.conn, x.id, ipc.CodeInternal, err.Error())
		return
	}
	m.ReplyTo = x.id
	x.s.send(x.conn, m)
}

func (s *controlServer) fail(conn *ipc.Conn, id uint64, code, text string) {
	m, err := ipc.NewMessage(ipc.KindError, &ipc.Error{Code: code, Text: text})
	if err != nil {
		return
	}
	m.ReplyTo = id
	s.send(conn, m)
}

// send sends the last message of a connection and waits, boundedly, until
// it is written.
func (s *controlServer) send(conn *ipc.Conn, m *ipc.Message) {
	if conn.Send(m) != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), controlCloseGrace)
	defer cancel()
	_ = conn.Flush(ctx) // a client that does not read loses its answer
}

// handle runs one request; on failure it returns the error code and error.
func (s *controlServer) handle(x *exchange, req ControlRequest) (any, string, error) {
	switch req.Op {
	case ControlStatus:
		return s.status(), "", nil
	case ControlReload:
		return s.reload(x, req.Wait)
	case ControlScale:
		c := &scaleCmd{n: req.N}
		if req.Relative {
			if req.N == 0 {
				return nil, ipc.CodeBadRequest, errors.New("scale by 0")
			}
			c = &scaleCmd{delta: req.N}
		} else if req.N < 1 {
			return nil, ipc.CodeBadRequest, fmt.Errorf("scale to %d: want at least 1 worker", req.N)
		}
		n, err := s.m.scale(s.ctx, c)
		if err != nil {
			return nil, commandCode(err), err
		}
		return &ControlScaleReply{Workers: n}, "", nil
	case ControlStop:
		return s.stop(time.Duration(req.TimeoutMS) * time.Millisecond)
	case ControlSignal:
		return s.signal(req)
	case ControlLogs:
		s.logs(x, req)
		return &struct{}{}, "", nil // with Follow: the master is stopping
	case ControlUpgrade:
		return s.upgrade(req.Wait)
	}
	return nil, ipc.CodeBadRequest, fmt.Errorf("unknown control operation %q", req.Op)
}

// upgrade runs an in-place upgrade. With wait, success is the exec, which
// ends the connection; without it, the answer comes once the loop took
// the request and the outcome is logged.
func (s *controlServer) upgrade(wait bool) (any, string, error) {
	if !wait {
		if err := s.m.do(s.ctx, &upgradeCmd{}); err != nil {
			return nil, commandCode(err), err
		}
		return &struct{}{}, "", nil
	}
	err := s.m.Upgrade(s.ctx)
	switch {
	case errors.Is(err, ErrUpgradeInProgress):
		return nil, CodeUpgradeInProgress, err
	case errors.Is(err, ErrNotRunning), errors.Is(err, ErrStopping):
		return nil, CodeStopping, err
	}
	return nil, CodeUpgradeFailed, fmt.Errorf("%w; the old binary keeps serving", err)
}

// commandCode is the control error code of a command method's error.
func commandCode(err error) string {
	var re *ReloadError
	switch {
	case errors.Is(err, ErrReloadInProgress):
		return CodeReloadInProgress
	case errors.Is(err, ErrStopping), errors.Is(err, ErrNotRunning):
		return CodeStopping
	case errors.Is(err, ErrNoWorker):
		return CodeNoWorker
	case errors.As(err, &re):
		return CodeReloadAborted
	}
	return ipc.CodeInternal
}

func (s *controlServer) status() *ControlStatusReply {
	r := &ControlStatusReply{
		PID: os.Getpid(), Started: s.started, Version: s.m.cfg.Version, Upgrades: s.m.upgrades,
		Name:    strings.TrimSuffix(filepath.Base(s.path), ".sock"),
		Workers: []ControlWorker{},
	}
	if exe, err := os.Readlink("/proc/self/exe"); err == nil {
		r.Exe = exe
	}
	for _, a := range s.m.Addrs() {
		r.Listeners = append(r.Listeners, a.Network()+"://"+a.String())
	}
	workers := s.m.Workers()
	now := time.Now()
	s.mu.Lock() // for s.cpu; not held while the loop answers
	defer s.mu.Unlock()
	seen := make(map[int]bool)
	for _, w := range workers {
		cw := ControlWorker{
			Slot: w.Slot, PID: w.PID, State: string(w.State), Generation: w.Generation,
			Replacing: w.Replacing, Online: w.Online, Started: w.Started, Ready: w.Ready,
			Restarts: w.Restarts, LastExit: w.LastExit, LastCause: w.LastCause, RSS: -1, CPU: -1,
		}
		seen[w.PID] = true
		if rss, err := readRSS(w.PID); err == nil {
			cw.RSS = rss
		}
		if ticks, err := readCPUTicks(w.PID); err == nil {
			prev, ok := s.cpu[w.PID]
			if !ok {
				prev = cpuSample{at: w.Started}
			}
			if dt := now.Sub(prev.at).Seconds(); dt > 0 && ticks >= prev.ticks {
				cw.CPU = float64(ticks-prev.ticks) / clockTicks / dt * 100
			}
			s.cpu[w.PID] = cpuSample{at: now, ticks: ticks}
		}
		r.Workers = append(r.Workers, cw)
	}
	for pid := range s.cpu {
		if !seen[pid] {
			delete(s.cpu, pid)
		}
	}
	return r
}

// clockTicks is USER_HZ, the unit of the CPU times in /proc/PID/stat:
// 100 on every Linux architecture (proc(5), sysconf(_SC_CLK_TCK)).
const clockTicks = 100

// readRSS returns a process's resident set in bytes (/proc/PID/statm).
func readRSS(pid int) (int64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/statm")
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0, fmt.Errorf("/proc/%d/statm: %d fields", pid, len(f))
	}
	pages, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("/proc/%d/statm: %w", pid, err)
	}
	return pages * int64(os.Getpagesize()), nil
}

// readCPUTicks returns a process's user plus system time in clock ticks
// (/proc/PID/stat fields 14 and 15, counted after the command in parens,
// which may hold spaces and parens itself).
func readCPUTicks(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state): utime is field 14, stime 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f)+2)
	}
	u, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return u + st, nil
}

// reload starts a reload; with wait it streams the workers' events while
// the reload runs and answers with its result.
func (s *controlServer) reload(x *exchange, wait bool) (any, string, error) {
	var sub *Subscription
	if wait {
		sub = s.m.Subscribe(0)
		defer sub.Close()
	}
	c, err := s.m.startReload(s.ctx)
	if err != nil {
		return nil, commandCode(err), err
	}
	select {
	case <-c.applied:
	case <-s.m.loopEnded:
		return nil, CodeStopping, ErrNotRunning
	}
	if !wait {
		select {
		case r := <-c.reply:
			if r.err != nil {
				return nil, commandCode(r.err), r.err
			}
			return controlReloadReply(r.res), "", nil
		default:
			return &ControlReloadReply{}, "", nil // begun; it goes on without us
		}
	}
	type result struct {
		res ReloadResult
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := s.m.awaitReload(context.Background(), c)
		done <- result{res, err}
	}()
	for {
		select {
		case r := <-done:
			// Events the loop published before the result are buffered:
			// stream them first, so the progress is complete.
		drain:
			for {
				select {
				case e, ok := <-sub.C:
					if !ok {
						break drain
					}
					if e.Kind != EventReload {
						x.progress(ControlProgress{Text: progressText(e)})
					}
				default:
					break drain
				}
			}
			if r.err != nil {
				if errors.As(r.err, new(*ReloadError)) {
					// The client gets the per-slot result in the text.
					return nil, CodeReloadAborted, fmt.Errorf("%w; the old workers keep serving", r.err)
				}
				return nil, commandCode(r.err), r.err
			}
			return controlReloadReply(r.res), "", nil
		case e, ok := <-sub.C:
			if !ok {
				continue // the master ended; done follows
			}
			if e.Kind != EventReload {
				x.progress(ControlProgress{Text: progressText(e)})
			}
		}
	}
}

// progressText describes an event of a reload for `clusterd reload --wait`.
func progressText(e Event) string {
	w := fmt.Sprintf("worker %d pid %d (generation %d)", e.Slot, e.PID, e.Generation)
	switch e.Kind {
	case EventFork:
		return w + " started"
	case EventReady:
		return w + " ready"
	case EventExit:
		var how string
		if e.Signal != 0 {
			how = "killed by " + signalName(e.Signal)
		} else {
			how = fmt.Sprintf("exited with code %d", e.ExitCode)
		}
		if e.Reason != "" {
			how += " (" + e.Reason + ")"
		}
		return w + " " + how
	}
	return w + " " + e.Kind.String()
}

// stop stops the cluster and answers once the loop has ended (every
// worker reaped). After timeout (0: the kill timeout's own escalation) the
// workers are killed.
func (s *controlServer) stop(timeout time.Duration) (any, string, error) {
	if err := s.m.do(s.ctx, &stopCmd{why: "control socket"}); err != nil {
		return nil, CodeStopping, err
	}
	var deadline <-chan time.Time
	if timeout > 0 {
		t := time.NewTimer(timeout)
		defer t.Stop()
		deadline = t.C
	}
	select {
	case <-s.m.loopEnded:
		return &struct{}{}, "", nil
	case <-deadline:
		_ = s.m.do(context.Background(), &stopCmd{force: true, why: "stop timeout"}) // the loop may just have ended
	}
	<-s.m.loopEnded
	return &struct{}{}, "", nil
}

func (s *controlServer) signal(req ControlRequest) (any, string, error) {
	sig := syscall.Signal(req.Signal)
	if req.Slot >= 0 {
		if err := s.m.Signal(req.Slot, sig); err != nil {
			return nil, commandCode(err), err
		}
		return &ControlSignalReply{Slots: []int{req.Slot}}, "", nil
	}
	r := &ControlSignalReply{Slots: []int{}}
	for _, w := range s.m.Workers() {
		if w.Replacing {
			continue // Signal reaches the slot's serving worker
		}
		if err := s.m.Signal(w.Slot, sig); err != nil {
			if errors.Is(err, ErrNoWorker) {
				continue // it exited meanwhile
			}
			return nil, commandCode(err), err
		}
		r.Slots = append(r.Slots, w.Slot)
	}
	if len(r.Slots) == 0 {
		return nil, CodeNoWorker, fmt.Errorf("signal: %w running", ErrNoWorker)
	}
	return r, "", nil
}

// logs streams the kept lines of a slot (or all), then, with Follow, the
// new ones until the client or the server goes.
func (s *controlServer) logs(x *exchange, req ControlRequest) {
	ring := s.m.logs
	if !req.Follow {
		for _, l := range ring.lines(req.Slot) {
			if !x.progress(ControlProgress{Log: &l}) {
				return
			}
		}
		return
	}
	lines, f := ring.snapshotAndFollow(req.Slot)
	defer ring.unfollow(f)
	for _, l := range lines {
		if !x.progress(ControlProgress{Log: &l}) {
			return
		}
	}
	var reported uint64
	for {
		select {
		case l := <-f.c:
			p := ControlProgress{Log: &l}
			if d := f.dropped.Load(); d != reported {
				p.Dropped, reported = d-reported, d
			}
			if !x.progress(p) {
				return
			}
		case <-x.conn.Done():
			return
		case <-s.ctx.Done():
			return
		}
	}
}
