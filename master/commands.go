package master

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"time"
)

// Commands: every request to the supervisor (reload, scale, stop, pause,
// signal a slot, a snapshot of the table, a worker's listen request) is a
// value the loop applies on its own goroutine, with a reply channel it
// answers on. The public methods of Master, the signal table (signals.go)
// and the IPC sessions are adapters over these values; nothing else
// mutates supervisor state.

// Errors of the command methods, for [errors.Is].
var (
	// ErrNotRunning is returned by a command method called before Run
	// started or after it returned.
	ErrNotRunning = errors.New("master: not running")
	// ErrReloadInProgress is returned by [Master.Reload] while another
	// reload runs; the running one goes on.
	ErrReloadInProgress = errors.New("master: reload already in progress")
	// ErrStopping is returned by a command that cannot apply once the
	// master is stopping.
	ErrStopping = errors.New("master: stopping")
	// ErrNoWorker is returned for a slot that does not exist or has no
	// worker that can take the command (none running, or none that spoke
	// IPC for Send and Request).
	ErrNoWorker = errors.New("master: no such worker")
	// ErrWorkerGone is wrapped by the error of a [Master.Request] whose
	// worker exited or closed its connection before it answered; the error
	// also wraps an [*ipc.RemoteError] with Code [ipc.CodeGone].
	ErrWorkerGone = errors.New("master: worker gone")
)

// command is one request to the loop. apply runs on the loop's goroutine
// and answers on the command's reply channel, which is buffered so that the
// loop never waits for the caller.
type command interface {
	apply(l *loop)
}

// ReloadResult describes a rolling reload.
type ReloadResult struct {
	// Started and Finished bound the reload.
	Started, Finished time.Time
	// Slots has one entry per slot the reload reached, in the order it
	// replaced them. A slot that had no worker when its turn came is listed
	// with OldPID 0 and NewPID 0: its next start uses the new command.
	Slots []SlotReload
	// Resumed is true when the reload only restarted the workers after a
	// maintenance stop (WINCH); Slots is empty then.
	Resumed bool
}

// SlotReload is the outcome of one slot in a [ReloadResult].
type SlotReload struct {
	Slot int
	// OldPID is the worker that was replaced (drained once the new one was
	// ready); NewPID is its replacement, 0 when none started.
	OldPID, NewPID int
	// ReadyAfter is how long the replacement took to become ready.
	ReadyAfter time.Duration
	// Err is why this slot's replacement failed (the reload was aborted);
	// nil otherwise. A slot whose replacement was stopped because another
	// slot failed has Err nil and NewPID set, ReadyAfter 0.
	Err error
}

// ReloadError is the error of an aborted reload: Slot's replacement did not
// become ready (it exited, could not start, or missed Options.ReadyTimeout);
// the old workers keep serving.
type ReloadError struct {
	Slot   int
	PID    int    // the failed replacement, 0 if it never started
	Reason string // e.g. "not ready after 5s"
}

func (e *ReloadError) Error() string {
	if e.PID == 0 {
		return fmt.Sprintf("reload: worker %d: %s", e.Slot, e.Reason)
	}
	return fmt.Sprintf("reload: worker %d (pid %d) %s", e.Slot, e.PID, e.Reason)
}

// The results of reloads that did not run to their end.
var (
	errReloadRestarted = errors.New("reload started over by a newer one")
	errReloadPaused    = errors.New("reload canceled by a maintenance stop")
)

// WorkerState is the state of a worker incarnation.
type WorkerState string

// Worker states, in order.
const (
	WorkerStarting WorkerState = "starting"
	WorkerReady    WorkerState = "ready"
	WorkerDraining WorkerState = "draining"
)

// WorkerInfo describes one live worker process ([Master.Workers]).
type WorkerInfo struct {
	Slot       int
	PID        int
	Generation int
	State      WorkerState
	// Replacing is true for a reload's new worker that starts beside the
	// slot's serving one.
	Replacing bool
	// Online is true once its IPC hello arrived.
	Online  bool
	Started time.Time
	Ready   time.Time // zero until ready
	// Restarts counts the unplanned restarts of the slot (crashes, kills
	// for failing), not reloads.
	Restarts int
	// LastExit describes how the slot's previous worker ended, e.g.
	// "exited with code 1"; empty for the slot's first worker.
	LastExit string
	// LastCause says in words why the slot's previous worker ended (see
	// Event.Cause); empty for the slot's first worker.
	LastCause string
	// Hangs counts the slot's workers found hung (Options.HeartbeatTimeout,
	// Options.Watchdog); they are not counted in Restarts.
	Hangs int
	// Memory is the resident memory of the worker's process group in
	// bytes at the last sample (Options.MaxMemory), 0 if never sampled.
	Memory int64
	// Stats are the latest counters the worker reported (ipc KindStats),
	// nil if none; LastHeartbeat is the time of its last heartbeat.
	Stats         map[string]int64
	LastHeartbeat time.Time
}

// do hands c to the loop. It fails with ErrNotRunning when Run is not
// running, and with ctx's error when ctx ends first.
func (m *Master) do(ctx context.Context, c command) error {
	if !m.running.Load() {
		return ErrNotRunning
	}
	select {
	case <-m.loopEnded:
		return ErrNotRunning
	default:
	}
	select {
	case m.cmds <- c:
		return nil
	case <-m.loopEnded:
		return ErrNotRunning
	case <-ctx.Done():
		return ctx.Err()
	}
}

// await waits for a command's reply.
func await[T any](ctx context.Context, m *Master, reply <-chan T) (T, error) {
	select {
	case v := <-reply:
		return v, nil
	case <-ctx.Done():
		var zero T
		return zero, ctx.Err()
	case <-m.loopEnded:
		// The loop answers every command it took before it ends; a reply
		// may still be there.
		select {
		case v := <-reply:
			return v, nil
		default:
			var zero T
			return zero, ErrNotRunning
		}
	}
}

// Reload starts a rolling reload, as SIGHUP does, and returns when it
// finished, was aborted, or was started over by a SIGHUP. The result names
// every slot's old and new pid. An aborted reload returns the partial result
// and a [*ReloadError] naming the failed slot; the old workers keep serving.
// While another reload runs it returns [ErrReloadInProgress] at once (a
// SIGHUP instead starts the running one over). After a maintenance stop it
// starts the workers again (Resumed). Cancelling ctx stops the wait, not the
// reload. Safe for concurrent use.
func (m *Master) Reload(ctx context.Context) (ReloadResult, error) {
	c, err := m.startReload(ctx)
	if err != nil {
		return ReloadResult{}, err
	}
	return m.awaitReload(ctx, c)
}

// startReload hands a reload to the loop and returns once the loop took it
// (the reload began, or was answered at once: in progress, stopping,
// resumed).
func (m *Master) startReload(ctx context.Context) (*reloadCmd, error) {
	c := &reloadCmd{reply: make(chan reloadReply, 1), applied: make(chan struct{})}
	if err := m.do(ctx, c); err != nil {
		return nil, err
	}
	return c, nil
}

// awaitReload waits for the result of a reload of startReload.
func (m *Master) awaitReload(ctx context.Context, c *reloadCmd) (ReloadResult, error) {
	r, err := await(ctx, m, c.reply)
	if err != nil {
		return ReloadResult{}, err
	}
	return r.res, r.err
}

// Scale sets the number of slots to n (at least 1): new slots start a
// worker at once, removed ones (the highest) drain theirs. It returns once
// the change is applied, without waiting for new workers to be ready
// (watch for EventReady). Safe for concurrent use.
func (m *Master) Scale(ctx context.Context, n int) error {
	if n < 1 {
		return fmt.Errorf("scale to %d: want at least 1 worker", n)
	}
	_, err := m.scale(ctx, &scaleCmd{n: n})
	return err
}

// scale applies c and returns the slot count after it.
func (m *Master) scale(ctx context.Context, c *scaleCmd) (int, error) {
	c.reply = make(chan error, 1)
	if err := m.do(ctx, c); err != nil {
		return 0, err
	}
	err, werr := await(ctx, m, c.reply)
	if werr != nil {
		return 0, werr
	}
	return c.slots, err
}

// Stop stops the cluster gracefully, as SIGTERM does, and waits until Run
// has returned. When ctx ends first, the workers are killed at once
// (SIGKILL, as SIGQUIT does), Stop still waits for Run to return, and
// returns ctx's error. It returns nil when the cluster had already stopped.
// Safe for concurrent use.
func (m *Master) Stop(ctx context.Context) error {
	if !m.running.Load() {
		return ErrNotRunning
	}
	// The loop takes commands at once; ctx bounds the stop, not the asking
	// (an expired ctx still stops, at once).
	if err := m.do(context.Background(), &stopCmd{why: "stop requested"}); err != nil {
		<-m.done // the loop has ended (ErrNotRunning): Run returns soon
		return nil
	}
	select {
	case <-m.done:
		return nil
	case <-ctx.Done():
	}
	_ = m.do(context.Background(), &stopCmd{force: true, why: "stop deadline"})
	<-m.done
	return ctx.Err()
}

// Signal sends sig to the process group of slot's serving worker (during a
// reload, the old one until its replacement is ready). It returns an error
// wrapping [ErrNoWorker] when the slot does not exist or is empty, and an
// error for a sig outside 1..64. A worker it kills is restarted by the
// restart policy, as any crash. Safe for
// concurrent use.
func (m *Master) Signal(slot int, sig syscall.Signal) error {
	if sig <= 0 || sig > 64 {
		return fmt.Errorf("signal worker %d: %d is not a signal", slot, int(sig))
	}
	c := &signalCmd{slot: slot, sig: sig, reply: make(chan error, 1)}
	if err := m.do(context.Background(), c); err != nil {
		return err
	}
	err, werr := await(context.Background(), m, c.reply)
	if werr != nil {
		return werr
	}
	return err
}

// Workers returns a snapshot of every live worker, by slot and generation
// (a slot being reloaded has two). Before Run and after it returned it
// returns nil. Safe for concurrent use.
func (m *Master) Workers() []WorkerInfo {
	c := &workersCmd{reply: make(chan []WorkerInfo, 1)}
	if m.do(context.Background(), c) != nil {
		return nil
	}
	ws, _ := await(context.Background(), m, c.reply)
	return ws
}

type reloadReply struct {
	res ReloadResult
	err error
}

// reloadCmd starts a reload. From Reload (reply set) it refuses to start
// over a running one; from SIGHUP (reply nil) it starts over.
type reloadCmd struct {
	reply chan reloadReply
	// applied, when set, is closed once apply ran: the reload began, or its
	// answer is in reply already.
	applied chan struct{}
}

func (c *reloadCmd) apply(l *loop) {
	if c.applied != nil {
		defer close(c.applied)
	}
	answer := func(res ReloadResult, err error) {
		if c.reply != nil {
			c.reply <- reloadReply{res, err}
		}
	}
	switch {
	case l.stopping:
		answer(ReloadResult{}, ErrStopping)
	case l.paused:
		now := time.Now()
		l.resume()
		answer(ReloadResult{Started: now, Finished: now, Resumed: true}, nil)
	case l.reload != nil && c.reply != nil:
		answer(ReloadResult{}, ErrReloadInProgress)
	default:
		l.beginReload(c.reply)
	}
}

// scaleCmd sets the slot count to n, or changes it by delta (TTIN/TTOU).
type scaleCmd struct {
	n, delta int
	reply    chan error
	slots    int // the slot count after it, set before the reply
}

func (c *scaleCmd) apply(l *loop) {
	var err error
	n := c.n
	if c.delta != 0 {
		n = len(l.slots) + c.delta
	}
	switch {
	case l.stopping:
		err = ErrStopping
	case n < 1:
		l.log.Warn("not scaling below one worker")
		err = fmt.Errorf("scale to %d: want at least 1 worker", n)
	default:
		for len(l.slots) < n {
			l.scaleUp()
		}
		for len(l.slots) > n {
			l.scaleDown()
		}
	}
	c.slots = len(l.slots)
	if c.reply != nil {
		c.reply <- err
	}
}

// stopCmd begins a graceful (or, with force, immediate) stop.
type stopCmd struct {
	force bool
	sig   syscall.Signal // the signal that asked for it, or 0
	why   string         // else, why
}

func (c *stopCmd) apply(l *loop) {
	msg := "stopping"
	if c.force {
		msg = "stopping at once"
	}
	if c.sig != 0 {
		l.log.Info(msg, "signal", signalName(c.sig))
	} else {
		l.log.Info(msg, "reason", c.why)
	}
	l.beginStop(c.force)
}

// pauseCmd stops every worker but keeps the master (WINCH).
type pauseCmd struct{}

func (pauseCmd) apply(l *loop) {
	if !l.stopping && !l.paused {
		l.pause()
	}
}

type signalCmd struct {
	slot  int
	sig   syscall.Signal
	reply chan error
}

func (c *signalCmd) apply(l *loop) {
	if c.slot < 0 || c.slot >= len(l.slots) || l.slots[c.slot].cur == nil {
		c.reply <- fmt.Errorf("signal worker %d: %w", c.slot, ErrNoWorker)
		return
	}
	w := l.slots[c.slot].cur
	w.log.Debug("signal sent", "signal", signalName(c.sig))
	if err := w.proc.signal(c.sig); err != nil {
		c.reply <- fmt.Errorf("signal worker %d: %w", c.slot, err)
		return
	}
	c.reply <- nil
}

type workersCmd struct {
	reply chan []WorkerInfo
}

func (c *workersCmd) apply(l *loop) {
	ws := l.workers()
	infos := make([]WorkerInfo, 0, len(ws))
	for _, w := range ws {
		info := WorkerInfo{
			Slot: w.slot.id, PID: w.pid, Generation: w.gen,
			State:     WorkerState(w.state.String()),
			Replacing: w.slot.next == w, Online: w.online,
			Started: w.started, Ready: w.readySince,
			Restarts: w.slot.restarts, LastExit: w.slot.lastExit,
			LastCause: w.slot.lastCause, Hangs: w.slot.hangs, Memory: w.rss,
			LastHeartbeat: w.heartbeat,
		}
		if w.stats != nil {
			info.Stats = make(map[string]int64, len(w.stats))
			for k, v := range w.stats {
				info.Stats[k] = v
			}
		}
		infos = append(infos, info)
	}
	c.reply <- infos
}
