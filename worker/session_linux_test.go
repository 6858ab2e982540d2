package worker

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/clusterd/clusterd/ipc"
	"github.com/clusterd/clusterd/worker/workertest"
)

// The tests in this file run the test binary as a worker under
// workertest, which plays the master's side of the wire.

// seqMsg is the body of the messages the ordering test sends both ways.
type seqMsg struct {
	Seq int `msgpack:"seq"`
}

// numMsg is the body of the requests the concurrency test sends both ways.
type numMsg struct {
	N    int  `msgpack:"n"`
	Fail bool `msgpack:"fail,omitempty"`
}

// startWorker starts helper name under workertest with opts (Command, Env
// and Stdout are filled in) and returns it with a reader of its stdout.
func startWorker(t *testing.T, name string, opts workertest.Options) (*workertest.Worker, *bufio.Reader) {
	t.Helper()
	useHelper(name)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	r, wr, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	opts.Command = []string{exe}
	opts.Env = append(opts.Env, helperEnv+"="+name)
	opts.Stdout = wr
	opts.Stderr = os.Stderr
	w := workertest.Start(t, opts)
	wr.Close() // the worker has its copy
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	if _, err := w.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	return w, bufio.NewReader(r)
}

// stopWorker drains w and checks that it exits 0.
func stopWorker(t *testing.T, w *workertest.Worker) {
	t.Helper()
	if err := w.Drain(t.Context(), time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if err := w.Wait(t.Context()); err != nil {
		t.Errorf("worker after drain: %v, want exit 0", err)
	}
}

// helperFail reports a helper's failure on stdout, where the test reads it
// instead of the line it expects, and returns the exit code.
func helperFail(format string, args ...any) int {
	fmt.Printf("FAIL "+format+"\n", args...)
	return 1
}

const sequenceCount = 10000

// TestMessagesInOrder sends 10,000 numbered messages each way at once and
// checks that each side receives them all, in order.
func TestMessagesInOrder(t *testing.T) {
	w, out := startWorker(t, "sequence", workertest.Options{})
	sendErr := make(chan error, 1)
	go func() {
		for i := 1; i <= sequenceCount; i++ {
			if err := w.Send(seqMsg{Seq: i}); err != nil {
				sendErr <- err
				return
			}
		}
		sendErr <- nil
	}()
	for i := 1; i <= sequenceCount; i++ {
		m, ok := <-w.Messages()
		if !ok {
			t.Fatalf("worker's messages ended after %d of %d", i-1, sequenceCount)
		}
		var s seqMsg
		if err := m.Decode(&s); err != nil || s.Seq != i {
			t.Fatalf("worker's message %d = %+v, %v; want seq %d", i, s, err, i)
		}
	}
	if err := <-sendErr; err != nil {
		t.Fatal(err)
	}
	if line := readLine(t, out); line != fmt.Sprintf("received %d in order", sequenceCount) {
		t.Errorf("worker said %q, want received %d in order", line, sequenceCount)
	}
	stopWorker(t, w)
}

// helperSequence receives numbered messages from the master and checks
// their order, while it sends its own numbered messages.
func helperSequence() int {
	msgs := Messages() // before Ready: the master may send at once
	if err := Ready(); err != nil {
		return helperFail("%v", err)
	}
	sent := make(chan error, 1)
	go func() {
		for i := 1; i <= sequenceCount; i++ {
			if err := Send(seqMsg{Seq: i}); err != nil {
				sent <- err
				return
			}
		}
		sent <- Flush(context.Background())
	}()
	for i := 1; i <= sequenceCount; i++ {
		m, ok := <-msgs
		if !ok {
			return helperFail("messages ended after %d", i-1)
		}
		var s seqMsg
		if err := m.Decode(&s); err != nil || s.Seq != i {
			return helperFail("message %d = %+v, %v", i, s, err)
		}
	}
	if err := <-sent; err != nil {
		return helperFail("send: %v", err)
	}
	fmt.Printf("received %d in order\n", sequenceCount)
	<-Drain()
	return 0
}

const concurrentRequests = 64

// TestRequestsConcurrent has 64 goroutines on each side send a request at
// once, and checks that every reply answers its own request; errors chosen
// by a handler keep their code.
func TestRequestsConcurrent(t *testing.T) {
	w, out := startWorker(t, "requests", workertest.Options{
		HandleRequest: func(ctx context.Context, req *ipc.Message) (any, error) {
			var n numMsg
			if err := req.Decode(&n); err != nil {
				return nil, err
			}
			return numMsg{N: n.N * 3}, nil
		},
	})
	var wg sync.WaitGroup
	errs := make(chan error, concurrentRequests)
	for i := range concurrentRequests {
		wg.Go(func() {
			r, err := w.Request(t.Context(), numMsg{N: i})
			if err != nil {
				errs <- err
				return
			}
			var n numMsg
			if err := r.Decode(&n); err != nil || r.Kind != ipc.KindResponse || n.N != 2*i {
				errs <- fmt.Errorf("reply to %d = %s %+v, %v; want response %d", i, r.Kind, n, err, 2*i)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if line := readLine(t, out); line != "requests ok" {
		t.Errorf("worker said %q, want requests ok", line)
	}
	_, err := w.Request(t.Context(), numMsg{Fail: true})
	if re, ok := errors.AsType[*ipc.RemoteError](err); !ok || re.Code != "odd" || re.Text != "asked to fail" {
		t.Errorf("request the handler fails = %v, want remote error odd: asked to fail", err)
	}
	stopWorker(t, w)
}

// helperRequests answers requests with twice their number, and sends 64
// requests to the master at once, which answers with three times theirs.
func helperRequests() int {
	Handle(func(ctx context.Context, req Message) (any, error) {
		var n numMsg
		if err := req.Decode(&n); err != nil {
			return nil, err
		}
		if n.Fail {
			return nil, fmt.Errorf("handler: %w", &ipc.RemoteError{Code: "odd", Text: "asked to fail"})
		}
		return numMsg{N: 2 * n.N}, nil
	})
	if err := Ready(); err != nil {
		return helperFail("%v", err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, concurrentRequests)
	for i := range concurrentRequests {
		wg.Go(func() {
			r, err := Request(context.Background(), numMsg{N: i})
			var n numMsg
			if err == nil {
				err = r.Decode(&n)
			}
			if err == nil && n.N != 3*i {
				err = fmt.Errorf("reply to %d = %d, want %d", i, n.N, 3*i)
			}
			if err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return helperFail("%v", err)
	}
	fmt.Println("requests ok")
	<-Drain()
	return 0
}

// TestDraining checks that the Draining context is cancelled by the drain
// message and carries its deadline.
func TestDraining(t *testing.T) {
	w, out := startWorker(t, "draining", workertest.Options{})
	if line := readLine(t, out); line != "waiting err=<nil> deadline=false" {
		t.Fatalf("worker said %q before the drain", line)
	}
	deadline := time.Now().Add(45 * time.Second).Truncate(time.Millisecond)
	if err := w.Drain(t.Context(), deadline); err != nil {
		t.Fatal(err)
	}
	want := "drained err=context canceled deadline=" + deadline.UTC().Format(time.RFC3339Nano)
	if line := readLine(t, out); line != want {
		t.Errorf("worker after the drain said %q, want %q", line, want)
	}
	if err := w.Wait(t.Context()); err != nil {
		t.Errorf("worker after drain: %v, want exit 0", err)
	}
}

// helperDraining waits for its Draining context, and derives one from it,
// as a program passes it to its work.
func helperDraining() int {
	ctx := Draining()
	if err := Ready(); err != nil {
		return helperFail("%v", err)
	}
	_, ok := ctx.Deadline()
	fmt.Printf("waiting err=%v deadline=%v\n", ctx.Err(), ok)
	child, cancel := context.WithCancel(ctx)
	defer cancel()
	<-child.Done()
	d, ok := child.Deadline()
	if !ok {
		return helperFail("no deadline after the drain")
	}
	fmt.Printf("drained err=%v deadline=%s\n", child.Err(), d.UTC().Format(time.RFC3339Nano))
	return 0
}

// TestListen has a worker take an inherited socket by name and one by
// address, and get a new one from the master; the master's refusal reaches
// it as an error with the code.
func TestListen(t *testing.T) {
	sock := t.TempDir() + "/app.sock"
	w, out := startWorker(t, "listen", workertest.Options{
		Listen: []string{"web=tcp://127.0.0.1:0", "unix://" + sock},
		Env:    []string{"HELPER_UNIX=" + sock},
	})
	line := readLine(t, out)
	var name, unixAddr, fresh, taken, refused string
	for f := range strings.FieldsSeq(line) {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case "name":
			name = v
		case "unix":
			unixAddr = v
		case "new":
			fresh = v
		case "taken":
			taken = v
		case "refused":
			refused = v
		}
	}
	if name != w.Addrs()[0].String() || unixAddr != sock {
		t.Errorf("worker took %s and %s, want the inherited %s and %s (said %q)", name, unixAddr, w.Addrs()[0], sock, line)
	}
	if taken != "0" {
		t.Errorf("Listeners after Listen took both = %s sockets, want 0", taken)
	}
	if refused != ipc.CodeListen {
		t.Errorf("Listen of an address the master cannot bind: code %q, want %q (said %q)", refused, ipc.CodeListen, line)
	}
	listened := w.Listened()
	f := listened["tcp://127.0.0.1:0"]
	if len(listened) != 1 || f == nil {
		t.Fatalf("master made sockets %v, want one for tcp://127.0.0.1:0", listened)
	}
	// The worker serves on the master's socket itself, not on a copy bound
	// to the same address: the same inode.
	want := inode(t, f)
	if got := readLine(t, out); got != fmt.Sprintf("new inode=%d", want) {
		t.Errorf("worker's new listener: %q, want inode %d", got, want)
	}
	for _, addr := range []string{name, fresh} {
		resp, err := http.Get("http://" + addr + "/")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != "ok" {
			t.Errorf("GET %s = %q, want ok", addr, b)
		}
	}
	stopWorker(t, w)
}

// inode returns the inode number of f's socket. It reads it through
// SyscallConn: f.Fd would switch the socket, shared with the worker, to
// blocking mode.
func inode(t *testing.T, f *os.File) uint64 {
	t.Helper()
	var st unix.Stat_t
	rc, err := f.SyscallConn()
	if err == nil {
		err = rc.Control(func(fd uintptr) { err = unix.Fstat(int(fd), &st) })
	}
	if err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// helperListen takes its sockets with Listen and serves HTTP on them.
func helperListen() int {
	os.Setenv("LISTEN_PID", strconv.Itoa(os.Getpid())) // as exec-worker does
	ctx := context.Background()
	const mismatch = "worker: listen unix web: inherited socket web is a tcp socket, not unix"
	if _, err := Listen(ctx, "unix", "web"); err == nil || err.Error() != mismatch {
		return helperFail("Listen of the tcp socket web as unix = %v, want %q", err, mismatch)
	}
	byName, err := Listen(ctx, "tcp", "web")
	if err != nil {
		return helperFail("%v", err)
	}
	byAddr, err := Listen(ctx, "unix", os.Getenv("HELPER_UNIX"))
	if err != nil {
		return helperFail("%v", err)
	}
	rest, err := Listeners()
	if err != nil {
		return helperFail("%v", err)
	}
	fresh, err := Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		return helperFail("%v", err)
	}
	// 192.0.2.0/24 is TEST-NET-1: no host has it, so binding fails.
	_, err = Listen(ctx, "tcp", "192.0.2.1:80")
	re, _ := errors.AsType[*ipc.RemoteError](err)
	if re == nil {
		return helperFail("Listen 192.0.2.1:80 = %v, want a remote error", err)
	}
	if err := Ready(); err != nil {
		return helperFail("%v", err)
	}
	fmt.Printf("name=%s unix=%s new=%s taken=%d refused=%s\n", byName.Addr(), byAddr.Addr(), fresh.Addr(), len(rest), re.Code)
	var st unix.Stat_t
	rc, err := fresh.(*net.TCPListener).SyscallConn()
	if err == nil {
		err = rc.Control(func(fd uintptr) { err = unix.Fstat(int(fd), &st) })
	}
	if err != nil {
		return helperFail("%v", err)
	}
	fmt.Printf("new inode=%d\n", st.Ino)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })}
	if err := ServeHTTP(ctx, srv, byName, byAddr, fresh); err != nil {
		return helperFail("%v", err)
	}
	return 0
}

// TestHeartbeats checks that heartbeats come at the master's interval, in
// sequence, with the worker's metrics; and that a worker without a request
// handler answers requests with CodeUnsupported.
func TestHeartbeats(t *testing.T) {
	w, out := startWorker(t, "heartbeat", workertest.Options{HeartbeatMS: 5})
	if line := readLine(t, out); line != "counted" {
		t.Fatalf("worker said %q, want counted", line)
	}
	hb1, _, err := w.NextHeartbeat(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	hb2, stats, err := w.NextHeartbeat(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	// NextHeartbeat returns the latest beat once a new one has come: at a
	// 5ms interval a loaded machine lets the test miss some (seen: 1 then
	// 3), so the numbers must grow from 1 on, not follow each other.
	if hb1.Seq == 0 || hb2.Seq <= hb1.Seq {
		t.Errorf("heartbeats %d then %d, want increasing numbers from 1", hb1.Seq, hb2.Seq)
	}
	if stats["requests"] != 5 || stats["open_conns"] != 2 || len(stats) != 2 {
		t.Errorf("stats with heartbeat %d = %v, want requests 5, open_conns 2", hb2.Seq, stats)
	}
	_, err = w.Request(t.Context(), "anything")
	if re, ok := errors.AsType[*ipc.RemoteError](err); !ok || re.Code != ipc.CodeUnsupported {
		t.Errorf("request to a worker without a handler = %v, want code %s", err, ipc.CodeUnsupported)
	}
	stopWorker(t, w)
}

// helperHeartbeat counts and says it is ready; the heartbeats are the
// library's.
func helperHeartbeat() int {
	NewCounter("requests").Add(5)
	SetGauge("open_conns", 2)
	if err := Ready(); err != nil {
		return helperFail("%v", err)
	}
	fmt.Println("counted")
	<-Drain()
	return 0
}
