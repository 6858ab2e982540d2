package master

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// reaper owns every wait4 of the master. On SIGCHLD it reaps in a WNOHANG
// loop and forwards each exit to the supervisor loop, which ignores pids it
// does not know (orphans reparented to the master as child subreaper, or to
// PID 1). Without Options.Subreaper it waits only for the pids it was
// told about and never calls wait4(-1).
type reaper struct {
	all   bool // wait4(-1): reap every child
	exits chan exitEvent
	sigs  chan os.Signal
	done  chan struct{}
	ended chan struct{} // the loop reads exits no more: drop them
	end   sync.Once
	wg    sync.WaitGroup

	mu     sync.Mutex
	pids   map[int]struct{}          // !all: the pids to wait for
	owned  map[int]chan<- exitStatus // exits that go to their owner, not the loop
	onReap func(pids []int)          // called after each batch of reaped pids
	poke   chan struct{}
}

// startReaper makes the process a child subreaper (unless onlyWorkers) and
// starts the reaper goroutine. stop ends it.
func startReaper(onlyWorkers bool) (*reaper, error) {
	if !onlyWorkers {
		if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
			return nil, fmt.Errorf("become child subreaper: %w", os.NewSyscallError("prctl", err))
		}
	}
	r := &reaper{
		all:   !onlyWorkers,
		exits: make(chan exitEvent),
		sigs:  make(chan os.Signal, 1),
		done:  make(chan struct{}),
		ended: make(chan struct{}),
		pids:  make(map[int]struct{}),
		owned: make(map[int]chan<- exitStatus),
		poke:  make(chan struct{}, 1),
	}
	signal.Notify(r.sigs, syscall.SIGCHLD)
	r.wg.Add(1)
	go r.run()
	return r, nil
}

// startOwned runs fork, which starts a child and returns its pid, and
// delivers that child's exit on the returned channel (buffered) instead of
// to the loop. The reaper cannot reap the child before it is registered:
// it looks its pids up under the lock held across fork.
func (r *reaper) startOwned(fork func() (int, error)) (int, <-chan exitStatus, error) {
	r.mu.Lock()
	pid, err := fork()
	if err != nil {
		r.mu.Unlock()
		return 0, nil, err
	}
	ch := r.ownLocked(pid)
	r.mu.Unlock()
	r.kick()
	return pid, ch, nil
}

// notifyReaped makes the reaper call f, from its goroutine, with the pids
// of each batch it reaped (owned ones included).
func (r *reaper) notifyReaped(f func(pids []int)) {
	r.mu.Lock()
	r.onReap = f
	r.mu.Unlock()
}

// watch registers a pid to wait for (needed only without Options.Subreaper, where
// a child that exited before it was registered is found by the poke).
// ownLocked registers pid's exit to go to the returned channel; r.mu is
// held.
func (r *reaper) ownLocked(pid int) <-chan exitStatus {
	ch := make(chan exitStatus, 1)
	r.owned[pid] = ch
	if !r.all {
		r.pids[pid] = struct{}{}
	}
	return ch
}

// kick has the reaper look for exits now.
func (r *reaper) kick() {
	select {
	case r.poke <- struct{}{}:
	default:
	}
}

func (r *reaper) watch(pid int) {
	if r.all {
		return
	}
	r.mu.Lock()
	r.pids[pid] = struct{}{}
	r.mu.Unlock()
	r.kick()
}

func (r *reaper) run() {
	defer r.wg.Done()
	for {
		if !r.reap() {
			return
		}
		select {
		case <-r.sigs:
		case <-r.poke:
		case <-r.done:
			return
		}
	}
}

// reap collects every exited child; false when the reaper was stopped
// while it was handing an exit to the loop.
func (r *reaper) reap() bool {
	var batch []int
	defer func() {
		r.mu.Lock()
		f := r.onReap
		r.mu.Unlock()
		if f != nil && len(batch) > 0 {
			f(batch)
		}
	}()
	for {
		pid, status, ok := r.wait()
		if !ok {
			return true
		}
		batch = append(batch, pid)
		r.mu.Lock()
		owner, owned := r.owned[pid]
		delete(r.owned, pid)
		r.mu.Unlock()
		if owned {
			owner <- status // buffered, used once
			continue
		}
		select {
		case r.exits <- exitEvent{pid: pid, status: status}:
		case <-r.ended:
			// The cluster is gone; what is reaped now (the guardian, an
			// embedder's stray child) is none of the loop's business.
		case <-r.done:
			return false
		}
	}
}

// wait reaps one exited child without blocking.
func (r *reaper) wait() (int, exitStatus, bool) {
	var ws unix.WaitStatus
	if r.all {
		for {
			pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil || pid <= 0 {
				return 0, exitStatus{}, false // ECHILD: no children; 0: none exited
			}
			return pid, toExitStatus(ws), true
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for pid := range r.pids {
		got, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil)
		if errors.Is(err, unix.EINTR) {
			got, err = unix.Wait4(pid, &ws, unix.WNOHANG, nil)
		}
		switch {
		case err != nil:
			// ECHILD: someone else reaped it (cannot happen with one reaper);
			// report it as gone so the loop does not wait forever.
			delete(r.pids, pid)
			return pid, exitStatus{code: -1}, true
		case got == pid:
			delete(r.pids, pid)
			return pid, toExitStatus(ws), true
		}
	}
	return 0, exitStatus{}, false
}

func toExitStatus(ws unix.WaitStatus) exitStatus {
	if ws.Signaled() {
		return exitStatus{signal: syscall.Signal(ws.Signal())}
	}
	return exitStatus{code: ws.ExitStatus()}
}

// loopEnded says the loop reads exits no more; the reaper keeps reaping
// (the guardian's exit is still to come) and drops what it would forward.
func (r *reaper) loopEnded() {
	r.end.Do(func() { close(r.ended) })
}

// stop ends the reaper goroutine and its signal subscription.
func (r *reaper) stop() {
	signal.Stop(r.sigs)
	close(r.done)
	r.wg.Wait()
}
