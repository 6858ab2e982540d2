package ipc

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/clusterd/clusterd/sockshare"
)

// newPair returns two connected Conns, closed at cleanup.
func newPair(t testing.TB, opts Options) (a, b *Conn) {
	t.Helper()
	pa, pb, err := Pair()
	if err != nil {
		t.Fatal(err)
	}
	a, err = NewConn(pa, opts)
	if err != nil {
		pb.Close()
		t.Fatal(err)
	}
	b, err = NewConn(pb, opts)
	if err != nil {
		a.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		a.Close()
		b.Close()
	})
	return a, b
}

// goServe runs serve, a peer's loop that returns once c is closed, in a
// goroutine that the test owns: a cleanup closes c and waits for it.
func goServe(t testing.TB, c *Conn, serve func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		serve()
	}()
	t.Cleanup(func() {
		c.Close()
		<-done
	})
}

// rawPair returns a Conn and the other end of its socket as a plain blocking
// file, for a test that plays a misbehaving peer.
func rawPair(t testing.TB, opts Options) (*Conn, *os.File) {
	t.Helper()
	pa, pb, err := Pair()
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewConn(pa, opts)
	if err != nil {
		pb.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		pb.Close()
	})
	return c, pb
}

// sendRaw writes b on the raw end with fds attached to its first byte.
func sendRaw(t testing.TB, raw *os.File, b []byte, fds ...int) {
	t.Helper()
	rc, err := raw.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		for len(b) > 0 && serr == nil {
			var n int
			n, serr = unix.SendmsgN(int(fd), b, sockshare.RightsControl(fds), nil, unix.MSG_NOSIGNAL)
			b, fds = b[n:], nil
		}
	}); err != nil {
		t.Fatal(err)
	}
	if serr != nil {
		t.Fatal(serr)
	}
}

func frameBytes(kind Kind, id, replyTo uint64, nfds int, body []byte) []byte {
	return appendFrame(nil, &envelope{kind: kind, id: id, replyTo: replyTo, nfds: nfds, body: body})
}

// intBody encodes a non-negative int as a msgpack body without the msgpack
// library, so that goroutines other than the test's have no error to report.
func intBody(i int) []byte { return appendUint(nil, uint64(i)) }

func mustEncode(t testing.TB, v any) []byte {
	t.Helper()
	b, err := Encode(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestOrderedDelivery(t *testing.T) {
	t.Parallel()
	a, b := newPair(t, Options{})
	const n = 20000
	errc := make(chan error, 1)
	go func() {
		for i := range n {
			if err := a.Send(&Message{Kind: KindUser, ID: uint64(i + 1), Body: intBody(i)}); err != nil {
				errc <- err
				a.Close() // ends the receiving loop below
				return
			}
		}
		errc <- a.Flush(context.Background())
	}()
	for i := range n {
		m, err := b.Recv()
		if err != nil {
			t.Fatal(err)
		}
		var v int
		if err := m.Decode(&v); err != nil {
			t.Fatal(err)
		}
		if m.Kind != KindUser || m.ID != uint64(i+1) || v != i {
			t.Fatalf("message %d = %s id %d body %d, want user id %d body %d", i, m.Kind, m.ID, v, i+1, i)
		}
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	ca, cb := a.Counters(), b.Counters()
	if ca.Sent != n || cb.Received != n || ca.SentBytes != cb.ReceivedBytes || ca.Writes == 0 || ca.Writes > n || cb.Reads == 0 || cb.Reads > n {
		t.Errorf("counters: sender %+v, receiver %+v; want %d messages each way and matching bytes", ca, cb, n)
	}
}

func TestCallMatching(t *testing.T) {
	t.Parallel()
	a, b := newPair(t, Options{})
	const callers = 100
	// The server collects every request, then answers in reverse order. If it
	// fails, closing its end fails the pending calls.
	serve := func() error {
		var reqs []*Message
		for len(reqs) < callers {
			m, err := b.Recv()
			if err != nil {
				return err
			}
			reqs = append(reqs, m)
		}
		for i := len(reqs) - 1; i >= 0; i-- {
			var s string
			if err := reqs[i].Decode(&s); err != nil {
				return err
			}
			r, err := reqs[i].Reply(KindResponse, s+"!")
			if err != nil {
				return err
			}
			if err := b.Send(r); err != nil {
				return err
			}
		}
		return nil
	}
	goServe(t, b, func() {
		if err := serve(); err != nil {
			t.Error(err)
			b.Close()
		}
	})
	var wg sync.WaitGroup
	for i := range callers {
		wg.Go(func() {
			req, err := NewMessage(KindRequest, fmt.Sprint("call ", i))
			if err != nil {
				t.Error(err)
				return
			}
			r, err := a.Call(t.Context(), req)
			if err != nil {
				t.Error(err)
				return
			}
			var s string
			if err := r.Decode(&s); err != nil || s != fmt.Sprint("call ", i, "!") {
				t.Errorf("Call(%q) = %q, %v; want %q", fmt.Sprint("call ", i), s, err, fmt.Sprint("call ", i, "!"))
			}
		})
	}
	wg.Wait()
}

func TestConcurrentSenders(t *testing.T) {
	t.Parallel()
	a, b := newPair(t, Options{})
	const senders, each = 8, 3000
	var wg sync.WaitGroup
	for s := range senders {
		wg.Go(func() {
			for i := range each {
				if err := a.Send(&Message{Kind: KindUser, ID: uint64(s), Body: intBody(i)}); err != nil {
					t.Error(err)
					a.Close() // ends the receiving loop below
					return
				}
			}
		})
	}
	next := make([]int, senders)
	for range senders * each {
		m, err := b.Recv()
		if err != nil {
			t.Fatal(err)
		}
		var i int
		if err := m.Decode(&i); err != nil {
			t.Fatal(err)
		}
		if m.ID >= senders || next[m.ID] != i {
			t.Fatalf("sender %d: got message %d, want %d", m.ID, i, next[min(int(m.ID), senders-1)])
		}
		next[m.ID]++
	}
	wg.Wait()
}

// binBody returns a msgpack bin body whose frame envelope is exactly size bytes
// (kind user, id and reply-to 0, no descriptors: a 5-byte head).
func binBody(t testing.TB, size int) []byte {
	t.Helper()
	n := size - 5 - 5 // envelope head, bin32 header
	body := binary.BigEndian.AppendUint32([]byte{0xc6}, uint32(n))
	body = append(body, bytes.Repeat([]byte{0xab}, n)...)
	if got := envelopeSize(&envelope{kind: KindUser, body: body}); got != size {
		t.Fatalf("binBody(%d) makes an envelope of %d bytes", size, got)
	}
	return body
}

func TestFrameSizeLimit(t *testing.T) {
	t.Parallel()
	for _, limit := range []int{0, 64 << 10} {
		t.Run(fmt.Sprint(limit), func(t *testing.T) {
			t.Parallel()
			a, b := newPair(t, Options{MaxFrameSize: limit})
			if limit == 0 {
				limit = DefaultMaxFrameSize
			}
			at := binBody(t, limit)
			if err := a.Send(&Message{Kind: KindUser, Body: at}); err != nil {
				t.Fatalf("Send(frame at the limit) = %v", err)
			}
			over := binBody(t, limit+1)
			if err := a.Send(&Message{Kind: KindUser, Body: over}); !errors.Is(err, ErrFrameTooLarge) {
				t.Fatalf("Send(frame over the limit) = %v, want ErrFrameTooLarge", err)
			}
			if err := a.Send(&Message{Kind: KindReady}); err != nil {
				t.Fatalf("Send after a refused frame = %v", err)
			}
			m, err := b.Recv()
			if err != nil || !bytes.Equal(m.Body, at) {
				t.Fatalf("Recv() = %d bytes, %v; want the %d-byte body", len(m.Body), err, len(at))
			}
			if m, err := b.Recv(); err != nil || m.Kind != KindReady {
				t.Fatalf("Recv() = %v, %v; want ready", m, err)
			}
		})
	}
}

// TestBadPeer plays a peer that writes raw bytes: each case must end the
// connection with the right error, close the socket (the peer sees end of
// stream) and leak no descriptor.
func TestBadPeer(t *testing.T) {
	hello := frameBytes(KindUser, 1, 0, 0, mustEncode(t, "ok"))
	cases := []struct {
		name  string
		bytes []byte
		fds   int  // descriptors attached to the first byte
		close bool // close the raw end after writing
		want  error
	}{
		{"over limit", binary.BigEndian.AppendUint32(nil, 1024+1), 0, false, ErrFrameTooLarge},
		{"huge length", []byte{0xff, 0xff, 0xff, 0xff}, 0, false, ErrFrameTooLarge},
		{"garbage", []byte("\x00\x00\x00\x03abc"), 0, false, &DecodeError{}},
		{"empty envelope", []byte{0, 0, 0, 0}, 0, false, &DecodeError{}},
		{"not an array", []byte("\x00\x00\x00\x01\xc0"), 0, false, &DecodeError{}},
		{"short array", []byte("\x00\x00\x00\x05\x94\x08\x00\x00\x00"), 0, false, &DecodeError{}},
		{"unknown kind", frameBytes(99, 0, 0, 0, nil), 0, false, ErrUnknownKind},
		{"kind zero", frameBytes(0, 0, 0, 0, nil), 0, false, ErrUnknownKind},
		{"bad body", []byte("\x00\x00\x00\x07\x95\x08\x00\x00\x00\xc4\x05"), 0, false, &DecodeError{}},
		{"trailing bytes", []byte("\x00\x00\x00\x08\x95\x08\x00\x00\x00\xc0\xc0\xc0"), 0, false, &DecodeError{}},
		{"reserved byte", []byte("\x00\x00\x00\x06\x95\x08\x00\x00\x00\xc1"), 0, false, &DecodeError{}},
		{"declares too many fds", frameBytes(KindUser, 0, 0, 17, nil), 0, false, ErrTooManyFDs},
		{"declares fds, none sent", frameBytes(KindUser, 0, 0, 1, nil), 0, false, ErrProtocol},
		{"fds not declared", frameBytes(KindUser, 0, 0, 0, nil), 2, true, ErrProtocol},
		{"fds count mismatch", frameBytes(KindUser, 0, 0, 1, nil), 2, false, ErrProtocol},
		{"too many fds sent", frameBytes(KindUser, 0, 0, 17, nil), 17, false, ErrTooManyFDs},
		{"far too many fds sent", frameBytes(KindUser, 0, 0, 40, nil), 40, false, ErrTooManyFDs},
		{"closes mid length", []byte{0, 0}, 0, true, ErrTruncated},
		{"closes mid frame", hello[:len(hello)-1], 0, true, io.ErrUnexpectedEOF},
		{"closes mid frame with fds", frameBytes(KindUser, 0, 0, 1, nil)[:6], 1, true, ErrTruncated},
		{"clean close", nil, 0, true, io.EOF},
	}
	before := countFDs(t)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, raw := rawPair(t, Options{MaxFrameSize: 1024})
			// A good frame first: it must still be delivered before the error.
			sendRaw(t, raw, hello)
			var fds []int
			for range tc.fds {
				f, err := os.Open(os.DevNull)
				if err != nil {
					t.Fatal(err)
				}
				fds = append(fds, int(f.Fd()))
				defer f.Close()
			}
			if len(tc.bytes) > 0 {
				sendRaw(t, raw, tc.bytes, fds...)
			}
			if tc.close {
				raw.Close()
			}
			m, err := c.Recv()
			if err != nil || m.ID != 1 {
				t.Fatalf("Recv() = %v, %v; want the good frame first", m, err)
			}
			_, err = c.Recv()
			t.Logf("Recv() error: %v", err)
			var de *DecodeError
			switch want := tc.want.(type) {
			case *DecodeError:
				if !errors.As(err, &de) {
					t.Fatalf("Recv() error = %v, want a *DecodeError", err)
				}
			default:
				if !errors.Is(err, want) {
					t.Fatalf("Recv() error = %v, want %v", err, want)
				}
			}
			if _, err2 := c.Recv(); err2 == nil || err2.Error() != err.Error() {
				t.Fatalf("second Recv() error = %v, want the same %v", err2, err)
			}
			if err := c.Send(&Message{Kind: KindReady}); err == nil {
				t.Fatalf("Send on a failed connection = nil, want an error")
			}
			if !tc.close {
				// The connection is closed: the peer reads end of stream.
				if n, rerr := raw.Read(make([]byte, 64)); n != 0 || rerr != io.EOF {
					t.Fatalf("peer read after the error = %d, %v; want end of stream", n, rerr)
				}
			}
		})
	}
	if after := countFDs(t); after != before {
		t.Errorf("open descriptors: %d before, %d after", before, after)
	}
}

func TestDescriptorRoundTrips(t *testing.T) {
	before := countFDs(t)
	t.Run("pair", func(t *testing.T) {
		a, b := newPair(t, Options{})
		pr, pw, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		defer pr.Close()
		defer pw.Close()
		const rounds = 2000
		goServe(t, b, func() {
			for {
				m, err := b.Recv()
				if err != nil {
					return
				}
				// Echo the descriptors back, then drop ours.
				r := &Message{Kind: KindResponse, ReplyTo: m.ID, FDs: m.FDs}
				err = b.Send(r)
				m.CloseFDs()
				if err != nil {
					t.Error(err)
					b.Close() // fails the pending call
					return
				}
			}
		})
		for i := range rounds {
			m := &Message{Kind: KindRequest, FDs: []*os.File{pw, pr}}
			if i%2 == 1 {
				m.FDs = m.FDs[:1]
			}
			r, err := a.Call(t.Context(), m)
			if err != nil {
				t.Fatal(err)
			}
			if len(r.FDs) != len(m.FDs) {
				t.Fatalf("round %d: %d descriptors back, want %d", i, len(r.FDs), len(m.FDs))
			}
			if i == 0 {
				for _, f := range r.FDs {
					flags, err := unix.FcntlInt(f.Fd(), unix.F_GETFD, 0)
					if err != nil || flags&unix.FD_CLOEXEC == 0 {
						t.Fatalf("received %s: flags %#x, %v; want close-on-exec", f.Name(), flags, err)
					}
				}
			}
			if i%500 == 0 {
				if _, err := r.FDs[0].Write([]byte{byte(i)}); err != nil {
					t.Fatal(err)
				}
				var got [1]byte
				if _, err := io.ReadFull(pr, got[:]); err != nil || got[0] != byte(i) {
					t.Fatalf("round %d: read %v, %v through the returned pipe", i, got, err)
				}
			}
			if err := r.CloseFDs(); err != nil {
				t.Fatal(err)
			}
		}
		// A reply can overtake the writer's bookkeeping of its request.
		if err := a.Flush(t.Context()); err != nil {
			t.Fatal(err)
		}
		if ca := a.Counters(); ca.SentFDs != rounds*3/2 || ca.ReceivedFDs != rounds*3/2 {
			t.Errorf("counters %+v, want %d descriptors each way", ca, rounds*3/2)
		}
	})
	t.Run("queued at close", func(t *testing.T) {
		a, b := newPair(t, Options{})
		f, err := os.Open(os.DevNull)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		for range 20 {
			if err := a.Send(&Message{Kind: KindUser, FDs: []*os.File{f, f, f}}); err != nil {
				t.Fatal(err)
			}
		}
		if err := a.Flush(t.Context()); err != nil {
			t.Fatal(err)
		}
		// Take one so that the rest have surely been read into the queue or
		// the socket; Close must release both.
		m, err := b.Recv()
		if err != nil {
			t.Fatal(err)
		}
		m.CloseFDs()
		b.Close()
		a.Close()
	})
	t.Run("unsent at close", func(t *testing.T) {
		// The peer never reads: the writer blocks in sendmsg once the socket
		// buffer is full, and later frames with descriptors stay queued.
		c, raw := rawPair(t, Options{WriteBuffer: 64 << 10})
		f, err := os.Open(os.DevNull)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		big := binBody(t, 60<<10)
		for {
			if err := c.Send(&Message{Kind: KindUser, Body: big}); err != nil {
				t.Fatal(err)
			}
			if err := c.Send(&Message{Kind: KindUser, FDs: []*os.File{f}}); err != nil {
				t.Fatal(err)
			}
			c.wmu.Lock()
			queued := len(c.wsegs)
			c.wmu.Unlock()
			if queued > 0 {
				break // a frame with a descriptor waits behind a blocked write
			}
		}
		c.Close()
		raw.Close()
	})
	if after := countFDs(t); after != before {
		t.Errorf("open descriptors: %d before, %d after", before, after)
	}
}

// TestSendJob: a job sent with SendJob arrives as the Job it encodes, and a
// body that is not one msgpack value or is over the frame limit is
// refused before anything is written.
func TestSendJob(t *testing.T) {
	t.Parallel()
	a, b := newPair(t, Options{MaxFrameSize: 1 << 10})
	var de *DecodeError
	if err := a.SendJob(5, 2, []byte{0x01, 0x02}); !errors.As(err, &de) {
		t.Errorf("two values as a body: %v, want a DecodeError", err)
	}
	if err := a.SendJob(5, 2, append([]byte{0xc5, 0x08, 0x00}, make([]byte, 2048)...)); !errors.Is(err, ErrFrameTooLarge) {
		t.Errorf("a body over MaxFrameSize: %v, want ErrFrameTooLarge", err)
	}
	body, err := Encode(map[string]int{"seq": 7})
	if err != nil {
		t.Fatal(err)
	}
	for i, j := range []Job{{Attempt: 3, Body: body}, {Attempt: 1}} {
		if err := a.SendJob(uint64(10+i), j.Attempt, j.Body); err != nil {
			t.Fatal(err)
		}
		m, err := b.Recv()
		if err != nil {
			t.Fatal(err)
		}
		var got Job
		if err := m.DecodeJob(&got); err != nil {
			t.Fatal(err)
		}
		if m.Kind != KindJob || m.ID != uint64(10+i) || got.Attempt != j.Attempt || !bytes.Equal(got.Body, j.Body) {
			t.Errorf("received %v id %d, job %+v, want a job id %d %+v", m.Kind, m.ID, got, 10+i, j)
		}
	}
}
