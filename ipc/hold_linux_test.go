package ipc

import (
	"context"
	"testing"
)

// recvKind reads the next message of c and checks its kind and body.
func recvKind(t *testing.T, c *Conn, kind Kind, body int) *Message {
	t.Helper()
	m, err := c.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var v int
	if err := m.Decode(&v); err != nil {
		t.Fatal(err)
	}
	if m.Kind != kind || v != body {
		t.Fatalf("got %s %d, want %s %d", m.Kind, v, kind, body)
	}
	return m
}

func TestHoldWritesNothingUntilResume(t *testing.T) {
	t.Parallel()
	a, b := newPair(t, Options{})
	ctx := context.Background()
	if err := a.Send(&Message{Kind: KindUser, Body: intBody(1)}); err != nil {
		t.Fatal(err)
	}
	if err := a.Hold(&Message{Kind: KindUser, Body: intBody(2)}); err != nil {
		t.Fatal(err)
	}
	if err := a.Hold(nil); err != ErrHeld {
		t.Fatalf("second Hold: %v, want ErrHeld", err)
	}
	if err := a.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	written := a.Counters().SentBytes
	for i := 3; i <= 5; i++ {
		if err := a.Send(&Message{Kind: KindUser, Body: intBody(i)}); err != nil {
			t.Fatal(err)
		}
	}
	// Held frames are not part of what Flush waits for, and the writer
	// leaves them alone.
	if err := a.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got := a.Counters().SentBytes; got != written {
		t.Fatalf("held: %d bytes written, want %d", got, written)
	}
	recvKind(t, b, KindUser, 1)
	recvKind(t, b, KindUser, 2)
	if err := a.Resume(&Message{Kind: KindHello, Body: intBody(0)}, false); err != nil {
		t.Fatal(err)
	}
	recvKind(t, b, KindHello, 0)
	for i := 3; i <= 5; i++ {
		recvKind(t, b, KindUser, i)
	}
}

func TestResumeSendsPendingCallsAgain(t *testing.T) {
	t.Parallel()
	a, b := newPair(t, Options{})
	type result struct {
		v   int
		err error
	}
	call := func(body int) chan result {
		ch := make(chan result, 1)
		go func() {
			r, err := a.Call(context.Background(), &Message{Kind: KindRequest, Body: intBody(body)})
			var v int
			if err == nil {
				err = r.Decode(&v)
			}
			ch <- result{v, err}
		}()
		return ch
	}
	first := call(10)
	req := recvKind(t, b, KindRequest, 10) // read by the image that goes away
	if err := a.Hold(nil); err != nil {
		t.Fatal(err)
	}
	heldOne := make(chan struct{})
	a.onHeld = func() { close(heldOne) }
	second := call(20) // made while held: sent once, after the resend
	<-heldOne
	if err := a.Resume(&Message{Kind: KindHello, Body: intBody(0)}, true); err != nil {
		t.Fatal(err)
	}
	recvKind(t, b, KindHello, 0)
	again := recvKind(t, b, KindRequest, 10)
	if again.ID != req.ID {
		t.Fatalf("resent request id %d, want %d", again.ID, req.ID)
	}
	req2 := recvKind(t, b, KindRequest, 20)
	if err := a.Send(&Message{Kind: KindUser, Body: intBody(99)}); err != nil {
		t.Fatal(err)
	}
	recvKind(t, b, KindUser, 99) // nothing was sent twice but the first call
	for _, r := range []*Message{again, req2} {
		var v int
		if err := r.Decode(&v); err != nil {
			t.Fatal(err)
		}
		reply, err := r.Reply(KindResponse, v+1)
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Send(reply); err != nil {
			t.Fatal(err)
		}
	}
	if r := <-first; r.err != nil || r.v != 11 {
		t.Fatalf("first call: %d, %v", r.v, r.err)
	}
	if r := <-second; r.err != nil || r.v != 21 {
		t.Fatalf("second call: %d, %v", r.v, r.err)
	}
}
