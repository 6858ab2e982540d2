package ipc

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"testing"
)

// TestProcessRoundTrip runs the real path across a process boundary: the child
// gets its end through ExtraFiles and CLUSTERD_IPC_FD, shakes hands, echoes
// requests with their descriptors, and sends a pipe it created itself.
func TestProcessRoundTrip(t *testing.T) {
	before := countFDs(t)
	// A subtest, so that the child has been waited for (its cleanup) before
	// counting again.
	t.Run("child", func(t *testing.T) {
		ch := startHelper(t, "echo", Options{})
		c := ch.conn
		ctx := t.Context()
		peer, err := c.Handshake(ctx, Hello{PID: os.Getpid(), WorkerID: -1})
		if err != nil {
			t.Fatal(err)
		}
		if peer.PID != ch.cmd.Process.Pid || peer.WorkerID != 7 || peer.Generation != 2 || peer.Version != Version {
			t.Fatalf("Handshake() peer = %+v, want pid %d, worker 7, generation 2, version %d", peer, ch.cmd.Process.Pid, Version)
		}

		// Ordered one-way messages, then a stats call that the child answers
		// after reading all of them.
		const users = 1000
		for i := range users {
			m, err := NewMessage(KindUser, i)
			if err != nil {
				t.Fatal(err)
			}
			if err := c.Send(m); err != nil {
				t.Fatal(err)
			}
		}
		r, err := c.Call(ctx, &Message{Kind: KindStats})
		if err != nil {
			t.Fatal(err)
		}
		var st Stats
		if err := r.Decode(&st); err != nil {
			t.Fatal(err)
		}
		if st.Counters["user"] != users {
			t.Fatalf("child counted %d user messages, want %d", st.Counters["user"], users)
		}

		// Descriptors there and back: a pipe's write end goes to the child and
		// comes back as a new descriptor for the same pipe.
		for i := range 50 {
			pr, pw, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			req, err := NewMessage(KindRequest, "echo "+strconv.Itoa(i))
			if err != nil {
				t.Fatal(err)
			}
			req.FDs = []*os.File{pw}
			r, err := c.Call(ctx, req)
			pw.Close()
			if err != nil {
				t.Fatal(err)
			}
			var body string
			if err := r.Decode(&body); err != nil || body != "echo "+strconv.Itoa(i) {
				t.Fatalf("reply body = %q, %v; want %q", body, err, "echo "+strconv.Itoa(i))
			}
			if len(r.FDs) != 1 {
				t.Fatalf("reply carries %d descriptors, want 1", len(r.FDs))
			}
			if _, err := r.FDs[0].WriteString("ping"); err != nil {
				t.Fatal(err)
			}
			r.CloseFDs()
			got, err := io.ReadAll(pr)
			pr.Close()
			if err != nil || string(got) != "ping" {
				t.Fatalf("read through the returned descriptor = %q, %v; want %q", got, err, "ping")
			}
		}

		// A descriptor the child created.
		req, err := NewMessage(KindRequest, "pipe")
		if err != nil {
			t.Fatal(err)
		}
		r, err = c.Call(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		if len(r.FDs) != 1 {
			t.Fatalf("pipe reply carries %d descriptors, want 1", len(r.FDs))
		}
		got, err := io.ReadAll(r.FDs[0])
		r.CloseFDs()
		if want := "from " + strconv.Itoa(ch.cmd.Process.Pid); err != nil || string(got) != want {
			t.Fatalf("child's pipe = %q, %v; want %q", got, err, want)
		}

		// An unsupported kind comes back as a remote error with a code.
		_, err = c.Call(ctx, &Message{Kind: KindJob})
		var re *RemoteError
		if !errors.As(err, &re) || re.Code != CodeUnsupported {
			t.Fatalf("Call(job) error = %v, want a RemoteError with code %q", err, CodeUnsupported)
		}
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
	})
	if after := countFDs(t); after != before {
		t.Errorf("open descriptors: %d before, %d after", before, after)
	}
}

func countFDs(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestProcessDiesMidFrame: a child that exits in the middle of a frame, after a
// whole one, leaves the parent with that message and then ErrTruncated.
func TestProcessDiesMidFrame(t *testing.T) {
	ch := startHelper(t, "halfframe", Options{})
	m, err := ch.conn.Recv()
	if err != nil || m.Kind != KindReady {
		t.Fatalf("Recv() = %v, %v; want the ready frame", m, err)
	}
	if _, err := ch.conn.Recv(); !errors.Is(err, ErrTruncated) || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("Recv() error = %v, want ErrTruncated", err)
	}
	if err := <-ch.waited; err != nil {
		t.Fatalf("helper: %v", err)
	}
	ch.waited <- nil // for the cleanup
}

// helperHalfFrame writes a whole ready frame and the first half of another
// onto its IPC descriptor, raw, and exits.
func helperHalfFrame() int {
	env, _, err := ParseEnv(os.LookupEnv)
	if err != nil {
		fmt.Fprintln(os.Stderr, "halfframe:", err)
		return 1
	}
	f := os.NewFile(uintptr(env.IPCFD), "ipc")
	frames := appendFrame(nil, &envelope{kind: KindReady})
	half := appendFrame(nil, &envelope{kind: KindUser, body: []byte{0xa5, 'h', 'e', 'l', 'l', 'o'}})
	frames = append(frames, half[:len(half)/2]...)
	if _, err := f.Write(frames); err != nil {
		fmt.Fprintln(os.Stderr, "halfframe:", err)
		return 1
	}
	return 0
}
