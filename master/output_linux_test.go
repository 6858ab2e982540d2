package master

import (
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

func TestOutputsRelayPipes(t *testing.T) {
	fdsBefore := fdCount(t, unix.Getpid())
	var out, errOut syncBuffer
	o, err := newOutputs(&out, &errOut, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	var writers []int
	for i := range 3 {
		r, w, err := pipe()
		if err != nil {
			t.Fatal(err)
		}
		dst := o.stdout
		if i == 2 {
			dst = o.stderr
		}
		if _, err := o.relay(r, dst, "[w"+string(rune('0'+i))+"] ", nil, nil); err != nil {
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
	var out syncBuffer
	o, err := newOutputs(&out, &out, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	r, w, err := pipe()
	if err != nil {
		t.Fatal(err)
	}
	s, err := o.relay(r, o.stdout, "[w0] ", nil, nil)
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
	// The sink writes from its own goroutine.
	want := "[w0] before reap\n[w0] partial\n"
	if !eventually(t, func() bool { return out.String() == want }) {
		t.Errorf("relayed %q, want %q: the line and the flushed partial line", out.String(), want)
	}

	// Retiring a stream whose pipe already ended touches no other stream.
	r1, w1, err := pipe()
	if err != nil {
		t.Fatal(err)
	}
	gone, err := o.relay(r1, o.stdout, "[w1] ", nil, nil)
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
	if _, err := o.relay(r2, o.stdout, "[w2] ", nil, nil); err != nil {
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
	s3, err := o.relay(r3, o.stdout, "[w3] ", nil, nil)
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

// TestOutputsBlockedSink: with a stdout that never returns from Write, the
// relay keeps reading the workers' pipes (a worker writing 16 MiB is never
// blocked by it), pipes are still registered, the output is dropped and
// counted, and wait returns.
func TestOutputsBlockedSink(t *testing.T) {
	w := &blockingWriter{started: make(chan struct{}), release: make(chan struct{})}
	t.Cleanup(func() { close(w.release) })
	var errOut syncBuffer
	o, err := newOutputs(w, &errOut, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	r, wfd, err := pipe()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := o.relay(r, o.stdout, "[w0 pid 1] ", nil, nil); err != nil {
		t.Fatal(err)
	}
	const total = 16 << 20
	wrote := make(chan error, 1)
	go func() {
		line := []byte(strings.Repeat("y", 63) + "\n")
		for n := 0; n < total; n += len(line) {
			if _, err := unix.Write(wfd, line); err != nil {
				wrote <- err
				return
			}
		}
		wrote <- unix.Close(wfd)
	}()
	select {
	case err := <-wrote:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(60 * time.Second): // a failure deadline, not a delay
		t.Fatal("the worker's writes blocked: the relay stopped reading")
	}
	<-w.started
	// A new worker's pipe is registered, and its stderr relayed, meanwhile.
	r2, w2, err := pipe()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := o.relay(r2, o.stderr, "[w1 pid 2] ", nil, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := unix.Write(w2, []byte("still relayed\n")); err != nil {
		t.Fatal(err)
	}
	unix.Close(w2)
	o.wait()
	blocked, _ := o.stdout.dropped()
	// All but what the sink holds (at most twice its buffer) is dropped.
	if prefixed := int64(total / 64 * (64 + len("[w0 pid 1] "))); blocked.bytes < prefixed-2*sinkBuffer {
		t.Errorf("%d bytes dropped of %d relayed to a blocked stdout", blocked.bytes, prefixed)
	}
	if got := errOut.String(); got != "[w1 pid 2] still relayed\n" {
		t.Errorf("stderr = %q while stdout blocked", got)
	}
}
