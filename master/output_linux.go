package master

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

// outputs relays the output of every worker pipe from one goroutine: an
// epoll loop over the pipes' non-blocking read ends. One goroutine for all
// workers, instead of one per pipe, keeps the master small with hundreds of
// workers. The relay owns the read ends: it closes each at EOF (every
// process holding the write end has exited), or when its worker was reaped
// (retire), and wait closes the rest.
//
// The relay never writes to the user's writers: it appends to their sinks
// (sink.go), which never block it, so a stalled reader of the master's
// stdout costs dropped, counted lines, and neither the relay nor anyone
// registering a pipe (the spawn path) ever waits for it. mu guards only
// the stream table and is never held while a stream is fed.
type outputs struct {
	epfd int
	wake int // eventfd: streams to retire, or stop

	// stdout and stderr receive the workers' output; the same sink when
	// Options.Stdout and Options.Stderr are the same writer.
	stdout, stderr *sink

	mu       sync.Mutex
	streams  map[int]*stream // by read-end fd
	retiring []*stream       // to close once what is readable now is relayed
	stopping bool

	batch []byte // the streams' shared batch buffer; only run uses it

	tailMu sync.Mutex
	tails  map[int]*tail // by worker pid, until the loop takes it

	done chan struct{}
}

// newOutputs starts the relay and the sinks of stdout and stderr.
func newOutputs(stdout, stderr io.Writer, log hclog.Logger) (*outputs, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("output relay: %w", os.NewSyscallError("epoll_create1", err))
	}
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("output relay: %w", os.NewSyscallError("eventfd", err))
	}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wake, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wake)}); err != nil {
		unix.Close(epfd)
		unix.Close(wake)
		return nil, fmt.Errorf("output relay: %w", os.NewSyscallError("epoll_ctl", err))
	}
	o := &outputs{
		epfd: epfd, wake: wake,
		streams: make(map[int]*stream),
		tails:   make(map[int]*tail),
		done:    make(chan struct{}),
	}
	o.stdout = newSink("stdout", stdout, log, sinkBuffer)
	o.stderr = o.stdout
	if !sameWriter(stdout, stderr) {
		o.stderr = newSink("stderr", stderr, log, sinkBuffer)
	}
	go o.run()
	return o, nil
}

// flush waits, at most until deadline, for the sinks to write what they
// hold (before an upgrade's exec, which would drop it).
func (o *outputs) flush(deadline time.Time) {
	o.stdout.flush(deadline)
	if o.stderr != o.stdout {
		o.stderr.flush(deadline)
	}
}

// newTail returns the tail of worker pid, to pass to relay for its
// streams; [outputs.takeTail] hands it to the loop.
func (o *outputs) newTail(pid int) *tail {
	t := &tail{}
	o.tailMu.Lock()
	o.tails[pid] = t
	o.tailMu.Unlock()
	return t
}

// takeTail returns and forgets the tail of worker pid (nil if it has
// none). The relay may still add its last lines to it.
func (o *outputs) takeTail(pid int) *tail {
	o.tailMu.Lock()
	defer o.tailMu.Unlock()
	t := o.tails[pid]
	delete(o.tails, pid)
	return t
}

// relay takes ownership of fd, a pipe's read end (close-on-exec), and
// copies what arrives to to: line by line with prefix, or untouched when
// prefix is "". Lines are recorded in t, and in rec, unless they are nil.
// The stream it returns is for retire; nil on error.
func (o *outputs) relay(fd int, to *sink, prefix string, t *tail, rec *logTee) (*stream, error) {
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("output pipe: %w", os.NewSyscallError("fcntl", err))
	}
	s := &stream{sink: to, prefix: prefix, tail: t, rec: rec, batch: &o.batch}
	o.mu.Lock()
	o.streams[fd] = s
	o.mu.Unlock()
	if err := unix.EpollCtl(o.epfd, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}); err != nil {
		o.mu.Lock()
		delete(o.streams, fd)
		o.mu.Unlock()
		unix.Close(fd)
		return nil, fmt.Errorf("output pipe: %w", os.NewSyscallError("epoll_ctl", err))
	}
	return s, nil
}

// retire tells the relay that the process writing to these streams was
// reaped: it relays what the pipes hold now and closes them, without
// waiting for an EOF that a child holding the write end (one that left the
// worker's process group) may never send. nil streams are skipped.
func (o *outputs) retire(ss ...*stream) {
	o.mu.Lock()
	for _, s := range ss {
		if s != nil {
			o.retiring = append(o.retiring, s)
		}
	}
	o.mu.Unlock()
	o.poke()
}

// poke wakes the relay goroutine.
func (o *outputs) poke() {
	var one = [8]byte{1}
	_, _ = unix.Write(o.wake, one[:]) // the counter cannot overflow here
}

// finishRetired finishes the retired streams still open. One that reached
// EOF meanwhile is gone from streams, and its fd number may be another
// stream's by now: streams are matched by identity, not by fd. Each is
// taken out of the table under mu and fed outside it.
func (o *outputs) finishRetired(buf []byte) {
	type open struct {
		fd int
		s  *stream
	}
	o.mu.Lock()
	var found []open
	for _, r := range o.retiring {
		for fd, s := range o.streams {
			if s == r {
				found = append(found, open{fd, s})
				delete(o.streams, fd)
			}
		}
	}
	o.retiring = nil
	o.mu.Unlock()
	for _, f := range found {
		o.finish(f.fd, f.s, buf)
	}
}

func (o *outputs) run() {
	defer close(o.done)
	events := make([]unix.EpollEvent, 64)
	// A pipe holds 64 KiB by default: one read takes all of it.
	buf := make([]byte, 64<<10)
	for {
		o.finishRetired(buf)
		o.mu.Lock()
		if o.stopping {
			// Every process of the cluster is gone: relay what is left
			// and close, without waiting for an EOF.
			streams := o.streams
			o.streams = make(map[int]*stream)
			o.mu.Unlock()
			for fd, s := range streams {
				o.finish(fd, s, buf)
			}
			return
		}
		o.mu.Unlock()
		n, err := unix.EpollWait(o.epfd, events, -1)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return // cannot happen with a valid epoll fd; wait still returns
		}
		for _, ev := range events[:n] {
			fd := int(ev.Fd)
			if fd == o.wake {
				var b [8]byte
				_, _ = unix.Read(o.wake, b[:]) // a counter reset; EAGAIN is fine
				continue
			}
			o.mu.Lock()
			s := o.streams[fd]
			o.mu.Unlock()
			if s != nil {
				o.drain(fd, s, buf)
			}
		}
	}
}

// drain reads what fd has (a bounded amount, so one chatty worker cannot
// starve the others: epoll reports the rest again).
func (o *outputs) drain(fd int, s *stream, buf []byte) {
	for range 8 {
		n, err := unix.Read(fd, buf)
		switch {
		case n > 0:
			s.feed(buf[:n])
			continue
		case errors.Is(err, unix.EAGAIN):
			return
		case errors.Is(err, unix.EINTR):
			continue
		}
		// EOF, or an error that ends the pipe.
		o.mu.Lock()
		delete(o.streams, fd)
		o.mu.Unlock()
		o.end(fd, s)
		return
	}
}

// finish relays what fd holds now, without waiting for more, and closes
// it, once it is out of the stream table.
func (o *outputs) finish(fd int, s *stream, buf []byte) {
	// Bounded, more than a pipe's default 64 KiB: a writer that keeps
	// writing does not hold the relay here.
	for range 64 {
		n, err := unix.Read(fd, buf)
		if n > 0 {
			s.feed(buf[:n])
			continue
		}
		if errors.Is(err, unix.EINTR) {
			continue
		}
		break // EAGAIN: nothing more now; 0: EOF; or an error that ends it
	}
	o.end(fd, s)
}

// end relays what is left of a line of s and closes fd, once it is out
// of the stream table.
func (o *outputs) end(fd int, s *stream) {
	s.flush()
	_ = unix.EpollCtl(o.epfd, unix.EPOLL_CTL_DEL, fd, nil) // closing removes it anyway
	unix.Close(fd)
}

// wait relays what every pipe still holds, closes them, releases the
// relay's own fds, and closes the sinks (which write what they hold and
// report what they dropped). Called once, after every process of the
// cluster has exited: no more output can come, so it does not wait for
// EOFs.
func (o *outputs) wait() {
	o.mu.Lock()
	o.stopping = true
	o.mu.Unlock()
	o.poke()
	<-o.done
	unix.Close(o.wake)
	unix.Close(o.epfd)
	o.stdout.close()
	if o.stderr != o.stdout {
		o.stderr.close()
	}
}
