package master

import (
	"bytes"
	"io"
	"reflect"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
)

// Sinks: where relayed worker output is written.
//
// The relay never writes to Options.Stdout or Options.Stderr itself: it
// appends whole lines to a sink's bounded buffer, and the sink's own
// goroutine writes them out, the whole buffer in one Write. A writer that
// blocks (a pipe nobody drains, a stopped terminal) therefore stalls only
// that goroutine; once the buffer is full, further lines are dropped and
// counted, and the relay keeps reading the workers' pipes, so no worker
// ever blocks on its stdout because of the master's. A writer that fails
// (EPIPE once the reader of a pipe is gone) costs the lines it was given,
// counted as well. Both are reported in the master's log: a failure once,
// when it first happens; dropped output once per burst (on the next
// successful write, at most every sinkReportEvery) and at close.

const (
	// sinkBuffer bounds the bytes a sink holds while its writer is busy.
	// The writer takes the whole buffer at once, so a sink holds at most
	// twice this much.
	sinkBuffer = 256 << 10
	// sinkReportEvery spaces the reports of dropped output of a sink that
	// keeps falling behind.
	sinkReportEvery = 10 * time.Second
	// sinkStall is how long close waits for a writer that makes no
	// progress before it abandons what is left.
	sinkStall = time.Second
)

// sink writes relayed output to one io.Writer from its own goroutine.
// append is safe for concurrent use and never blocks on the writer.
type sink struct {
	name  string // "stdout" or "stderr", for the log
	w     io.Writer
	log   hclog.Logger
	limit int

	mu        sync.Mutex
	buf       []byte // whole lines waiting for the writer
	spare     []byte // the writer's last buffer, for reuse
	closing   bool
	abandoned bool   // close returned: a late Write's outcome is not logged
	progress  uint64 // Write calls completed
	taken     uint64 // buffers the writer took (progress lags while one is written)
	// Output not written since the last report, by cause.
	blocked, failed counter
	// Totals for the life of the sink.
	totalBlocked, totalFailed counter
	failure                   error // the first write error
	reported                  time.Time

	wake chan struct{} // capacity 1: there is work, or close
	done chan struct{} // closed when the writer goroutine returns
}

// counter counts dropped output.
type counter struct{ lines, bytes int64 }

func (c *counter) add(p []byte) {
	c.lines += int64(bytes.Count(p, []byte{'\n'}))
	if len(p) > 0 && p[len(p)-1] != '\n' {
		c.lines++ // a piece of a line counts as one
	}
	c.bytes += int64(len(p))
}

func newSink(name string, w io.Writer, log hclog.Logger, limit int) *sink {
	s := &sink{
		name: name, w: w, log: log, limit: limit,
		wake: make(chan struct{}, 1),
		done: make(chan struct{}),
	}
	go s.run()
	return s
}

// append queues p, which should end with a newline, for writing. What does
// not fit in the buffer (limit bytes, or p alone when the buffer is empty)
// is dropped at a line boundary and counted. It never blocks on the writer
// and does not keep p.
func (s *sink) append(p []byte) {
	if len(p) == 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	room := s.limit - len(s.buf)
	switch {
	case s.closing:
		room = 0
	case len(s.buf) == 0:
		// One feed's batch always fits an empty buffer, however many
		// tiny lines its prefixes made it (at most 17 x 64 KiB).
		room = max(room, len(p))
	}
	if room < len(p) {
		keep := 0
		if room > 0 {
			keep = bytes.LastIndexByte(p[:room], '\n') + 1
		}
		s.blocked.add(p[keep:])
		s.totalBlocked.add(p[keep:])
		p = p[:keep]
	}
	if len(p) == 0 {
		return
	}
	if len(s.buf) == 0 {
		select {
		case s.wake <- struct{}{}:
		default: // already woken
		}
	}
	s.buf = append(s.buf, p...)
}

func (s *sink) run() {
	defer close(s.done)
	// Ends once close closed wake and nothing is queued.
	for range s.wake {
		for s.writeQueued() {
		}
	}
}

// writeQueued writes everything queued in one Write and reports whether
// there was anything. Only the sink's goroutine calls it.
func (s *sink) writeQueued() bool {
	s.mu.Lock()
	out := s.buf
	s.buf = s.spare[:0]
	s.spare = nil
	if len(out) > 0 {
		s.taken++
	}
	s.mu.Unlock()
	if len(out) == 0 {
		return false
	}
	n, err := s.w.Write(out)
	s.wrote(out, n, err)
	return true
}

// wrote records the outcome of one Write of out and reports what is due.
func (s *sink) wrote(out []byte, n int, err error) {
	if err == nil && n < len(out) {
		err = io.ErrShortWrite
	}
	s.mu.Lock()
	s.progress++
	first := false
	if err != nil {
		s.failed.add(out[max(n, 0):])
		s.totalFailed.add(out[max(n, 0):])
		if s.failure == nil {
			s.failure, first = err, true
		}
	}
	var blocked counter
	now := time.Now()
	if err == nil && s.blocked.bytes > 0 && now.Sub(s.reported) >= sinkReportEvery {
		blocked, s.blocked = s.blocked, counter{}
		s.reported = now
	}
	if cap(out) <= 2*s.limit {
		s.spare = out[:0] // reuse, unless a long line made it large
	}
	quiet := s.abandoned
	s.mu.Unlock()
	if quiet {
		return
	}
	if first {
		// Said once; what is lost from here on is counted and reported
		// at close.
		s.log.Warn("worker output write failed", "sink", s.name, "error", err)
	}
	if blocked.bytes > 0 {
		s.log.Warn("worker output dropped", "sink", s.name, "reason", "sink blocked",
			"lines", blocked.lines, "bytes", blocked.bytes)
	}
}

// close writes what is queued and stops the writer goroutine. A writer
// that makes no progress for sinkStall is abandoned: close returns, and
// its goroutine ends once the blocked Write returns (a write that never
// returns keeps it, and the writer, forever; nothing else waits for it).
// It then reports the output that was never written. Called once, after
// the relay stopped appending.
// flush waits, at most until deadline, until everything appended so far
// is written (an upgrade's exec would drop it), and reports whether it is.
func (s *sink) flush(deadline time.Time) bool {
	for {
		s.mu.Lock()
		done := len(s.buf) == 0 && s.progress == s.taken
		s.mu.Unlock()
		if done {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(time.Millisecond)
	}
}

func (s *sink) close() {
	s.mu.Lock()
	s.closing = true
	close(s.wake) // under mu: append sends only while not closing
	s.mu.Unlock()
	var seen uint64
	t := time.NewTimer(sinkStall)
	defer t.Stop()
wait:
	for {
		select {
		case <-s.done:
			break wait
		case <-t.C:
			s.mu.Lock()
			p := s.progress
			s.mu.Unlock()
			if p == seen {
				break wait
			}
			seen = p
			t.Reset(sinkStall)
		}
	}
	s.mu.Lock()
	s.abandoned = true
	// Whatever is still queued will not be written by us.
	s.blocked.add(s.buf)
	s.totalBlocked.add(s.buf)
	s.buf = nil
	blocked, failed, ferr := s.blocked, s.failed, s.failure
	s.blocked, s.failed = counter{}, counter{}
	s.mu.Unlock()
	if blocked.bytes > 0 {
		s.log.Warn("worker output dropped", "sink", s.name, "reason", "sink blocked",
			"lines", blocked.lines, "bytes", blocked.bytes)
	}
	if failed.bytes > 0 {
		s.log.Warn("worker output dropped", "sink", s.name, "reason", "write failed",
			"lines", failed.lines, "bytes", failed.bytes, "error", ferr)
	}
}

// dropped returns the output dropped so far because the buffer was full
// and because writes failed.
func (s *sink) dropped() (blocked, failed counter) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.totalBlocked, s.totalFailed
}

// sameWriter reports whether a and b are the same writer, which must then
// be written from one goroutine (it need not be safe for concurrent use).
func sameWriter(a, b io.Writer) bool {
	ta, tb := reflect.TypeOf(a), reflect.TypeOf(b)
	return ta == tb && ta != nil && ta.Comparable() && a == b
}
