package ipc

import (
	"fmt"
	"time"
)

// Defaults and bounds of [Options].
const (
	// DefaultMaxFrameSize is the frame size limit when Options.MaxFrameSize is 0.
	DefaultMaxFrameSize = 1 << 20
	// MaxFrameSizeLimit is the largest accepted Options.MaxFrameSize.
	MaxFrameSizeLimit = 1 << 30
	// DefaultMaxFDs is the per-frame descriptor limit when Options.MaxFDs is 0.
	DefaultMaxFDs = 16
	// MaxFDsLimit is the largest accepted Options.MaxFDs: the kernel's limit of
	// descriptors in one SCM_RIGHTS message (SCM_MAX_FD in Linux's
	// include/net/scm.h).
	MaxFDsLimit = 253
	// DefaultQueueLen is the number of received messages held for [Conn.Recv]
	// when Options.QueueLen is 0.
	DefaultQueueLen = 4096
	// DefaultQueueBytes is the body bytes held for [Conn.Recv] when
	// Options.QueueBytes is 0.
	DefaultQueueBytes = 4 << 20
	// DefaultQueueFDs is the number of descriptors held in queued messages, and
	// the number waiting to be sent, when Options.QueueFDs is 0.
	DefaultQueueFDs = 256
	// DefaultWriteBuffer is the number of encoded bytes [Conn.Send] buffers before
	// it blocks, when Options.WriteBuffer is 0.
	DefaultWriteBuffer = 512 << 10
	// DefaultFrameTimeout is how long a frame may take to arrive once its
	// first byte did, when Options.FrameTimeout is 0.
	DefaultFrameTimeout = 10 * time.Second
	// MaxFrameTimeout is the longest accepted Options.FrameTimeout.
	MaxFrameTimeout = time.Hour
)

// Options configures a [Conn]. The zero value is ready to use: every zero field
// takes its default. Both ends of a connection should use the same limits, since
// a peer that exceeds this end's limits is a protocol error.
type Options struct {
	// MaxFrameSize is the largest envelope (frame without its 4-byte length
	// prefix) sent or accepted. A received frame's length is checked before
	// anything is allocated for it. 0 means [DefaultMaxFrameSize]; at most
	// [MaxFrameSizeLimit].
	MaxFrameSize int

	// MaxFDs is the most descriptors one frame may carry. 0 means
	// [DefaultMaxFDs]; at most [MaxFDsLimit].
	MaxFDs int

	// QueueLen bounds the received messages waiting for [Conn.Recv]. When the
	// queue is full the connection stops reading, so the peer's sends block:
	// memory does not grow with what the peer sends. 0 means [DefaultQueueLen].
	QueueLen int

	// QueueBytes bounds the body bytes of the messages waiting for [Conn.Recv]
	// (one message is always accepted into an empty queue). 0 means
	// [DefaultQueueBytes].
	QueueBytes int

	// QueueFDs bounds the descriptors held by messages waiting for [Conn.Recv],
	// and the duplicated descriptors waiting to be written by [Conn.Send]. 0
	// means [DefaultQueueFDs]; it is raised to MaxFDs if lower.
	QueueFDs int

	// WriteBuffer is how many encoded bytes [Conn.Send] may buffer, besides the
	// batch the writer is writing, before it blocks (one frame is always
	// accepted into an empty buffer). 0 means [DefaultWriteBuffer].
	WriteBuffer int

	// SpinWait is how long the reader keeps polling the socket, letting the
	// process's other goroutines run between polls, after it ran dry and before
	// it sleeps in the runtime's poller. Waking a goroutine parked in the
	// poller, and handing its message to another goroutine, costs tens of
	// microseconds of thread wake-ups on an idle virtual CPU, more than a
	// request's whole round trip, and a short poll catches a reply that is a
	// few microseconds away (docs/BENCHMARKS.md, 2-CPU VM, both ends polling
	// for 50µs: a median of about 8 µs instead of 50 µs idle, and instead of
	// 19 µs beside two busy processes). The poll costs up to SpinWait of CPU
	// each time the connection goes quiet: fine for a worker, which has one
	// connection, when its requests' latency matters; not for a master reading
	// hundreds. 0, the default, never polls; at most one second.
	SpinWait time.Duration

	// FrameTimeout bounds the time between the first byte of a received frame
	// and its last: a peer that sends part of a frame and stops (a hung or
	// hostile process) would otherwise hold the reader, and whatever waits on
	// it, forever. The connection then fails with an error wrapping
	// [ErrFrameTimeout]. The clock starts when the reader is ready for the
	// rest of the frame, so time this end spends waiting for room in its own
	// receive queue does not count against the peer. Between frames a
	// connection may stay idle for any time. A frame of the largest size
	// crosses a unix socket in microseconds; the default leaves room for a
	// peer descheduled on a loaded machine. 0 means [DefaultFrameTimeout]; at
	// most [MaxFrameTimeout].
	FrameTimeout time.Duration
}

// withDefaults returns a copy of o with defaults applied, or an error naming the
// first invalid field.
func (o Options) withDefaults() (Options, error) {
	fields := []struct {
		name string
		v    *int
		def  int
		max  int
	}{
		{"MaxFrameSize", &o.MaxFrameSize, DefaultMaxFrameSize, MaxFrameSizeLimit},
		{"MaxFDs", &o.MaxFDs, DefaultMaxFDs, MaxFDsLimit},
		{"QueueLen", &o.QueueLen, DefaultQueueLen, 0},
		{"QueueBytes", &o.QueueBytes, DefaultQueueBytes, 0},
		{"QueueFDs", &o.QueueFDs, DefaultQueueFDs, 0},
		{"WriteBuffer", &o.WriteBuffer, DefaultWriteBuffer, 0},
	}
	for _, f := range fields {
		switch {
		case *f.v < 0:
			return o, fmt.Errorf("ipc: options: %s is negative (%d)", f.name, *f.v)
		case *f.v == 0:
			*f.v = f.def
		case f.max > 0 && *f.v > f.max:
			return o, fmt.Errorf("ipc: options: %s %d is above the limit %d", f.name, *f.v, f.max)
		}
	}
	if o.MaxFrameSize < minFrameSize {
		return o, fmt.Errorf("ipc: options: MaxFrameSize %d is below %d, too small for a hello", o.MaxFrameSize, minFrameSize)
	}
	o.QueueFDs = max(o.QueueFDs, o.MaxFDs)
	if o.SpinWait < 0 || o.SpinWait > time.Second {
		return o, fmt.Errorf("ipc: options: SpinWait %v is not within 0 and one second", o.SpinWait)
	}
	switch {
	case o.FrameTimeout < 0 || o.FrameTimeout > MaxFrameTimeout:
		return o, fmt.Errorf("ipc: options: FrameTimeout %v is not within 0 and %v", o.FrameTimeout, MaxFrameTimeout)
	case o.FrameTimeout == 0:
		o.FrameTimeout = DefaultFrameTimeout
	}
	return o, nil
}

// minFrameSize is the smallest accepted frame size limit: room for any envelope
// head and a hello of the largest integers.
const minFrameSize = 256
