package ipc

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// errQueueEnd tells Recv that the reader has stopped and the queue is empty.
var errQueueEnd = errors.New("ipc: end of queue")

// inbox is the bounded queue of received messages waiting for Recv. The reader
// goroutine pushes, blocking while the queue is full; Recv pops.
type inbox struct {
	maxLen, maxBytes, maxFDs int

	mu     sync.Mutex
	q      []*Message // q[head:] are queued
	head   int
	bytes  int
	fds    int
	ended  bool          // the reader has stopped: no more pushes
	closed bool          // Close: the queue is dropped
	ready  chan struct{} // closed at the next push, made by a waiting pop
	room   chan struct{} // closed at the next pop, made by a waiting push
}

func (in *inbox) init(o Options) {
	in.maxLen, in.maxBytes, in.maxFDs = o.QueueLen, o.QueueBytes, o.QueueFDs
}

func (in *inbox) len() int { return len(in.q) - in.head }

// push queues m, waiting for room until dead is closed (then it returns
// ErrClosed and m stays the caller's).
func (in *inbox) push(m *Message, dead <-chan struct{}) error {
	in.mu.Lock()
	for in.len() > 0 && (in.len() >= in.maxLen || in.bytes+len(m.Body) > in.maxBytes || in.fds+len(m.FDs) > in.maxFDs) {
		if in.room == nil {
			in.room = make(chan struct{})
		}
		room := in.room
		in.mu.Unlock()
		select {
		case <-room:
		case <-dead:
			return ErrClosed
		}
		in.mu.Lock()
	}
	if in.closed {
		in.mu.Unlock()
		return ErrClosed
	}
	if in.head > 0 && in.head >= len(in.q)/2 {
		// Slide the queue down rather than let the slice grow forever.
		n := copy(in.q, in.q[in.head:])
		clear(in.q[n:])
		in.q = in.q[:n]
		in.head = 0
	}
	in.q = append(in.q, m)
	in.bytes += len(m.Body)
	in.fds += len(m.FDs)
	if in.ready != nil {
		close(in.ready)
		in.ready = nil
	}
	in.mu.Unlock()
	return nil
}

// pop takes the oldest message, waiting for one. It returns errQueueEnd when the
// queue is empty and the reader has stopped, ErrClosed after close, and ctx's
// error when ctx is done first.
func (in *inbox) pop(ctx context.Context) (*Message, error) {
	in.mu.Lock()
	for in.len() == 0 {
		if in.closed {
			in.mu.Unlock()
			return nil, ErrClosed
		}
		if in.ended {
			in.mu.Unlock()
			return nil, errQueueEnd
		}
		if in.ready == nil {
			in.ready = make(chan struct{})
		}
		ready := in.ready
		in.mu.Unlock()
		select {
		case <-ready:
		case <-ctx.Done():
			return nil, fmt.Errorf("ipc: recv: %w", ctx.Err())
		}
		in.mu.Lock()
	}
	if in.closed {
		in.mu.Unlock()
		return nil, ErrClosed
	}
	m := in.q[in.head]
	in.q[in.head] = nil
	in.head++
	if in.head == len(in.q) {
		in.q = in.q[:0]
		in.head = 0
	}
	in.bytes -= len(m.Body)
	in.fds -= len(m.FDs)
	if in.room != nil {
		close(in.room)
		in.room = nil
	}
	in.mu.Unlock()
	return m, nil
}

// finish marks the end of pushes and wakes waiting pops.
func (in *inbox) finish() {
	in.mu.Lock()
	in.ended = true
	in.wake()
	in.mu.Unlock()
}

// close drops the queue, closing the descriptors of every queued message, and
// wakes every waiter.
func (in *inbox) close() {
	in.mu.Lock()
	q := in.q[in.head:]
	in.q, in.head, in.bytes, in.fds = nil, 0, 0, 0
	in.closed, in.ended = true, true
	in.wake()
	in.mu.Unlock()
	for _, m := range q {
		_ = m.CloseFDs() // received descriptors nobody took; nothing to report them to
	}
}

func (in *inbox) wake() {
	if in.ready != nil {
		close(in.ready)
		in.ready = nil
	}
	if in.room != nil {
		close(in.room)
		in.room = nil
	}
}
