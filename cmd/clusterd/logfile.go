package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
)

// logFile is --log-file: the file the master's log and the workers'
// relayed output are appended to, for hosts without journald. SIGUSR1
// reopens it by its path, so that logrotate (or an operator) can move the
// file away and have clusterd write to a new one, as nginx and unicorn do.
// Safe for concurrent use: the log writer and the output relay write to it
// from their own goroutines.
type logFile struct {
	path string // absolute, so that the reopen does not depend on the cwd

	mu sync.Mutex
	f  *os.File
}

// logFileMode is the mode of a log file clusterd creates; the umask applies.
const logFileMode = 0o640

func openLogFile(path string) (*logFile, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("log file %s: %w", path, err)
	}
	f, err := os.OpenFile(abs, os.O_WRONLY|os.O_APPEND|os.O_CREATE, logFileMode)
	if err != nil {
		return nil, fmt.Errorf("log file: %w", err)
	}
	return &logFile{path: abs, f: f}, nil
}

// Write appends p to the file currently open.
func (l *logFile) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return 0, os.ErrClosed
	}
	return l.f.Write(p)
}

// reopen opens the path anew (creating it if it was moved away) and
// closes the file written so far. When the path cannot be opened, writing
// goes on to the old file and the error says why.
func (l *logFile) reopen() error {
	f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, logFileMode)
	if err != nil {
		return fmt.Errorf("reopen log file: %w", err)
	}
	l.mu.Lock()
	old := l.f
	l.f = f
	l.mu.Unlock()
	if old == nil {
		return nil
	}
	if err := old.Close(); err != nil {
		return fmt.Errorf("close the previous log file %s: %w", l.path, err)
	}
	return nil
}

// close closes the file; later writes fail with os.ErrClosed.
func (l *logFile) close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}
