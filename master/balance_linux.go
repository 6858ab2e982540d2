package master

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/clusterd/clusterd/ipc"
	"golang.org/x/sys/unix"
)

// The accept side of balancing: one goroutine per balanced listener
// accepts in batches (accept4 until EAGAIN, or a batch is full, per
// wake-up of the runtime poller) and hands each batch out, several
// descriptors per message where several go to one worker. Nothing on this
// path allocates per connection.
//
// A listener that stops listening (accept4 fails with EINVAL) is healed by
// the loop's listener check (watch_linux.go), in place or by a new socket;
// the accepter waits for that and then accepts on the healed socket, under
// the same listener id (balancer.healed).

// acceptBatch is the most connections accepted before they are handed out.
const acceptBatch = 64

// Accept error back-off: the first wait after an error like EMFILE, and
// the longest.
const (
	acceptBackoffMin = 5 * time.Millisecond
	acceptBackoffMax = time.Second
)

// accepter accepts on one listener.
type accepter struct {
	b    *balancer
	id   uint8
	addr string

	// wake is kicked when the listener was healed: it listens again, or
	// next holds the socket that replaced it.
	wake chan struct{}

	mu   sync.Mutex
	f    *os.File // a non-blocking duplicate of the listener, owned
	next *os.File // the duplicate of a replacement, until run takes it
}

// startAccepter starts accepting on listener f (which stays owned by the
// caller; the accepter works on a duplicate of its own).
func (b *balancer) startAccepter(f *os.File, id uint8, addr string) (*accepter, error) {
	dup, err := nonblockingDup(f, addr)
	if err != nil {
		return nil, err
	}
	a := &accepter{b: b, id: id, addr: addr, f: dup, wake: make(chan struct{}, 1)}
	b.wg.Add(1)
	go a.run()
	b.log.Info("balancing connections", "addr", addr, "balance", b.mode.String())
	return a, nil
}

// nonblockingDup returns a non-blocking duplicate of listener f,
// registered with the runtime poller.
func nonblockingDup(f *os.File, addr string) (*os.File, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("balance %s: %w", addr, err)
	}
	var dup int
	var derr error
	if err := rc.Control(func(fd uintptr) {
		dup, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		derr = err
	}
	if derr != nil {
		return nil, fmt.Errorf("balance %s: %w", addr, os.NewSyscallError("fcntl", derr))
	}
	// The listener is the master's alone in these modes (workers never get
	// it), so switching its open file description to non-blocking mode
	// affects nobody else; os.NewFile then registers it with the poller.
	if err := unix.SetNonblock(dup, true); err != nil {
		closeFD(dup)
		return nil, fmt.Errorf("balance %s: %w", addr, os.NewSyscallError("fcntl", err))
	}
	return os.NewFile(uintptr(dup), addr), nil
}

// healed tells the accepter of listener old, if it has one, that old was
// healed: nf is old itself when it listens again in place, or the socket
// that replaced it (old is closed next). The accepter moves to nf, and
// the listener keeps its id, so that workers that ask for the address
// again get the same one. Called by the loop (listeners.check).
func (b *balancer) healed(old, nf *os.File) {
	id, ok := b.ids[old]
	if !ok {
		return // no worker asked for it: nobody accepts on it yet
	}
	var a *accepter
	for _, c := range b.acc {
		if c.id == id {
			a = c
		}
	}
	if a == nil {
		return
	}
	if nf != old {
		dup, err := nonblockingDup(nf, a.addr)
		if err != nil {
			b.log.Error("balancing stopped: cannot accept on the replaced listener", "addr", a.addr, "error", err)
			return
		}
		delete(b.ids, old)
		b.ids[nf] = id
		a.mu.Lock()
		if a.next != nil {
			_ = a.next.Close() // replaced again before run took it
		}
		a.next = dup
		// Ends a wait of run's in the poller on the old socket, which may
		// never be woken again.
		_ = a.f.SetReadDeadline(time.Now())
		a.mu.Unlock()
	}
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

// takeNext makes run accept on the replacement that healed put in next,
// if any, and closes the old socket's duplicate.
func (a *accepter) takeNext() (syscall.RawConn, bool) {
	a.mu.Lock()
	nf := a.next
	a.next = nil
	old := a.f
	if nf != nil {
		a.f = nf
	}
	a.mu.Unlock()
	if nf == nil {
		return nil, false
	}
	_ = old.Close() // a socket that no longer listens: nothing to report
	rc, err := nf.SyscallConn()
	if err != nil {
		return nil, false
	}
	a.b.log.Info("balancing connections on the replaced listener", "addr", a.addr)
	return rc, true
}

// clearDeadline undoes a deadline of healed's that found no replacement
// to move to.
func (a *accepter) clearDeadline() {
	a.mu.Lock()
	defer a.mu.Unlock()
	_ = a.f.SetReadDeadline(time.Time{})
}

// shutdown unblocks run (which then returns); called after b.stop closed.
func (a *accepter) shutdown() {
	a.mu.Lock()
	defer a.mu.Unlock()
	_ = a.f.Close() // interrupts the poller wait; nothing to report at the end
	if a.next != nil {
		_ = a.next.Close()
		a.next = nil
	}
}

func (a *accepter) run() {
	defer a.b.wg.Done()
	a.mu.Lock()
	f := a.f
	a.mu.Unlock()
	rc, err := f.SyscallConn()
	if err != nil {
		a.b.log.Error("balancing stopped", "addr", a.addr, "error", err)
		return
	}
	var (
		batch   [acceptBatch]int
		picks   [acceptBatch]*target
		group   [acceptBatch]int
		n       int
		aerr    error
		backoff time.Duration
		burst   int  // accept errors since the last success
		locked  bool // accept holds the balancer's gate for reading
		deaf    bool // the listener stopped listening (EINVAL)
	)
	// accept holds the balancer's gate for reading from its first accept4
	// to the end of the batch's hand-off (the loop below releases it), and
	// never while it waits for the poller: an upgrade's pauseAccepting
	// waits for the batches in hand only.
	accept := func(fd uintptr) bool {
		if !locked {
			a.b.gate.RLock()
			locked = true
		}
		if a.b.acceptPaused.Load() && n == 0 {
			a.b.gate.RUnlock()
			locked = false
			return true // an upgrade: accept nothing, the backlog holds them
		}
		for n < acceptBatch {
			nfd, _, errno := unix.Syscall6(unix.SYS_ACCEPT4, fd, 0, 0, unix.SOCK_CLOEXEC, 0, 0)
			switch errno {
			case 0:
				batch[n] = int(nfd)
				n++
				continue
			case unix.EINTR, unix.ECONNABORTED, unix.EPROTO:
				continue // that connection is gone; accept the next
			case unix.EAGAIN:
				// Drained: hand out what came, or wait for the poller.
				if n == 0 {
					a.b.gate.RUnlock()
					locked = false
					return false
				}
				return true
			}
			aerr = errno
			return true
		}
		return true
	}
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		// Connections nobody could take go first; while they wait, accept
		// no more (the kernel's backlog holds the rest).
		for !a.b.retryHeld() {
			timer.Reset(10 * time.Millisecond)
			select {
			case <-a.b.stop:
				return
			case <-a.b.wake:
			case <-timer.C:
			}
			timer.Stop()
		}
		n, aerr, locked = 0, nil, false
		rerr := rc.Read(accept)
		if n > 0 {
			if burst > 0 {
				a.b.log.Info("accepting again", "addr", a.addr, "failed_accepts", burst)
			}
			burst, backoff, deaf = 0, 0, false
			a.handOut(batch[:n], picks[:n], group[:0])
		}
		if locked {
			a.b.gate.RUnlock()
		}
		if a.b.acceptPaused.Load() && rerr == nil && aerr == nil {
			if !a.b.awaitResume() {
				return
			}
			continue
		}
		if rerr != nil {
			if errors.Is(rerr, os.ErrDeadlineExceeded) {
				if nrc, ok := a.takeNext(); ok {
					rc, deaf = nrc, false
				} else {
					a.clearDeadline()
				}
				continue // healed stopped the wait: on to the replacement
			}
			select {
			case <-a.b.stop:
			default:
				a.b.log.Error("balancing stopped", "addr", a.addr, "error", rerr)
			}
			return
		}
		if aerr == nil {
			continue
		}
		var errno syscall.Errno
		if errors.As(aerr, &errno) && errno == unix.EINVAL {
			// The socket stopped listening (shutdown(2) by someone
			// holding it). The loop's listener check heals it in place or
			// replaces it, and healed wakes this wait; until then the
			// port refuses connections. Tried again now and then in case
			// it listens again by other means.
			if !deaf {
				a.b.log.Warn("balanced listener stopped listening; accepting again once it is healed", "addr", a.addr)
				deaf = true
				if a.b.deaf != nil {
					a.b.deaf() // heal it now, not at the next periodic check
				}
			}
			timer.Reset(acceptBackoffMax)
			select {
			case <-a.b.stop:
				return
			case <-a.wake:
			case <-timer.C:
			}
			timer.Stop()
			if nrc, ok := a.takeNext(); ok {
				rc, deaf = nrc, false
			}
			continue
		}
		if !errors.As(aerr, &errno) || !temporaryAccept(errno) {
			a.b.log.Error("balancing stopped", "addr", a.addr, "error", os.NewSyscallError("accept4", aerr))
			return
		}
		// EMFILE and the like: the pending connection stays queued and the
		// socket stays readable, so wait before trying again. Logged once
		// per burst.
		if burst == 0 {
			a.b.log.Warn("accept failed; backing off", "addr", a.addr, "error", os.NewSyscallError("accept4", aerr))
		}
		burst++
		backoff = min(max(2*backoff, acceptBackoffMin), acceptBackoffMax)
		timer.Reset(backoff)
		select {
		case <-a.b.stop:
			return
		case <-timer.C:
		}
	}
}

// temporaryAccept reports accept errors that the master outlives.
func temporaryAccept(errno syscall.Errno) bool {
	switch errno {
	case unix.EMFILE, unix.ENFILE, unix.ENOBUFS, unix.ENOMEM, unix.EPERM:
		return true
	}
	return false
}

// handOut gives each of fds to a worker, grouping the ones that go to the
// same worker into one message; picks and group are scratch space of
// len(fds) and cap(fds).
func (a *accepter) handOut(fds []int, picks []*target, group []int) {
	b := a.b
	now := time.Now().UnixNano()
	for i, fd := range fds {
		if picks[i] = b.pickAfter(a.id, now, nil, picks[:i]); picks[i] == nil {
			b.hold(heldConn{fd: fd, lid: a.id}) // nobody can take it now
		}
	}
	for i := 0; i < len(picks); {
		t := picks[i]
		if t == nil {
			i++
			continue
		}
		group = group[:0]
		for j := i; j < len(picks) && len(group) < ipc.DefaultMaxFDs; j++ {
			if picks[j] == t {
				group = append(group, fds[j])
				picks[j] = nil
			}
		}
		if !t.hand(a.id, group) {
			for _, fd := range group {
				b.route(a.id, fd, t)
			}
		}
	}
}
