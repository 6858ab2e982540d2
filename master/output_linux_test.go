package master

import (
	"strings"
	"testing"
	"time"

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
		if err := o.relay(r, dst, "[w"+string(rune('0'+i))+"] "); err != nil {
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
	// The third writer stays open: wait gives up on it after the grace.
	start := time.Now()
	o.wait(200 * time.Millisecond)
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Errorf("wait returned after %v with a pipe still open, want the 200ms grace", d)
	}
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
