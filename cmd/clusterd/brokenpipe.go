package main

import (
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"

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

// logWriter is the master log's output (stderr). When a write to it fails
// the first time, it says so once on alt (stdout), the only place the
// operator may still see it; the log lines it then loses are counted.
// Safe for concurrent use.
type logWriter struct {
	w, alt io.Writer

	mu     sync.Mutex
	failed bool
	lost   int // log lines not written
}

func (l *logWriter) Write(p []byte) (int, error) {
	n, err := l.w.Write(p)
	if err == nil {
		return n, nil
	}
	l.mu.Lock()
	l.lost++
	first := !l.failed
	l.failed = true
	l.mu.Unlock()
	if first {
		// Best effort: if stdout is gone as well, nobody can be told.
		_, _ = fmt.Fprintf(l.alt, "clusterd: the master's log cannot be written to stderr (%v); its lines are dropped from now on\n", err)
	}
	return n, err
}

// summary tells alt how many log lines were lost, if any.
func (l *logWriter) summary() {
	l.mu.Lock()
	n := l.lost
	l.mu.Unlock()
	if n > 0 {
		_, _ = fmt.Fprintf(l.alt, "clusterd: %d lines of the master's log were dropped: stderr could not be written\n", n)
	}
}
