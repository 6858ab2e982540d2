package ipc

import (
	"context"
	"errors"
	"io"
	"os"
	"reflect"
	"testing"
	"time"
)

func TestClose(t *testing.T) {
	t.Parallel()
	a, b := newPair(t, Options{})
	recvErr := make(chan error, 1)
	go func() {
		_, err := a.Recv()
		recvErr <- err
	}()
	callErr := make(chan error, 1)
	go func() {
		_, err := a.Call(context.Background(), &Message{Kind: KindRequest})
		callErr <- err
	}()
	// The request reaching b proves the call is pending.
	if m, err := b.Recv(); err != nil || m.Kind != KindRequest {
		t.Fatalf("peer Recv() = %v, %v; want the request", m, err)
	}
	if err := a.Close(); err != nil {
		t.Fatalf("Close() = %v", err)
	}
	if err := a.Close(); err != nil {
		t.Fatalf("second Close() = %v", err)
	}
	if err := <-recvErr; !errors.Is(err, ErrClosed) {
		t.Errorf("blocked Recv() error = %v, want ErrClosed", err)
	}
	if err := <-callErr; !errors.Is(err, ErrClosed) {
		t.Errorf("pending Call() error = %v, want ErrClosed", err)
	}
	if err := a.Send(&Message{Kind: KindReady}); !errors.Is(err, ErrClosed) {
		t.Errorf("Send after Close = %v, want ErrClosed", err)
	}
	if _, err := a.Call(t.Context(), &Message{Kind: KindRequest}); !errors.Is(err, ErrClosed) {
		t.Errorf("Call after Close = %v, want ErrClosed", err)
	}
	if err := a.Flush(t.Context()); !errors.Is(err, ErrClosed) {
		t.Errorf("Flush after Close = %v, want ErrClosed", err)
	}
	if _, err := a.Recv(); !errors.Is(err, ErrClosed) {
		t.Errorf("Recv after Close = %v, want ErrClosed", err)
	}
	if _, err := a.Handshake(t.Context(), Hello{}); !errors.Is(err, ErrClosed) {
		t.Errorf("Handshake after Close = %v, want ErrClosed", err)
	}
	if !errors.Is(a.Err(), ErrClosed) {
		t.Errorf("Err() = %v, want ErrClosed", a.Err())
	}
	// The peer sees a clean end of stream, and Done is closed.
	if _, err := b.Recv(); err != io.EOF {
		t.Errorf("peer Recv() after Close = %v, want io.EOF", err)
	}
	<-b.Done()
	if b.Err() != io.EOF {
		t.Errorf("peer Err() = %v, want io.EOF", b.Err())
	}
}

// TestFlushThenClose: messages flushed before Close reach the peer, which
// receives them before end of stream.
func TestFlushThenClose(t *testing.T) {
	t.Parallel()
	a, b := newPair(t, Options{})
	for i := range 100 {
		if err := a.Send(&Message{Kind: KindUser, ID: uint64(i)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	a.Close()
	for i := range 100 {
		m, err := b.Recv()
		if err != nil || m.ID != uint64(i) {
			t.Fatalf("Recv() = %v, %v; want message %d", m, err, i)
		}
	}
	if _, err := b.Recv(); err != io.EOF {
		t.Fatalf("Recv() at the end = %v, want io.EOF", err)
	}
}

func TestCallCancel(t *testing.T) {
	t.Parallel()
	a, b := newPair(t, Options{})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		_, err := a.Call(ctx, &Message{Kind: KindRequest})
		done <- err
	}()
	req, err := b.Recv()
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled Call() = %v, want context.Canceled", err)
	}
	// The late reply goes to Recv.
	r, err := req.Reply(KindResponse, "late")
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Send(r); err != nil {
		t.Fatal(err)
	}
	m, err := a.Recv()
	if err != nil || m.ReplyTo != req.ID || m.Kind != KindResponse {
		t.Fatalf("Recv() = %+v, %v; want the late reply to %d", m, err, req.ID)
	}
}

func TestCallRemoteError(t *testing.T) {
	t.Parallel()
	a, b := newPair(t, Options{})
	goServe(t, b, func() {
		m, err := b.Recv()
		if err != nil {
			return
		}
		r, err := m.Reply(KindError, &Error{Code: CodeBadRequest, Text: "no such thing"})
		if err == nil {
			err = b.Send(r)
		}
		if err != nil {
			t.Error(err)
			b.Close() // fails the pending call
		}
	})
	_, err := a.Call(t.Context(), &Message{Kind: KindRequest})
	var re *RemoteError
	if !errors.As(err, &re) || re.Code != CodeBadRequest || re.Text != "no such thing" {
		t.Fatalf("Call() error = %v, want RemoteError %s", err, CodeBadRequest)
	}
}

func TestHandshake(t *testing.T) {
	t.Parallel()
	t.Run("ok", func(t *testing.T) {
		t.Parallel()
		a, b := newPair(t, Options{})
		got := make(chan Hello, 1)
		go func() {
			h, err := b.Handshake(context.Background(), Hello{PID: 2, WorkerID: 3, Generation: 4})
			if err != nil {
				t.Error(err)
			}
			got <- h
		}()
		lns := []Listener{{Name: "web", Addr: "tcp://127.0.0.1:8080"}, {Name: "unknown", Addr: "unix:///run/app.sock"}}
		h, err := a.Handshake(t.Context(), Hello{PID: 1, WorkerID: -1, Listeners: lns})
		if err != nil {
			t.Fatal(err)
		}
		if want := (Hello{Version: Version, PID: 2, WorkerID: 3, Generation: 4}); !reflect.DeepEqual(h, want) {
			t.Fatalf("Handshake() = %+v, want %+v", h, want)
		}
		if want, peer := (Hello{Version: Version, PID: 1, WorkerID: -1, Listeners: lns}), <-got; !reflect.DeepEqual(peer, want) {
			t.Fatalf("peer's Handshake() = %+v, want %+v", peer, want)
		}
	})
	t.Run("version", func(t *testing.T) {
		t.Parallel()
		a, b := newPair(t, Options{})
		m, err := NewMessage(KindHello, &Hello{Version: Version + 1})
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Send(m); err != nil {
			t.Fatal(err)
		}
		if _, err := a.Handshake(t.Context(), Hello{}); !errors.Is(err, ErrVersion) {
			t.Fatalf("Handshake() = %v, want ErrVersion", err)
		}
	})
	t.Run("not hello", func(t *testing.T) {
		t.Parallel()
		a, b := newPair(t, Options{})
		if err := b.Send(&Message{Kind: KindReady}); err != nil {
			t.Fatal(err)
		}
		if _, err := a.Handshake(t.Context(), Hello{}); !errors.Is(err, ErrProtocol) {
			t.Fatalf("Handshake() = %v, want ErrProtocol", err)
		}
	})
	t.Run("cancel", func(t *testing.T) {
		t.Parallel()
		a, _ := newPair(t, Options{})
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		if _, err := a.Handshake(ctx, Hello{}); !errors.Is(err, context.Canceled) {
			t.Fatalf("Handshake() = %v, want context.Canceled", err)
		}
	})
}

// TestQueueBound: with nobody calling Recv, the receive queue never holds more
// than its limits, whatever the peer sends; the peer is held back instead.
func TestQueueBound(t *testing.T) {
	t.Parallel()
	const queueLen, queueFDs = 8, 4
	a, b := newPair(t, Options{QueueLen: queueLen, QueueFDs: queueFDs, QueueBytes: 1 << 10, MaxFDs: 2})
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const n = 3000
	bodies := make([][]byte, 300)
	for i := range bodies {
		bodies[i] = mustEncode(t, make([]byte, i))
	}
	go func() {
		for i := range n {
			m := &Message{Kind: KindUser, ID: uint64(i), Body: bodies[i%300]}
			if i%3 == 0 {
				m.FDs = []*os.File{f, f}
			}
			if err := a.Send(m); err != nil {
				t.Error(err)
				a.Close() // ends the receiving loop below
				return
			}
		}
	}()
	for i := range n {
		b.in.mu.Lock()
		l, by, fds := b.in.len(), b.in.bytes, b.in.fds
		b.in.mu.Unlock()
		if l > queueLen || fds > queueFDs || (l > 1 && by > 1<<10) {
			t.Fatalf("queue holds %d messages, %d bytes, %d descriptors; limits %d, %d, %d", l, by, fds, queueLen, 1<<10, queueFDs)
		}
		m, err := b.Recv()
		if err != nil || m.ID != uint64(i) {
			t.Fatalf("Recv() = %v, %v; want message %d", m, err, i)
		}
		m.CloseFDs()
	}
}

func TestSendRefused(t *testing.T) {
	t.Parallel()
	a, b := newPair(t, Options{MaxFDs: 2})
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cases := []struct {
		name string
		m    *Message
		want error
	}{
		{"unknown kind", &Message{Kind: 0}, ErrUnknownKind},
		{"kind 200", &Message{Kind: 200}, ErrUnknownKind},
		{"too many fds", &Message{Kind: KindUser, FDs: []*os.File{f, f, f}}, ErrTooManyFDs},
		{"two values", &Message{Kind: KindUser, Body: []byte{1, 2}}, &DecodeError{}},
		{"cut short", &Message{Kind: KindUser, Body: []byte{0x92, 1}}, &DecodeError{}},
		{"nil file", &Message{Kind: KindUser, FDs: []*os.File{nil}}, nil},
	}
	for _, tc := range cases {
		err := a.Send(tc.m)
		var de *DecodeError
		switch tc.want.(type) {
		case nil:
			if err == nil {
				t.Errorf("%s: Send() = nil, want an error", tc.name)
			}
		case *DecodeError:
			if !errors.As(err, &de) {
				t.Errorf("%s: Send() = %v, want a *DecodeError", tc.name, err)
			}
		default:
			if !errors.Is(err, tc.want) {
				t.Errorf("%s: Send() = %v, want %v", tc.name, err, tc.want)
			}
		}
	}
	if err := a.Send(nil); err == nil {
		t.Error("Send(nil) = nil, want an error")
	}
	// The connection still works.
	if err := a.Send(&Message{Kind: KindReady}); err != nil {
		t.Fatal(err)
	}
	if m, err := b.Recv(); err != nil || m.Kind != KindReady {
		t.Fatalf("Recv() = %v, %v; want ready", m, err)
	}
}

func TestNewConnErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		opts Options
	}{
		{"negative frame size", Options{MaxFrameSize: -1}},
		{"tiny frame size", Options{MaxFrameSize: 10}},
		{"huge frame size", Options{MaxFrameSize: MaxFrameSizeLimit + 1}},
		{"too many fds", Options{MaxFDs: MaxFDsLimit + 1}},
		{"negative queue", Options{QueueLen: -1}},
		{"negative write buffer", Options{WriteBuffer: -5}},
		{"negative spin", Options{SpinWait: -time.Microsecond}},
		{"long spin", Options{SpinWait: 2 * time.Second}},
	} {
		p, q, err := Pair()
		if err != nil {
			t.Fatal(err)
		}
		q.Close()
		if c, err := NewConn(p, tc.opts); err == nil {
			c.Close()
			t.Errorf("%s: NewConn(%+v) = nil error", tc.name, tc.opts)
		}
	}
	// Not a socket.
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	w.Close()
	if c, err := NewConn(r, Options{}); err == nil {
		c.Close()
		t.Error("NewConn(pipe) = nil error")
	}
	if _, err := NewConn(nil, Options{}); err == nil {
		t.Error("NewConn(nil) = nil error")
	}
}

// TestFlushCancel: Flush gives up when ctx is done while the peer does not read.
func TestFlushCancel(t *testing.T) {
	t.Parallel()
	c, _ := rawPair(t, Options{})
	// The first frame fills the socket buffer and blocks the writer; the second
	// waits behind it.
	big := binBody(t, 512<<10)
	for range 2 {
		if err := c.Send(&Message{Kind: KindUser, Body: big}); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := c.Flush(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Flush() = %v, want context.Canceled", err)
	}
}

// TestSpinWait runs calls with both readers polling before they sleep.
func TestSpinWait(t *testing.T) {
	t.Parallel()
	a, b := newPair(t, Options{SpinWait: 200 * time.Microsecond})
	goServe(t, b, func() {
		for {
			m, err := b.Recv()
			if err != nil {
				return
			}
			if err := b.Send(&Message{Kind: KindResponse, ReplyTo: m.ID, Body: m.Body}); err != nil {
				t.Error(err)
				b.Close() // fails the pending call
				return
			}
		}
	})
	for i := range 200 {
		req, err := NewMessage(KindRequest, i)
		if err != nil {
			t.Fatal(err)
		}
		r, err := a.Call(t.Context(), req)
		if err != nil {
			t.Fatal(err)
		}
		var got int
		if err := r.Decode(&got); err != nil || got != i {
			t.Fatalf("Call(%d) = %d, %v", i, got, err)
		}
	}
}
