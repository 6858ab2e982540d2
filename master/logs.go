package master

import (
	"bytes"
	"sync"
	"sync/atomic"
	"time"
)

// The log ring: the last lines of each slot's output, kept in the master
// for `clusterd logs` (for users without journald), and handed to the
// clients that follow new ones. The output relay feeds it through a
// logTee per pipe, before its sink; recording a line takes a short mutex and never waits for
// a reader: a follower whose buffer is full loses the line, counted.

// DefaultLogLines is how many lines of output the master keeps per slot.
const DefaultLogLines = 200

// followBuffer is the number of lines a log follower may fall behind.
const followBuffer = 1024

// LogLine is one line a worker wrote to its stdout or stderr.
type LogLine struct {
	Time   time.Time `msgpack:"time"`
	Slot   int       `msgpack:"slot"`
	PID    int       `msgpack:"pid"`
	Stream string    `msgpack:"stream"` // "stdout" or "stderr"
	Text   string    `msgpack:"text"`   // without its newline
}

type logRing struct {
	max int

	mu        sync.Mutex
	slots     map[int]*lineBuffer
	followers map[*logFollower]struct{}
}

// lineBuffer is a ring of at most max lines.
type lineBuffer struct {
	lines []LogLine
	next  int // where the next line goes once full
}

type logFollower struct {
	slot    int // -1: every slot
	c       chan LogLine
	dropped atomic.Uint64
}

func newLogRing(max int) *logRing {
	return &logRing{max: max, slots: make(map[int]*lineBuffer), followers: make(map[*logFollower]struct{})}
}

// addLines records the lines one read of a worker pipe brought, and hands
// them to the followers, without blocking. Only the lines the ring keeps,
// or a follower takes, are copied.
func (r *logRing) addLines(slot, pid int, stream string, at time.Time, lines [][]byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	followed := false
	for f := range r.followers {
		if f.slot < 0 || f.slot == slot {
			followed = true
			break
		}
	}
	first := 0
	if !followed && len(lines) > r.max {
		first = len(lines) - r.max // the others would be overwritten at once
	}
	b := r.slots[slot]
	if b == nil {
		b = &lineBuffer{}
		r.slots[slot] = b
	}
	for _, text := range lines[first:] {
		l := LogLine{Time: at, Slot: slot, PID: pid, Stream: stream, Text: string(text)}
		if len(b.lines) < r.max {
			b.lines = append(b.lines, l)
		} else {
			b.lines[b.next] = l
			b.next = (b.next + 1) % r.max
		}
		if !followed {
			continue
		}
		for f := range r.followers {
			if f.slot >= 0 && f.slot != slot {
				continue
			}
			select {
			case f.c <- l:
			default:
				f.dropped.Add(1)
			}
		}
	}
}

// lines returns the kept lines of slot (-1: all slots, ordered by time).
func (r *logRing) lines(slot int) []LogLine {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []LogLine
	for id, b := range r.slots {
		if slot >= 0 && id != slot {
			continue
		}
		out = append(out, b.lines[b.next:]...)
		out = append(out, b.lines[:b.next]...)
	}
	if slot < 0 {
		sortLines(out)
	}
	return out
}

// snapshotAndFollow returns the kept lines and a follower of the new ones,
// atomically: no line is in both or in neither.
func (r *logRing) snapshotAndFollow(slot int) ([]LogLine, *logFollower) {
	f := &logFollower{slot: slot, c: make(chan LogLine, followBuffer)}
	lines := r.lines(slot)
	r.mu.Lock()
	r.followers[f] = struct{}{}
	r.mu.Unlock()
	return lines, f
}

func (r *logRing) unfollow(f *logFollower) {
	r.mu.Lock()
	delete(r.followers, f)
	r.mu.Unlock()
}

// sortLines orders lines by time (stable, so one slot's lines keep their
// order).
func sortLines(ls []LogLine) {
	for i := 1; i < len(ls); i++ {
		for j := i; j > 0 && ls[j].Time.Before(ls[j-1].Time); j-- {
			ls[j], ls[j-1] = ls[j-1], ls[j]
		}
	}
}

// logTee records the lines of one worker pipe in the ring: the output
// relay hands it the bytes as the worker wrote them (feed) and the end of
// the pipe (flush). It is used by the relay goroutine alone, so its
// partial line needs no lock.
type logTee struct {
	ring    *logRing
	slot    int
	pid     int
	stream  string
	partial []byte
	cut     bool     // the last line recorded was cut at maxLineLength
	lines   [][]byte // scratch of feed
}

// feed records the complete lines of p (and of the partial line before
// it) with one lock of the ring and one clock reading for all of them.
func (t *logTee) feed(p []byte) {
	lines := t.lines[:0]
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			if len(t.partial)+len(p) > maxLineLength {
				lines = append(lines, append(t.partial, p...))
				t.partial = nil // its bytes are in lines now
				t.cut = true
			} else {
				t.partial = append(t.partial, p...)
			}
			break
		}
		line := p[:i]
		p = p[i+1:]
		if len(t.partial) > 0 {
			line = append(t.partial, line...)
			t.partial = nil
		}
		if len(line) == 0 && t.cut {
			t.cut = false // the newline that ends a line already cut
			continue
		}
		t.cut = false
		lines = append(lines, line)
	}
	if len(lines) > 0 {
		t.ring.addLines(t.slot, t.pid, t.stream, time.Now(), lines)
	}
	clear(lines) // do not keep the worker's bytes alive
	t.lines = lines[:0]
}

// flush records a last line that has no newline: the pipe is at its end.
func (t *logTee) flush() {
	if len(t.partial) > 0 {
		t.ring.addLines(t.slot, t.pid, t.stream, time.Now(), [][]byte{t.partial})
		t.partial = nil
	}
}
