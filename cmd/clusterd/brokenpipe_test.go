package main

import (
	"bytes"
	"strings"
	"syscall"
	"testing"
)

type brokenWriter struct{}

func (brokenWriter) Write([]byte) (int, error) { return 0, syscall.EPIPE }

// TestLogWriterFallsBack: when stderr breaks, the master's log says so once
// on stdout, and how many lines it lost when the master ends.
func TestLogWriterFallsBack(t *testing.T) {
	var alt bytes.Buffer
	l := &logWriter{w: brokenWriter{}, alt: &alt}
	for range 3 {
		if _, err := l.Write([]byte("a log line\n")); err == nil {
			t.Fatal("Write to a broken stderr succeeded")
		}
	}
	if n := strings.Count(alt.String(), "clusterd: the master's log cannot be written to stderr (broken pipe)"); n != 1 {
		t.Errorf("stdout got %d notices, want 1:\n%s", n, alt.String())
	}
	l.summary()
	if !strings.HasSuffix(alt.String(), "clusterd: 3 lines of the master's log were dropped: stderr could not be written\n") {
		t.Errorf("no summary of the lost lines:\n%s", alt.String())
	}

	var out, quiet bytes.Buffer
	ok := &logWriter{w: &out, alt: &quiet}
	ok.Write([]byte("fine\n"))
	ok.summary()
	if out.String() != "fine\n" || quiet.Len() != 0 {
		t.Errorf("working stderr: wrote %q, stdout got %q", out.String(), quiet.String())
	}
}
