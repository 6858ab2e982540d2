package master

import (
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestOutputsRelayPipes(t *testing.T) {
	fdsBefore := fdCount(t, unix.Getpid())
	o, err := newOutputs()
	if err != nil {
		t.Fatal(err)
	}
	var out, errOut syncBuffer
	var writers []int
	for i := range 3 {
		r, w, err := pipe()
		if err != nil {
			t.Fatal(err)
		}
		dst := &out
		if i == 2 {
			dst = &errOut
		}
		if _, err := o.relay(r, dst, "[w"+string(rune('0'+i))+"] "); err != nil {
			t.Fatal(err)
		}
		writers = append(writers, w)
	}
	for i, w := range writers {
		msg := strings.Repeat("line\n", 100) + "tail"
		if _, err := unix.Write(w, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		if i < 2 {
			unix.Close(w) // EOF: the relay closes its read end
		}
	}
	// The third writer stays open: wait relays what it holds and closes it
	// without waiting for its EOF.
	o.wait()
	unix.Close(writers[2])
	if n := strings.Count(out.String(), "[w0] line\n"); n != 100 {
		t.Errorf("worker 0: %d lines relayed, want 100", n)
	}
	if !strings.Contains(out.String(), "[w1] tail\n") {
		t.Errorf("worker 1's last line without newline not relayed:\n%.200s", out.String())
	}
	if n := strings.Count(errOut.String(), "[w2] line\n"); n != 100 || !strings.HasSuffix(errOut.String(), "[w2] tail\n") {
		t.Errorf("worker 2 (pipe still open at wait): %d lines, ends %q", n, errOut.String()[max(0, len(errOut.String())-20):])
	}
	if n := fdCount(t, unix.Getpid()); n != fdsBefore {
		t.Errorf("%d fds after wait, %d before", n, fdsBefore)
	}
}

// A retired stream is relayed up to what its pipe holds and closed, though
// its write end stays open (a child that left the worker's process group
// holds it); a stream that reached EOF first and whose fd number was reused
// is told apart by identity.
func TestOutputsRetire(t *testing.T) {
	fdsBefore := fdCount(t, unix.Getpid())
	o, err := newOutputs()
	if err != nil {
		t.Fatal(err)
	}
	var out syncBuffer
	r, w, err := pipe()
	if err != nil {
		t.Fatal(err)
	}
	s, err := o.relay(r, &out, "[w0] ")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := unix.Write(w, []byte("before reap\npartial")); err != nil {
		t.Fatal(err)
	}
	o.retire(s, nil)
	// The read end is closed once retired: the write end polls POLLERR.
	if !eventually(t, func() bool {
		fds := []unix.PollFd{{Fd: int32(w), Events: unix.POLLOUT}}
		n, err := unix.Poll(fds, 0)
		return err == nil && n == 1 && fds[0].Revents&unix.POLLERR != 0
	}) {
		t.Fatal("retired pipe's read end still open")
	}
	unix.Close(w)
	if got := out.String(); got != "[w0] before reap\n[w0] partial\n" {
		t.Errorf("relayed %q, want the line and the flushed partial line", got)
	}

	// Retiring a stream whose pipe already ended touches no other stream.
	r1, w1, err := pipe()
	if err != nil {
		t.Fatal(err)
	}
	gone, err := o.relay(r1, &out, "[w1] ")
	if err != nil {
		t.Fatal(err)
	}
	unix.Close(w1)
	if !eventually(t, func() bool { return fdCount(t, unix.Getpid()) == fdsBefore+2 }) {
		t.Fatal("relay did not close the read end at EOF")
	}
	r2, w2, err := pipe() // may reuse r1's number
	if err != nil {
		t.Fatal(err)
	}
	if _, err := o.relay(r2, &out, "[w2] "); err != nil {
		t.Fatal(err)
	}
	o.retire(gone)
	if _, err := unix.Write(w2, []byte("still relayed\n")); err != nil {
		t.Fatalf("write to a live stream after retiring another: %v", err)
	}
	if !eventually(t, func() bool { return strings.Contains(out.String(), "[w2] still relayed\n") }) {
		t.Fatalf("live stream stopped after retiring an ended one: %q", out.String())
	}
	// Retired together, an ended stream and a live one: each is matched to
	// its own fd.
	r3, w3, err := pipe()
	if err != nil {
		t.Fatal(err)
	}
	s3, err := o.relay(r3, &out, "[w3] ")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := unix.Write(w3, []byte("last words")); err != nil {
		t.Fatal(err)
	}
	o.retire(gone, s3)
	if !eventually(t, func() bool { return strings.Contains(out.String(), "[w3] last words\n") }) {
		t.Fatalf("stream retired beside an ended one not relayed under its own prefix: %q", out.String())
	}
	unix.Close(w3)
	unix.Close(w2)
	o.wait()
	if n := fdCount(t, unix.Getpid()); n != fdsBefore {
		t.Errorf("%d fds after wait, %d before", n, fdsBefore)
	}
}
