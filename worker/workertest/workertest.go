package workertest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/clusterd/clusterd/ipc"
	"github.com/clusterd/clusterd/sockshare"
)

// Options configure [Start].
type Options struct {
	// Command is the worker program and its arguments; required.
	Command []string
	// Env holds KEY=VALUE pairs added to the test process's environment
	// for the worker (after the protocol variables are removed from it).
	Env []string
	// Listen are the addresses to bind, in sockshare.ParseSpec syntax; the
	// worker gets them at fds 3, 4, … Nil means one "tcp://127.0.0.1:0"; an
	// empty slice none (for a worker that asks with worker.Listen).
	Listen []string
	// WorkerID is the worker's slot (CLUSTERD_WORKER_ID); zero is slot 0.
	WorkerID int
	// Generation is the slot's generation (CLUSTERD_WORKER_GEN); zero means 1.
	Generation int
	// Stdout and Stderr receive the worker's output; nil discards it.
	Stdout, Stderr io.Writer
	// HeartbeatMS is the heartbeat interval the master's hello asks for
	// (ipc.Hello.HeartbeatMS); zero asks for none.
	HeartbeatMS int64
	// HandleRequest answers the worker's requests (worker.Request), each in
	// a goroutine of its own; its error is sent as an IPC error reply (an
	// *ipc.RemoteError keeps its code, others get ipc.CodeInternal). Nil
	// answers every request with ipc.CodeUnsupported, as a master without a
	// request handler does.
	HandleRequest func(ctx context.Context, req *ipc.Message) (reply any, err error)
}

// Worker is one running worker program.
type Worker struct {
	t      testing.TB
	cmd    *exec.Cmd
	conn   *ipc.Conn
	files  []*os.File // the listening sockets, open while the worker may run
	addrs  []net.Addr
	ready  chan struct{} // closed when the ready message arrives
	done   chan struct{} // closed when the worker has been waited for
	reader sync.WaitGroup

	opts     Options
	messages chan *ipc.Message // the worker's user messages, for Messages

	mu        sync.Mutex
	hello     ipc.Hello
	ipcErr    error // why the IPC connection ended, if it did early
	waitErr   error
	beat      chan struct{}       // closed and replaced at every heartbeat
	lastBeat  ipc.Heartbeat       // the latest heartbeat
	stats     map[string]int64    // the latest stats message's counters
	listening map[string]*os.File // sockets made for listen requests, by address
}

// Start binds the listen addresses and starts the worker; see the package
// doc. It fails the test on any error. Cleanup kills the worker's process
// group if it still runs, waits for it, and closes the sockets.
func Start(t testing.TB, opts Options) *Worker {
	t.Helper()
	w, err := start(t, opts)
	if err != nil {
		t.Fatalf("workertest: %v", err)
	}
	return w
}

func start(t testing.TB, opts Options) (*Worker, error) {
	if len(opts.Command) == 0 || opts.Command[0] == "" {
		return nil, errors.New("no command")
	}
	listen := opts.Listen
	if listen == nil {
		listen = []string{"tcp://127.0.0.1:0"}
	}
	gen := opts.Generation
	if gen == 0 {
		gen = 1
	}
	w := &Worker{t: t, opts: opts, ready: make(chan struct{}), done: make(chan struct{}),
		messages: make(chan *ipc.Message, 256), beat: make(chan struct{}), listening: map[string]*os.File{}}
	ok := false
	defer func() {
		if !ok {
			w.closeFiles()
		}
	}()
	var names []string
	for _, s := range listen {
		spec, err := sockshare.ParseSpec(s)
		if err != nil {
			return nil, fmt.Errorf("listen %s: %w", s, err)
		}
		f, err := sockshare.Listen(spec, sockshare.ListenOptions{})
		if err != nil {
			return nil, fmt.Errorf("listen %s: %w", s, err)
		}
		w.files = append(w.files, f)
		addr, err := sockshare.Addr(f)
		if err != nil {
			return nil, fmt.Errorf("listen %s: %w", s, err)
		}
		w.addrs = append(w.addrs, addr)
		name := spec.Name
		if name == "" {
			name = spec.String()
		}
		names = append(names, name)
	}
	parent, child, err := ipc.Pair()
	if err != nil {
		return nil, fmt.Errorf("ipc socketpair: %w", err)
	}
	defer child.Close() // the worker has its copy once started

	env := sockshare.StripListenEnv(os.Environ())
	env = stripPrefixes(env, ipc.EnvIPCFD+"=", ipc.EnvWorkerID+"=", ipc.EnvWorkerGen+"=", "NOTIFY_SOCKET=")
	env = append(env, opts.Env...)
	env = append(env, sockshare.ListenEnv(names)...)
	env = append(env, ipc.Env{IPCFD: 3 + len(w.files), WorkerID: opts.WorkerID, Generation: gen}.Environ()...)

	// sh sets LISTEN_PID to its own pid, which exec keeps for the program.
	args := append([]string{"-c", `LISTEN_PID=$$; export LISTEN_PID; exec "$@"`, "workertest"}, opts.Command...)
	w.cmd = exec.Command("/bin/sh", args...)
	w.cmd.Env = env
	w.cmd.Stdout, w.cmd.Stderr = opts.Stdout, opts.Stderr
	// The sockets keep their non-blocking mode: os.NewFile'd non-blocking
	// files are passed without being switched to blocking.
	w.cmd.ExtraFiles = append(append([]*os.File(nil), w.files...), child)
	w.cmd.SysProcAttr = sysProcAttr()
	if err := w.cmd.Start(); err != nil {
		parent.Close()
		return nil, fmt.Errorf("start %s: %w", opts.Command[0], err)
	}
	ok = true
	t.Cleanup(w.cleanup)

	conn, err := ipc.NewConn(parent, ipc.Options{})
	if err != nil {
		w.setIPCErr(err)
	} else {
		w.conn = conn
		w.reader.Add(1)
		go w.serveIPC()
	}
	go func() {
		err := w.cmd.Wait()
		w.mu.Lock()
		w.waitErr = err
		w.mu.Unlock()
		close(w.done)
		if w.conn != nil {
			w.conn.Close() // unblocks serveIPC
		}
	}()
	return w, nil
}

func stripPrefixes(env []string, prefixes ...string) []string {
	out := env[:0:0]
	for _, kv := range env {
		keep := true
		for _, p := range prefixes {
			if strings.HasPrefix(kv, p) {
				keep = false
			}
		}
		if keep {
			out = append(out, kv)
		}
	}
	return out
}

// serveIPC answers the worker's hello and reads its messages until the
// connection ends: ready, heartbeats and stats are recorded, user messages
// go to Messages, requests to Options.HandleRequest, listen requests get a
// socket.
func (w *Worker) serveIPC() {
	defer w.reader.Done()
	defer close(w.messages)
	peer, err := w.conn.Handshake(context.Background(), ipc.Hello{PID: os.Getpid(), WorkerID: -1, HeartbeatMS: w.opts.HeartbeatMS})
	if err != nil {
		w.setIPCErr(err)
		return
	}
	w.mu.Lock()
	w.hello = peer
	w.mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	var handlers sync.WaitGroup
	defer func() {
		cancel()
		handlers.Wait()
	}()
	readyOnce := sync.OnceFunc(func() { close(w.ready) })
	for {
		m, err := w.conn.Recv()
		if err != nil {
			w.setIPCErr(err)
			return
		}
		m.CloseFDs() // nothing this package handles carries descriptors
		switch m.Kind {
		case ipc.KindReady:
			readyOnce()
		case ipc.KindHeartbeat:
			var hb ipc.Heartbeat
			if err := m.Decode(&hb); err != nil {
				w.setIPCErr(err)
				return
			}
			w.mu.Lock()
			w.lastBeat = hb
			close(w.beat)
			w.beat = make(chan struct{})
			w.mu.Unlock()
		case ipc.KindStats:
			var st ipc.Stats
			if err := m.Decode(&st); err != nil {
				w.setIPCErr(err)
				return
			}
			w.mu.Lock()
			w.stats = st.Counters
			w.mu.Unlock()
		case ipc.KindUser:
			select {
			case w.messages <- m:
			case <-w.conn.Done():
				return
			}
		case ipc.KindRequest:
			handlers.Add(1)
			go func() {
				defer handlers.Done()
				w.answer(ctx, m)
			}()
		case ipc.KindListenRequest:
			w.answerListen(m)
		}
	}
}

// answer replies to the worker's request m with Options.HandleRequest.
func (w *Worker) answer(ctx context.Context, m *ipc.Message) {
	var v any
	err := error(&ipc.RemoteError{Code: ipc.CodeUnsupported, Text: "workertest: no HandleRequest"})
	if h := w.opts.HandleRequest; h != nil {
		v, err = h(ctx, m)
	}
	var r *ipc.Message
	if err == nil {
		r, err = m.Reply(ipc.KindResponse, v)
	}
	if err != nil {
		e := ipc.Error{Code: ipc.CodeInternal, Text: err.Error()}
		if re, ok := errors.AsType[*ipc.RemoteError](err); ok {
			e = ipc.Error{Code: re.Code, Text: re.Text}
		}
		r, _ = m.Reply(ipc.KindError, e) // an Error body always encodes
	}
	_ = w.conn.Send(r) // a send error means the worker is gone
}

// answerListen answers a listen request with a socket bound to its address,
// made on the first request for it and reused for the later ones, as the
// master shares one socket between its workers.
func (w *Worker) answerListen(m *ipc.Message) {
	fail := func(code string, err error) {
		r, _ := m.Reply(ipc.KindError, ipc.Error{Code: code, Text: err.Error()})
		_ = w.conn.Send(r)
	}
	var req ipc.ListenRequest
	if err := m.Decode(&req); err != nil {
		fail(ipc.CodeBadRequest, err)
		return
	}
	spec, err := sockshare.ParseSpec(req.Addr)
	if err != nil {
		fail(ipc.CodeBadRequest, err)
		return
	}
	if !spec.IsStream() {
		fail(ipc.CodeForbidden, fmt.Errorf("listen %s: not a stream socket", req.Addr))
		return
	}
	key := spec.String()
	w.mu.Lock()
	f := w.listening[key]
	w.mu.Unlock()
	if f == nil {
		if f, err = sockshare.Listen(spec, sockshare.ListenOptions{}); err != nil {
			fail(ipc.CodeListen, err)
			return
		}
		w.mu.Lock()
		w.listening[key] = f
		w.mu.Unlock()
	}
	addr, err := sockshare.Addr(f)
	if err != nil {
		fail(ipc.CodeListen, err)
		return
	}
	r, err := m.Reply(ipc.KindListenReply, ipc.ListenReply{Addr: addr.String()})
	if err != nil {
		fail(ipc.CodeInternal, err)
		return
	}
	r.FDs = []*os.File{f}
	_ = w.conn.Send(r) // Send duplicates f; an error means the worker is gone
}

// Listened returns the sockets made for the worker's listen requests
// (worker.Listen of an address it did not inherit), by the address as the
// request spelt it. The Worker owns them and closes them at cleanup.
func (w *Worker) Listened() map[string]*os.File {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make(map[string]*os.File, len(w.listening))
	for k, f := range w.listening {
		out[k] = f
	}
	return out
}

// Messages returns the channel of the worker's user messages
// (worker.Send), in order; it is closed when the connection ends. Messages
// the test does not take wait (a few hundred in the channel, then in the
// connection), which blocks the worker's sends: back-pressure, as under a
// real master.
func (w *Worker) Messages() <-chan *ipc.Message { return w.messages }

// Send sends msg to the worker as a user message (worker.Messages). It
// queues it and returns; use Flush to wait until it is written.
func (w *Worker) Send(msg any) error {
	if w.conn == nil {
		return fmt.Errorf("workertest: send: no ipc connection: %v", w.ipcErr)
	}
	m, err := ipc.NewMessage(ipc.KindUser, msg)
	if err != nil {
		return fmt.Errorf("workertest: send: %w", err)
	}
	if err := w.conn.Send(m); err != nil {
		return fmt.Errorf("workertest: send: %w", err)
	}
	return nil
}

// Request sends msg to the worker as a request (answered by worker.Handle)
// and waits for its reply. An error reply is an *ipc.RemoteError.
func (w *Worker) Request(ctx context.Context, msg any) (*ipc.Message, error) {
	if w.conn == nil {
		return nil, fmt.Errorf("workertest: request: no ipc connection: %v", w.ipcErr)
	}
	m, err := ipc.NewMessage(ipc.KindRequest, msg)
	if err != nil {
		return nil, fmt.Errorf("workertest: request: %w", err)
	}
	r, err := w.conn.Call(ctx, m)
	if err != nil {
		return nil, fmt.Errorf("workertest: request: %w", err)
	}
	return r, nil
}

// NextHeartbeat waits for the worker's next heartbeat (one that arrives
// after the call) and returns it with the counters of the latest stats
// message, which the worker sends just before each heartbeat when it has
// metrics. It fails when the worker exits first or ctx is done.
func (w *Worker) NextHeartbeat(ctx context.Context) (ipc.Heartbeat, map[string]int64, error) {
	w.mu.Lock()
	beat := w.beat
	w.mu.Unlock()
	select {
	case <-beat:
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.lastBeat, w.stats, nil
	case <-w.done:
		return ipc.Heartbeat{}, nil, fmt.Errorf("workertest: worker %d exited before its next heartbeat", w.PID())
	case <-ctx.Done():
		return ipc.Heartbeat{}, nil, fmt.Errorf("workertest: worker %d heartbeat: %w", w.PID(), ctx.Err())
	}
}

func (w *Worker) setIPCErr(err error) {
	w.mu.Lock()
	if w.ipcErr == nil {
		w.ipcErr = err
	}
	w.mu.Unlock()
}

// Addr is the bound address of the first listen address (the chosen port
// for port 0).
func (w *Worker) Addr() net.Addr { return w.addrs[0] }

// Addrs are the bound addresses of every listen address, in order.
func (w *Worker) Addrs() []net.Addr { return append([]net.Addr(nil), w.addrs...) }

// PID is the worker's process id.
func (w *Worker) PID() int { return w.cmd.Process.Pid }

// WaitReady blocks until the worker has sent its hello and its ready message
// ([worker.Ready]), and returns the hello. It fails when the worker exits
// first, or when ctx is done.
func (w *Worker) WaitReady(ctx context.Context) (ipc.Hello, error) {
	select {
	case <-w.ready:
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.hello, nil
	case <-w.done:
		w.mu.Lock()
		defer w.mu.Unlock()
		return ipc.Hello{}, fmt.Errorf("workertest: worker %d exited before it was ready: %v (ipc: %v)", w.PID(), w.waitErr, w.ipcErr)
	case <-ctx.Done():
		return ipc.Hello{}, fmt.Errorf("workertest: worker %d not ready: %w", w.PID(), ctx.Err())
	}
}

// Drain sends the worker the master's drain message with deadline, and
// returns once it is written. The worker must have said hello.
func (w *Worker) Drain(ctx context.Context, deadline time.Time) error {
	m, err := ipc.NewMessage(ipc.KindDrain, ipc.Drain{Deadline: deadline})
	if err != nil {
		return fmt.Errorf("workertest: drain: %w", err)
	}
	if w.conn == nil {
		return fmt.Errorf("workertest: drain: no ipc connection: %v", w.ipcErr)
	}
	if err := w.conn.Send(m); err != nil {
		return fmt.Errorf("workertest: drain: %w", err)
	}
	if err := w.conn.Flush(ctx); err != nil {
		return fmt.Errorf("workertest: drain: %w", err)
	}
	return nil
}

// Signal sends sig to the worker (its stop signal, for instance).
func (w *Worker) Signal(sig os.Signal) error {
	if err := w.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("workertest: signal worker %d: %w", w.PID(), err)
	}
	return nil
}

// Done is closed once the worker has exited and been waited for.
func (w *Worker) Done() <-chan struct{} { return w.done }

// Wait blocks until the worker exits, or ctx is done, and returns its exit
// status: nil for exit code 0, else an error such as *exec.ExitError.
func (w *Worker) Wait(ctx context.Context) error {
	select {
	case <-w.done:
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.waitErr
	case <-ctx.Done():
		return fmt.Errorf("workertest: worker %d still runs: %w", w.PID(), ctx.Err())
	}
}

func (w *Worker) cleanup() {
	select {
	case <-w.done:
	default:
		// The worker leads its own process group: end it and its children.
		syscall.Kill(-w.cmd.Process.Pid, syscall.SIGKILL)
		<-w.done
	}
	w.reader.Wait()
	w.closeFiles()
}

func (w *Worker) closeFiles() {
	for _, f := range w.files {
		f.Close() // listening sockets: nothing to flush, nobody to tell
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, f := range w.listening {
		f.Close() // as above
	}
}
