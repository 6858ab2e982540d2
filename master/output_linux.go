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
// process holding the write end has exited), and wait closes the rest.
//
// The relay never writes to the user's writers: it appends to their sinks
// (sink.go), which never block it, so a stalled reader of the master's
// stdout costs dropped, counted lines, and neither the relay nor anyone
// registering a pipe (the spawn path) ever waits for it. mu guards only
// the stream table and is never held while a stream is fed.
type outputs struct {
	epfd int
	wake int // eventfd: a new deadline, or stop

	// stdout and stderr receive the workers' output; the same sink when
	// Options.Stdout and Options.Stderr are the same writer.
	stdout, stderr *sink

	mu       sync.Mutex
	streams  map[int]*stream // by read-end fd
	stopping bool
	deadline time.Time

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
// prefix is "". Lines are recorded in t unless it is nil.
func (o *outputs) relay(fd int, to *sink, prefix string, t *tail) error {
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return fmt.Errorf("output pipe: %w", os.NewSyscallError("fcntl", err))
	}
	o.mu.Lock()
	o.streams[fd] = &stream{sink: to, prefix: prefix, tail: t, batch: &o.batch}
	o.mu.Unlock()
	if err := unix.EpollCtl(o.epfd, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}); err != nil {
		o.mu.Lock()
		delete(o.streams, fd)
		o.mu.Unlock()
		unix.Close(fd)
		return fmt.Errorf("output pipe: %w", os.NewSyscallError("epoll_ctl", err))
	}
	return nil
}

func (o *outputs) run() {
	defer close(o.done)
	events := make([]unix.EpollEvent, 64)
	// A pipe holds 64 KiB by default: one read takes all of it.
	buf := make([]byte, 64<<10)
	for {
		timeout := -1
		o.mu.Lock()
		if o.stopping {
			if len(o.streams) == 0 {
				o.mu.Unlock()
				return
			}
			left := time.Until(o.deadline)
			if left <= 0 {
				// Someone outside the workers' process groups still holds
				// a write end: stop waiting for its EOF.
				streams := o.streams
				o.streams = nil
				o.mu.Unlock()
				for fd, s := range streams {
					o.finish(fd, s)
				}
				return
			}
			timeout = int(left.Milliseconds()) + 1
		}
		o.mu.Unlock()
		n, err := unix.EpollWait(o.epfd, events, timeout)
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
		o.finish(fd, s)
		return
	}
}

// finish relays what is left of a line of s and closes fd, once it is out
// of the stream table.
func (o *outputs) finish(fd int, s *stream) {
	s.flush()
	_ = unix.EpollCtl(o.epfd, unix.EPOLL_CTL_DEL, fd, nil) // closing removes it anyway
	unix.Close(fd)
}

// wait lets the relay finish every pipe (EOF), at most for grace, closes
// those still open after it, releases the relay's own fds, and closes the
// sinks (which write what they hold and report what they dropped). Called
// once, after every worker has exited.
func (o *outputs) wait(grace time.Duration) {
	o.mu.Lock()
	o.stopping = true
	o.deadline = time.Now().Add(grace)
	o.mu.Unlock()
	var one = [8]byte{1}
	_, _ = unix.Write(o.wake, one[:]) // the counter cannot overflow here
	<-o.done
	unix.Close(o.wake)
	unix.Close(o.epfd)
	o.stdout.close()
	if o.stderr != o.stdout {
		o.stderr.close()
	}
}
