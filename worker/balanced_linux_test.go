package worker

import (
	"context"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/clusterd/clusterd/ipc"
)

// handoffPair returns the master's and the worker's ends of an IPC
// connection, past their hellos.
func handoffPair(t *testing.T) (master, worker *ipc.Conn) {
	t.Helper()
	parent, child, err := ipc.Pair()
	if err != nil {
		t.Fatal(err)
	}
	master, err = ipc.NewConn(parent, ipc.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { master.Close() })
	worker, err = ipc.NewConn(child, ipc.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { worker.Close() })
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	errs := make(chan error, 1)
	go func() {
		_, err := worker.Handshake(ctx, ipc.Hello{PID: os.Getpid()})
		errs <- err
	}()
	if _, err := master.Handshake(ctx, ipc.Hello{PID: os.Getpid(), WorkerID: -1}); err != nil {
		t.Fatal(err)
	}
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
	return master, worker
}

// handConn sends the server end of a new loopback TCP connection from the
// master's end to the worker's, as the master's accepter does, and has the
// worker's reader take it. The client has written "ping" on it.
func handConn(t *testing.T, h *handoff, master, worker *ipc.Conn, id int) {
	t.Helper()
	server, client := tcpPair(t) // closed by tcpPair's cleanup
	if _, err := io.WriteString(client, "ping"); err != nil {
		t.Fatal(err)
	}
	f, err := server.(*net.TCPConn).File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	server.Close() // f holds the connection
	if err := master.SendFDs(ipc.KindConn, uint8(id), []int{int(f.Fd())}); err != nil {
		t.Fatal(err)
	}
	m, err := worker.Recv()
	if err != nil || m.Kind != ipc.KindConn || len(m.FDs) != 1 {
		t.Fatalf("worker got %v, %v; want a conn message with 1 descriptor", m, err)
	}
	h.receive(worker, m)
}

// A connection the master hands to a listener the program has closed goes
// back to the master, also when it comes after the close. The reader once
// made a new listener in the closed one's place, which no Accept ever read:
// the connection was reported received, so the master dropped its copy, and
// the worker's exit reset it (the resets of a balanced rolling reload).
func TestHandoffGivesBackAfterClose(t *testing.T) {
	master, worker := handoffPair(t)
	h := &handoff{kick: make(chan struct{}, 1)}
	l := h.listener(0, &net.TCPAddr{})
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	handConn(t, h, master, worker, 0)

	var back *os.File
	for {
		m, err := master.Recv()
		if err != nil {
			t.Fatalf("master: %v", err)
		}
		if len(m.FDs) > 0 {
			var id int
			if err := m.Decode(&id); err != nil || id != 0 || len(m.FDs) != 1 {
				t.Fatalf("given back: %d descriptors for listener %v (%v); want 1 for listener 0", len(m.FDs), m.Body, err)
			}
			back = m.FDs[0]
			t.Cleanup(func() { back.Close() })
			continue
		}
		var r ipc.ConnReport
		if err := m.Decode(&r); err != nil {
			t.Fatal(err)
		}
		if r.Received < 1 {
			continue
		}
		// The report follows what was given back on the stream.
		if back == nil || r.Closed != 1 {
			t.Fatalf("worker reported %+v with nothing given back (given back: %v); want the connection given back and counted closed", r, back != nil)
		}
		break
	}
	// It is the very connection, with the client's request unread.
	c, err := net.FileConn(back)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("given-back connection read %q, %v; want the client's ping", buf, err)
	}
	if n := len(h.byID[0].conns); n != 0 {
		t.Errorf("%d connections queued on listener 0 after its close, want none", n)
	}

	// Listening again makes a new listener, which takes connections.
	l2 := h.listener(0, &net.TCPAddr{})
	if l2 == l {
		t.Fatal("Listen after Close returned the closed listener")
	}
	handConn(t, h, master, worker, 0)
	accepted, err := l2.Accept()
	if err != nil {
		t.Fatal(err)
	}
	accepted.Close()
}

// Connections the master sends before Listen has taken its reply (both come
// on the one stream) wait for Listen's listener.
func TestHandoffQueuesBeforeListen(t *testing.T) {
	master, worker := handoffPair(t)
	h := &handoff{kick: make(chan struct{}, 1)}
	handConn(t, h, master, worker, 3)
	l := h.listener(3, &net.TCPAddr{})
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("accepted connection read %q, %v; want the client's ping", buf, err)
	}
}
