package main

import (
	"bytes"
	"sync"
	"syscall"
	"testing"
	"time"
)

type brokenWriter struct{}

func (brokenWriter) Write([]byte) (int, error) { return 0, syscall.EPIPE }

// lockedBuffer is a bytes.Buffer safe for concurrent use.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// TestLogWriterBrokenStderr: when stderr breaks, the master's log says so
// once on stdout, and how many lines it lost when the master ends.
func TestLogWriterBrokenStderr(t *testing.T) {
	var alt lockedBuffer
	l := newLogWriter(brokenWriter{}, &alt)
	for range 3 {
		if _, err := l.Write([]byte("a log line\n")); err != nil {
			t.Fatalf("Write: %v", err)
		}
	}
	l.close()
	want := "clusterd: the master's log cannot be written to stderr (broken pipe); its lines are dropped from now on\n" +
		"clusterd: 3 lines of the master's log were dropped: stderr could not take them\n"
	if got := alt.String(); got != want {
		t.Errorf("stdout got %q, want %q", got, want)
	}
}

// TestLogWriterWorkingStderr: lines arrive in order, nothing on stdout.
func TestLogWriterWorkingStderr(t *testing.T) {
	var out, alt lockedBuffer
	l := newLogWriter(&out, &alt)
	l.Write([]byte("one\n"))
	l.Write([]byte("two\n"))
	l.close()
	if out.String() != "one\ntwo\n" || alt.String() != "" {
		t.Errorf("stderr %q, stdout %q; want the two lines on stderr only", out.String(), alt.String())
	}
}

// stuckWriter blocks every Write until release is closed.
type stuckWriter struct{ release chan struct{} }

func (w stuckWriter) Write(p []byte) (int, error) {
	<-w.release
	return len(p), nil
}

// TestLogWriterBlockedStderr: a stderr nobody reads never blocks the
// master's logging; the lines it could not take are counted.
func TestLogWriterBlockedStderr(t *testing.T) {
	w := stuckWriter{release: make(chan struct{})}
	defer close(w.release)
	var alt lockedBuffer
	l := newLogWriter(w, &alt)
	const n = 2 * logQueue
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range n {
			l.Write([]byte("log line\n"))
		}
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second): // a failure deadline, not a delay
		t.Fatal("logging blocked on a stderr that takes nothing")
	}
	l.close() // gives up after logStall without progress
	// Every line is lost: queued, dropped, or in the Write that never
	// returned.
	if want := "clusterd: 8192 lines of the master's log were dropped: stderr could not take them\n"; alt.String() != want {
		t.Errorf("stdout got %q, want %q", alt.String(), want)
	}
}
