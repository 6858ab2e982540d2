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
	// worker gets them at fds 3, 4, … Nil means one "tcp://127.0.0.1:0".
	Listen []string
	// WorkerID is the worker's slot (CLUSTERD_WORKER_ID); zero is slot 0.
	WorkerID int
	// Generation is the slot's generation (CLUSTERD_WORKER_GEN); zero means 1.
	Generation int
	// Stdout and Stderr receive the worker's output; nil discards it.
	Stdout, Stderr io.Writer
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

	mu      sync.Mutex
	hello   ipc.Hello
	ipcErr  error // why the IPC connection ended, if it did early
	waitErr error
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
	w := &Worker{t: t, ready: make(chan struct{}), done: make(chan struct{})}
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
// connection ends.
func (w *Worker) serveIPC() {
	defer w.reader.Done()
	peer, err := w.conn.Handshake(context.Background(), ipc.Hello{PID: os.Getpid(), WorkerID: -1})
	if err != nil {
		w.setIPCErr(err)
		return
	}
	w.mu.Lock()
	w.hello = peer
	w.mu.Unlock()
	readyOnce := sync.OnceFunc(func() { close(w.ready) })
	for {
		m, err := w.conn.Recv()
		if err != nil {
			w.setIPCErr(err)
			return
		}
		m.CloseFDs() // nothing this package handles carries descriptors
		if m.Kind == ipc.KindReady {
			readyOnce()
		}
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
}
