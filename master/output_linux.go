package master

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// outputs relays the output of every worker pipe from one goroutine: an
// epoll loop over the pipes' non-blocking read ends. One goroutine for all
// workers, instead of one per pipe, keeps the master small with hundreds of
// workers. The relay owns the read ends: it closes each at EOF (every
// process holding the write end has exited), or when its worker was reaped
// (retire), and wait closes the rest.
type outputs struct {
	epfd int
	wake int // eventfd: a new deadline, or stop

	mu       sync.Mutex
	streams  map[int]*stream // by read-end fd
	retiring []*stream       // to close once what is readable now is relayed
	stopping bool

	done chan struct{}
}

func newOutputs() (*outputs, error) {
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
	o := &outputs{epfd: epfd, wake: wake, streams: make(map[int]*stream), done: make(chan struct{})}
	go o.run()
	return o, nil
}

// relay takes ownership of fd, a pipe's read end (close-on-exec), and
// copies what arrives to w: line by line with prefix, or untouched when
// prefix is "". The stream it returns is for retire; nil on error.
func (o *outputs) relay(fd int, w io.Writer, prefix string) (*stream, error) {
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("output pipe: %w", os.NewSyscallError("fcntl", err))
	}
	s := &stream{w: w, prefix: prefix}
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

// finishRetired closes the retired streams still open (one that reached
// EOF meanwhile is gone from streams, and its fd number may be another
// stream's by now: streams are matched by identity, not by fd).
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
			}
		}
	}
	o.retiring = nil
	o.mu.Unlock()
	for _, f := range found {
		o.finish(f.fd, f.s, buf)
	}
}

// finish relays what fd holds now, without waiting for more, and closes it.
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
	o.mu.Lock()
	o.closeLocked(fd, s)
	o.mu.Unlock()
}

func (o *outputs) run() {
	defer close(o.done)
	events := make([]unix.EpollEvent, 64)
	buf := make([]byte, 32<<10)
	for {
		o.finishRetired(buf)
		o.mu.Lock()
		stopping := o.stopping
		o.mu.Unlock()
		if stopping {
			// Every process of the cluster is gone: relay what is left
			// and close, without waiting for an EOF.
			o.mu.Lock()
			left := make(map[int]*stream, len(o.streams))
			maps.Copy(left, o.streams)
			o.mu.Unlock()
			for fd, s := range left {
				o.finish(fd, s, buf)
			}
			return
		}
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
		o.closeLocked(fd, s)
		o.mu.Unlock()
		return
	}
}

func (o *outputs) closeLocked(fd int, s *stream) {
	s.flush()
	_ = unix.EpollCtl(o.epfd, unix.EPOLL_CTL_DEL, fd, nil) // closing removes it anyway
	unix.Close(fd)
	delete(o.streams, fd)
}

// wait relays what every pipe still holds, closes them and releases the
// relay's own fds. Called once, after every process of the cluster has
// exited: no more output can come, so it does not wait for EOFs.
func (o *outputs) wait() {
	o.mu.Lock()
	o.stopping = true
	o.mu.Unlock()
	o.poke()
	<-o.done
	unix.Close(o.wake)
	unix.Close(o.epfd)
}
