package master

import (
	"errors"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
)

// blockingWriter blocks every Write until release is closed; started
// receives once when the first Write has begun.
type blockingWriter struct {
	started chan struct{}
	release chan struct{}
	once    sync.Once
}

func (w *blockingWriter) Write(p []byte) (int, error) {
	w.once.Do(func() { close(w.started) })
	<-w.release
	return len(p), nil
}

func sinkLog() (hclog.Logger, *syncBuffer) {
	var buf syncBuffer
	return hclog.New(&hclog.LoggerOptions{Output: &buf, Level: hclog.Trace}), &buf
}

// TestSinkBlockedWriter: a writer that never returns costs dropped,
// counted whole lines once the buffer is full; append never blocks, and
// close gives up on the writer and reports the count.
func TestSinkBlockedWriter(t *testing.T) {
	w := &blockingWriter{started: make(chan struct{}), release: make(chan struct{})}
	t.Cleanup(func() { close(w.release) }) // lets the abandoned goroutine end
	log, logs := sinkLog()
	const limit = 1 << 10
	s := newSink("stdout", w, log, limit)
	line := []byte(strings.Repeat("x", 99) + "\n") // 100 bytes
	s.append(line)
	<-w.started // the writer holds the first line, blocked
	done := make(chan struct{})
	go func() {
		defer close(done)
		// 10 more lines fit (1000 of 1024 bytes); the other 990 are dropped,
		// whole: a batch of three lines that does not fit keeps the two that do.
		for range 330 {
			s.append(append(append(append([]byte(nil), line...), line...), line...))
		}
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second): // a failure deadline, not a delay
		t.Fatal("append blocked on a writer that blocks")
	}
	blocked, failed := s.dropped()
	if blocked.lines != 980 || blocked.bytes != 98000 || failed.lines != 0 {
		t.Errorf("dropped %+v blocked and %+v failed, want 980 lines (98000 bytes) blocked", blocked, failed)
	}
	s.close() // abandons the writer after sinkStall without progress
	blocked, _ = s.dropped()
	// The 10 lines still queued are lost as well.
	if blocked.lines != 990 {
		t.Errorf("after close: %d lines dropped, want 990", blocked.lines)
	}
	if got := strings.Count(logs.String(), "worker output dropped"); got != 1 {
		t.Errorf("%d reports of dropped output, want 1:\n%s", got, logs)
	}
	if !strings.Contains(logs.String(), "lines=990 bytes=99000") {
		t.Errorf("report lacks the count:\n%s", logs)
	}
}

// failingWriter fails every Write with err, counting the calls.
type failingWriter struct {
	mu    sync.Mutex
	err   error
	calls int
}

func (w *failingWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.calls++
	return 0, w.err
}

// TestSinkFailedWriter: a writer that fails (a broken pipe) is reported
// once when it first fails, its output counted and reported at close.
func TestSinkFailedWriter(t *testing.T) {
	w := &failingWriter{err: &pathError{syscall.EPIPE}}
	log, logs := sinkLog()
	s := newSink("stderr", w, log, sinkBuffer)
	for i := range 50 {
		s.append([]byte("line " + string(rune('a'+i%26)) + "\n"))
	}
	s.close()
	_, failed := s.dropped()
	if failed.lines != 50 || failed.bytes != 50*7 {
		t.Errorf("failed %+v, want 50 lines of 7 bytes", failed)
	}
	out := logs.String()
	if n := strings.Count(out, "worker output write failed"); n != 1 {
		t.Errorf("%d write failure reports, want 1:\n%s", n, out)
	}
	if !strings.Contains(out, "sink=stderr") || !strings.Contains(out, "broken pipe") {
		t.Errorf("report does not name the sink and the error:\n%s", out)
	}
	if !strings.Contains(out, `worker output dropped: sink=stderr reason="write failed" lines=50 bytes=350`) {
		t.Errorf("close does not report the lost lines:\n%s", out)
	}
}

type pathError struct{ err error }

func (e *pathError) Error() string { return "write /dev/stdout: " + e.err.Error() }
func (e *pathError) Unwrap() error { return e.err }

// TestSinkRecovers: once a blocked writer moves again, its next
// successful write reports the burst of dropped lines, once, and the lines
// that fit are written in order.
func TestSinkRecovers(t *testing.T) {
	w := &blockingWriter{started: make(chan struct{}), release: make(chan struct{})}
	var out syncBuffer
	log, logs := sinkLog()
	s := newSink("stdout", &gatedWriter{w: w, out: &out}, log, 100)
	s.append([]byte("first\n"))
	<-w.started
	for range 100 {
		s.append([]byte("0123456789\n")) // 9 fit in 100 bytes
	}
	close(w.release)
	s.close()
	if want := "first\n" + strings.Repeat("0123456789\n", 9); out.String() != want {
		t.Errorf("written %q, want %q", out.String(), want)
	}
	if n := strings.Count(logs.String(), "worker output dropped"); n != 1 {
		t.Errorf("%d drop reports, want 1 (one burst):\n%s", n, logs)
	}
	if !strings.Contains(logs.String(), `reason="sink blocked" lines=91 bytes=1001`) {
		t.Errorf("burst report lacks the count:\n%s", logs)
	}
}

// gatedWriter writes to out after w lets it.
type gatedWriter struct {
	w   *blockingWriter
	out *syncBuffer
}

func (g *gatedWriter) Write(p []byte) (int, error) {
	g.w.Write(p)
	return g.out.Write(p)
}

func TestSameWriter(t *testing.T) {
	var a, b syncBuffer
	if !sameWriter(&a, &a) || sameWriter(&a, &b) {
		t.Error("sameWriter does not tell pointers apart")
	}
	// Uncomparable dynamic types must not panic.
	if sameWriter(writerFunc(nil), writerFunc(nil)) || sameWriter(writerFunc(nil), &a) {
		t.Error("sameWriter of different or uncomparable writers")
	}
	if !errors.Is(&pathError{syscall.EPIPE}, syscall.EPIPE) {
		t.Error("pathError does not unwrap")
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// TestSinkTakesOneLargeBatch: a batch larger than the buffer (a read full
// of empty lines, each given a prefix) is not dropped by an idle sink.
func TestSinkTakesOneLargeBatch(t *testing.T) {
	var out syncBuffer
	s := newSink("stdout", &out, hclog.NewNullLogger(), 100)
	big := []byte(strings.Repeat("[w0 pid 1] \n", 50)) // 600 bytes
	s.append(big)
	s.close()
	if blocked, _ := s.dropped(); blocked.bytes != 0 || out.String() != string(big) {
		t.Errorf("wrote %d of %d bytes, dropped %+v", len(out.String()), len(big), blocked)
	}
}
