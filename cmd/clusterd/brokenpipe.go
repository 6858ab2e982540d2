package main

import (
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// surviveBrokenPipes makes a write to a closed stdout or stderr (the reader
// of `clusterd run | tee log` went away) fail with EPIPE instead of killing
// the master, and its workers with it. A Go program that writes to a broken
// pipe on fd 1 or 2 dies of SIGPIPE unless it calls signal.Notify for
// SIGPIPE (os/signal, "SIGPIPE"); on other fds the write just fails.
//
// Notify, not signal.Ignore: an ignored signal stays ignored across execve,
// so every worker would inherit SIG_IGN and change behaviour (a server
// that relies on dying of SIGPIPE would get EPIPE instead), whereas a
// handled signal is reset to its default by execve. The registration is
// kept until the process exits: its last line ("clusterd: ...") may still
// go to a broken pipe. Signals that arrive are dropped (the channel is
// never read); the failed writes are what the master counts.
func surviveBrokenPipes() {
	signal.Notify(make(chan os.Signal, 1), unix.SIGPIPE)
}

const (
	// logQueue bounds the master's log lines waiting for stderr.
	logQueue = 4096
	// logStall is how long close waits for a stderr that takes nothing.
	logStall = time.Second
)

// logWriter is the master log's output. The loop logs as it supervises, so
// the log must never block it: each line (hclog writes one per Write) is
// queued, up to logQueue lines, and written to stderr by the writer's own
// goroutine; a stderr that does not keep up costs dropped lines, counted
// and reported in the log once it takes lines again. When stderr fails
// (EPIPE: its reader went away) the writer says so once on alt (stdout),
// the only place the operator may still see it. Safe for concurrent use.
type logWriter struct {
	w, alt io.Writer
	lines  chan []byte
	done   chan struct{}

	mu       sync.Mutex
	closed   bool
	progress int // lines handled by the writer goroutine
	sent     int // lines queued by Write
	failed   bool
	lost     int // lines stderr refused (write errors)
	skipped  int // lines dropped since the last report: the queue was full
	inflight int // lines in the Write under way (with those a report is about)
}

func newLogWriter(w, alt io.Writer) *logWriter {
	l := &logWriter{w: w, alt: alt, lines: make(chan []byte, logQueue), done: make(chan struct{})}
	go l.run()
	return l
}

// Write queues p, a log line. It never blocks and always succeeds: what
// cannot be written is counted.
func (l *logWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		l.skipped++
		return len(p), nil
	}
	select {
	case l.lines <- append([]byte(nil), p...): // hclog reuses its buffer
		l.sent++
	default:
		l.skipped++
	}
	return len(p), nil
}

func (l *logWriter) run() {
	defer close(l.done)
	for p := range l.lines {
		l.mu.Lock()
		skipped := l.skipped
		l.skipped = 0
		l.inflight = 1 + skipped
		l.mu.Unlock()
		if skipped > 0 {
			p = append(fmt.Appendf(nil, "clusterd: %d lines of the master's log dropped: stderr was not keeping up\n", skipped), p...)
		}
		_, err := l.w.Write(p)
		l.mu.Lock()
		l.progress++
		l.inflight = 0
		first := err != nil && !l.failed
		if err != nil {
			l.failed = true
			l.lost += 1 + skipped // the line, and those the report was about
		}
		l.mu.Unlock()
		if first {
			// Best effort: if stdout is gone as well, nobody can be told.
			_, _ = fmt.Fprintf(l.alt, "clusterd: the master's log cannot be written to stderr (%v); its lines are dropped from now on\n", err)
		}
	}
}

// flush waits, at most for timeout, until every line queued so far is
// written (the master calls it before an upgrade's exec, which would drop
// the queue).
func (l *logWriter) flush(timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	l.mu.Lock()
	target := l.sent
	l.mu.Unlock()
	for {
		l.mu.Lock()
		done := l.progress >= target
		l.mu.Unlock()
		if done || time.Now().After(deadline) {
			return
		}
		time.Sleep(time.Millisecond)
	}
}

// close writes the queued lines, waiting while stderr makes progress (at
// most logStall without any), and then tells alt how many lines were
// lost, if any. Called once, when the master has stopped logging.
func (l *logWriter) close() {
	l.mu.Lock()
	l.closed = true
	close(l.lines) // under mu: Write sends only while not closed
	l.mu.Unlock()
	seen := -1
	t := time.NewTimer(logStall)
	defer t.Stop()
wait:
	for {
		select {
		case <-l.done:
			break wait
		case <-t.C:
			l.mu.Lock()
			p := l.progress
			l.mu.Unlock()
			if p == seen {
				break wait
			}
			seen = p
			t.Reset(logStall)
		}
	}
	l.mu.Lock()
	// Still queued, or in a Write that did not return: not written by us.
	n := l.lost + l.skipped + len(l.lines) + l.inflight
	l.mu.Unlock()
	if n > 0 {
		_, _ = fmt.Fprintf(l.alt, "clusterd: %d lines of the master's log were dropped: stderr could not take them\n", n)
	}
}
