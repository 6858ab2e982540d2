package master

import (
	"bytes"
	"io"
)

// maxLineLength bounds a relayed line: a longer one is cut into pieces of
// this size, each with its own prefix, so a worker that writes without
// newlines cannot make the master buffer without limit.
const maxLineLength = 16 << 10

// stream is the relay state of one worker pipe: where its bytes go, with
// which prefix ("" relays them untouched), and the start of a line whose
// newline has not arrived yet.
type stream struct {
	w       io.Writer
	prefix  string
	partial []byte
	scratch []byte
}

// feed relays p: complete lines at once, each with the prefix in one Write
// (so lines of different workers never interleave); the rest waits for its
// newline, at most maxLineLength bytes.
func (s *stream) feed(p []byte) {
	if s.prefix == "" {
		_, _ = s.w.Write(p) // output is best effort: a full disk must not stop supervision
		return
	}
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			room := maxLineLength - len(s.partial)
			if len(p) < room {
				s.partial = append(s.partial, p...)
				return
			}
			s.partial = append(s.partial, p[:room]...)
			p = p[room:]
			s.flush() // cut a long line
			continue
		}
		line := p[:i+1]
		p = p[i+1:]
		if len(s.partial)+len(line) > maxLineLength+1 {
			room := maxLineLength - len(s.partial)
			s.partial = append(s.partial, line[:room]...)
			s.flush()
			line = line[room:]
		}
		s.emit(s.partial, line)
		s.partial = s.partial[:0]
	}
}

// flush relays a pending partial line, ended with a newline.
func (s *stream) flush() {
	if len(s.partial) == 0 {
		return
	}
	s.emit(s.partial, []byte{'\n'})
	s.partial = s.partial[:0]
}

func (s *stream) emit(a, b []byte) {
	s.scratch = append(s.scratch[:0], s.prefix...)
	s.scratch = append(s.scratch, a...)
	s.scratch = append(s.scratch, b...)
	_, _ = s.w.Write(s.scratch) // best effort, as in feed
	if cap(s.scratch) > 4<<10 {
		s.scratch = nil // do not keep a long line's buffer for every worker
	}
}
