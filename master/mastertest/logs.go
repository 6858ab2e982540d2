package mastertest

import (
	"bytes"
	"encoding/json"
	"maps"
	"sync"
)

// logSink is the io.Writer behind the master's JSON logger. It keeps every
// line, raw for the failure report and decoded for [Cluster.Logs] and
// [Cluster.WaitLog], and wakes waiters after each write. hclog writes each
// line with one Write call under its own lock; the sink still copes with
// lines split across writes.
type logSink struct {
	mu      sync.Mutex
	raw     []string
	lines   []map[string]any
	partial []byte
	changed chan struct{} // closed and replaced after each complete line
}

func newLogSink() *logSink { return &logSink{changed: make(chan struct{})} }

// Write never fails: the log is the test's record, and a line that is not
// JSON (hclog writes none) is kept as {"@message": line} rather than lost.
func (s *logSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.partial = append(s.partial, p...)
	added := false
	for {
		i := bytes.IndexByte(s.partial, '\n')
		if i < 0 {
			break
		}
		line := s.partial[:i]
		s.partial = s.partial[i+1:]
		e := map[string]any{}
		if err := json.Unmarshal(line, &e); err != nil {
			e = map[string]any{"@message": string(line)}
		}
		s.raw = append(s.raw, string(line))
		s.lines = append(s.lines, e)
		added = true
	}
	if len(s.partial) == 0 {
		s.partial = nil // do not keep the last line's buffer alive
	}
	if added {
		close(s.changed)
		s.changed = make(chan struct{})
	}
	return len(p), nil
}

// find returns a copy of the nth (from 1) line whose @message is msg, or
// nil, with the count of such lines so far and a channel closed at the next
// line.
func (s *logSink) find(msg string, n int) (line map[string]any, count int, changed <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range s.lines {
		if e["@message"] == msg {
			count++
			if count == n {
				line = maps.Clone(e)
			}
		}
	}
	return line, count, s.changed
}

// all returns copies of every line so far.
func (s *logSink) all() []map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]map[string]any, len(s.lines))
	for i, e := range s.lines {
		out[i] = maps.Clone(e)
	}
	return out
}

// tail returns the last n raw lines and how many were left out before them.
func (s *logSink) tail(n int) (lines []string, omitted int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.raw) > n {
		omitted = len(s.raw) - n
	}
	return append([]string(nil), s.raw[omitted:]...), omitted
}
