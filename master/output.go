package master

import (
	"bytes"
	"sync"
	"unicode/utf8"
)

// maxLineLength bounds a relayed line: a longer one is cut into pieces of
// this size, each with its own prefix, so a worker that writes without
// newlines cannot make the master buffer without limit.
const maxLineLength = 16 << 10

// tailLength bounds the last line kept per worker (see tail).
const tailLength = 512

// maxBatch is the largest output buffer a stream keeps between reads.
const maxBatch = 256 << 10

// stream is the relay state of one worker pipe: the sink its bytes go to,
// with which prefix ("" relays them untouched), the start of a line whose
// newline has not arrived yet, and the worker's tail.
type stream struct {
	sink    *sink
	prefix  string
	tail    *tail   // nil: not recorded
	rec     *logTee // the log ring's recorder; nil: none
	partial []byte
	// batch holds the prefixed lines of one feed. Every stream of the
	// relay shares one (one goroutine feeds them all), so a worker that
	// once wrote a lot does not keep a large buffer; nil: own.
	batch *[]byte
	own   []byte
}

// buffer returns the batch buffer, emptied.
func (s *stream) buffer() []byte {
	if s.batch == nil {
		s.batch = &s.own
	}
	return (*s.batch)[:0]
}

// keep stores out as the batch buffer for the next feed, unless a burst
// made it large.
func (s *stream) keep(out []byte) {
	if cap(out) <= maxBatch {
		*s.batch = out[:0]
	} else {
		*s.batch = nil
	}
}

// feed relays p. With a prefix, every complete line gets it, and all the
// lines of p go to the sink in one append (one Write, usually, for many
// lines: writing line by line cost the master more CPU than the workers
// spent producing them). A line's start waits for its newline, at most
// maxLineLength bytes. Lines of different workers never interleave: the
// sink only takes whole lines.
func (s *stream) feed(p []byte) {
	if s.tail != nil {
		s.tail.remember(s.partial, p)
	}
	if s.rec != nil {
		s.rec.feed(p)
	}
	if s.prefix == "" {
		s.sink.append(p)
		return
	}
	out := s.buffer()
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			room := maxLineLength - len(s.partial)
			if len(p) < room {
				s.partial = append(s.partial, p...)
				break
			}
			// Cut a long line.
			s.partial = append(s.partial, p[:room]...)
			p = p[room:]
			out = s.line(out, s.partial, nil)
			s.partial = s.partial[:0]
			continue
		}
		line := p[:i+1]
		p = p[i+1:]
		if len(s.partial) == 0 {
			out = append(out, s.prefix...)
			out = append(out, line...)
			continue
		}
		if len(s.partial)+len(line) > maxLineLength+1 {
			room := maxLineLength - len(s.partial)
			s.partial = append(s.partial, line[:room]...)
			out = s.line(out, s.partial, nil)
			s.partial = s.partial[:0]
			line = line[room:]
		}
		out = s.line(out, s.partial, line)
		s.partial = s.partial[:0]
	}
	s.sink.append(out)
	s.keep(out)
	if cap(s.partial) > 4<<10 && len(s.partial) == 0 {
		s.partial = nil // nor a long line's
	}
}

// line appends the prefix, a and b to out, and a newline if b lacks one.
func (s *stream) line(out, a, b []byte) []byte {
	out = append(out, s.prefix...)
	out = append(out, a...)
	out = append(out, b...)
	if len(b) == 0 || b[len(b)-1] != '\n' {
		out = append(out, '\n')
	}
	return out
}

// flush relays a pending partial line, ended with a newline: the pipe is
// at its end.
func (s *stream) flush() {
	if s.rec != nil {
		s.rec.flush()
	}
	if len(s.partial) == 0 {
		return
	}
	if s.tail != nil {
		s.tail.set(s.partial, nil)
	}
	if s.prefix == "" {
		// Untouched output has no partial line.
		return
	}
	out := s.line(s.buffer(), s.partial, nil)
	s.sink.append(out)
	s.keep(out)
	s.partial = nil
}

// tail is the last non-blank line a worker wrote on stdout or stderr,
// without its newline and at most tailLength bytes: what a crash-looping
// worker said last ("bind: address already in use") is quoted in the
// restart intensity error. The relay updates it once per read, not per
// line; the loop reads it. Safe for concurrent use; the lock is never held
// while anything is written.
type tail struct {
	mu  sync.Mutex
	n   int
	cut bool // the line was longer than tailLength
	b   [tailLength]byte
}

// remember records the last complete non-blank line of partial+p, where
// partial is the start of a line that p continues.
func (t *tail) remember(partial, p []byte) {
	end := bytes.LastIndexByte(p, '\n')
	for end >= 0 {
		start := bytes.LastIndexByte(p[:end], '\n')
		if start >= 0 {
			if !blank(p[start+1 : end]) {
				t.set(p[start+1:end], nil)
				return
			}
			end = start
			continue
		}
		if !blank(partial) || !blank(p[:end]) {
			t.set(partial, p[:end])
		}
		return
	}
}

// set records the line a+b (without its newline).
func (t *tail) set(a, b []byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := copy(t.b[:], a)
	n += copy(t.b[n:], b)
	t.cut = len(a)+len(b) > tailLength
	if t.cut {
		// Do not end inside a character: n is the first byte left out.
		at := func(i int) byte {
			if i < len(a) {
				return a[i]
			}
			return b[i-len(a)]
		}
		for n > 0 && !utf8.RuneStart(at(n)) {
			n--
		}
	} else {
		for n > 0 && (t.b[n-1] == '\r' || t.b[n-1] == ' ' || t.b[n-1] == '\t') {
			n--
		}
	}
	t.n = n
}

// String returns the line, with "..." when it was cut; "" when nothing was
// recorded. A nil tail is empty.
func (t *tail) String() string {
	if t == nil {
		return ""
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.cut {
		return string(t.b[:t.n]) + "..."
	}
	return string(t.b[:t.n])
}

func blank(p []byte) bool { return len(bytes.TrimSpace(p)) == 0 }
