package master

import (
	"context"
	"fmt"
	"os"
	"slices"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/clusterd/clusterd/ipc"
	"github.com/clusterd/clusterd/sockshare"
	"github.com/hashicorp/go-hclog"
)

// The supervisor loop. One goroutine (loop.run) owns every field of loop,
// slot and worker; child exits, worker events, signals, timers and ctx reach
// it on channels, so nothing here takes a lock.

// process is one started worker process as the loop sees it.
type process interface {
	// signal sends sig to the worker's process group.
	signal(sig syscall.Signal) error
	// drain asks a library worker over IPC to stop accepting and finish
	// within timeout (best effort; the stop signal is sent as well).
	drain(timeout time.Duration)
	// release frees what the master holds for the process (its IPC
	// connection). The loop calls it once, after the process was reaped.
	release()
	// send queues a message to the worker over IPC; call sends a request
	// and waits for its answer. Both are safe from any goroutine, and fail
	// once the connection is gone.
	send(m *ipc.Message) error
	call(ctx context.Context, m *ipc.Message) (*ipc.Message, error)
}

// spawnRequest is what a starter needs to start one worker.
type spawnRequest struct {
	slot, gen int
	files     []*os.File // listeners at fds 3.., owned by the caller
	names     []string   // LISTEN_FDNAMES
}

// starter starts worker processes. start returns once the process exists
// (fork succeeded); its exit arrives later as an exitEvent.
type starter interface {
	start(req spawnRequest) (pid int, p process, err error)
}

// sockets hands out the listeners of a slot.
type sockets interface {
	// forSlot returns the listeners (owned by sockets) and their names.
	forSlot(slot int) ([]*os.File, []string, error)
	// dropSlot closes what belongs to a slot removed by scaling down.
	dropSlot(slot int)
	// listen returns the socket for a worker's run-time listen request
	// (owned by sockets), or a *listenError.
	listen(slot, pid int, spec sockshare.Spec) (*os.File, error)
	// acceptQueue sums the accept queues of the TCP listeners: connections
	// waiting and the backlog limit; ok is false without a TCP listener.
	acceptQueue() (queued, limit int, ok bool)
}

// exitEvent reports a reaped child.
type exitEvent struct {
	pid    int
	status exitStatus
}

type eventKind int

const (
	evReady      eventKind = iota // readiness reported (source says how)
	evStopping                    // the worker says it is stopping (STOPPING=1)
	evWatchdog                    // WATCHDOG=1 keep-alive
	evProtocol                    // the worker broke the IPC protocol (err)
	evOnline                      // the worker's IPC hello arrived
	evDisconnect                  // the worker's IPC connection ended (err: why, nil if closed)
	evHeartbeat                   // an IPC heartbeat
	evStats                       // IPC stats (stats)
	evExec                        // the exec-worker step ran the command (err nil) or failed to (err)
)

// workerEvent is a message from or about a worker, attributed by pid.
type workerEvent struct {
	pid       int
	kind      eventKind
	source    ReadyKind
	err       error
	stats     map[string]int64
	target    *target    // evOnline in the balanced modes
	jobTarget *jobTarget // evOnline
}

type workerState int

const (
	stateStarting workerState = iota
	stateReady
	stateDraining
	stateExited
)

func (s workerState) String() string {
	return [...]string{"starting", "ready", "draining", "exited"}[s]
}

// worker is one incarnation of a slot.
type worker struct {
	slot    *slot
	gen     int
	pid     int
	proc    process
	log     hclog.Logger
	state   workerState
	started time.Time

	readyAt  time.Time // ReadyDelay: ready at this time
	readyBy  time.Time // ReadyTimeout deadline; zero: none
	killAt   time.Time // draining: SIGKILL at this time; zero: none
	expected bool      // its exit is intended (drained or killed on purpose)
	failed   bool      // killed on purpose, but for failing (ready timeout)
	why      string    // why it was stopped, for the exit log

	online       bool      // its IPC hello arrived
	disconnected bool      // EventDisconnect was emitted
	readySince   time.Time // when it became ready
	heartbeat    time.Time // its last IPC heartbeat
	stats        map[string]int64

	watchdogBy   time.Time  // Watchdog: hung without a WATCHDOG=1 by then; zero: not armed
	retiring     string     // why it is being replaced (health); "": it is not
	hung         bool       // it was found hung
	rss          int64      // its process group's memory at the last sample
	retireAfter  int64      // RetireRequests with its jitter; 0: never
	killed       bool       // the master SIGKILLed it
	deadline     bool       // its drain deadline (KillTimeout) passed
	dumpSent     bool       // it was sent Options.DumpSignal before its SIGKILL
	signalled    bool       // the master sent it its stop signal
	exec         execState  // what is known of its execve
	heldExit     *exitEvent // its exit, held until its exec outcome arrives
	target       *target    // takes balanced connections; nil: not balanced or not online
	jobTarget    *jobTarget // takes jobs once ready; nil: not online
	readyPending bool       // ready by Options.Ready, waiting for its hello (balanced modes)
}

// slot is one numbered place for a worker, stable across restarts.
type slot struct {
	id        int
	cur       *worker   // the serving incarnation (starting or ready)
	next      *worker   // a reload's replacement, starting
	restartAt time.Time // pending restart; zero: none
	backoff   backoff
	removed   bool
	restarts  int    // unplanned restarts
	hangs     int    // workers found hung
	lastExit  string // how its newest exited worker ended
	lastCause string // why, in words (exitCause)
	lastGen   int    // the generation lastExit describes
}

// leftovers are the cluster's processes besides its workers: their
// children, also those that left the worker's process group.
type leftovers interface {
	// members lists the live ones.
	members() []int
	// signal sends sig to all of them.
	signal(sig syscall.Signal)
	// killDescendants kills, without blocking the caller, the descendants
	// of the exited worker (slot id, generation gen) that left its process
	// group (see orphans_linux.go).
	killDescendants(id, gen int)
}

// loopDeps are the loop's connections to the outside world.
type loopDeps struct {
	starter  starter
	sockets  sockets
	exits    <-chan exitEvent
	events   <-chan workerEvent
	cluster  leftovers                                // nil: the loop ends with its workers
	sdNotify func(state string)                       // the master's own sd_notify; never nil
	memory   func(pgids []int) (map[int]int64, error) // resident bytes of these process groups; nil: no sampling
	oomKills func() (uint64, bool)                    // the system's OOM kill count; nil or !ok: unknown
	threads  func(w *worker, why string)              // log what w's threads do, before a kill; nil: nothing
	ready    func()                                   // called once every initial worker is ready
	jitter   func() float64                           // in [0, 1)
	watchdog time.Duration                            // send WATCHDOG=1 this often; 0: never
	commands <-chan command                           // Master's methods, IPC sessions; nil: none
	hub      *eventHub                                // where events go; nil: nowhere
	routes   *atomic.Pointer[routeTable]              // published for Send; nil: not published
	output   func(pid int) *tail                      // takes a worker's last output line; nil: none
	sdStatus func(text string)                        // sends sd_notify STATUS=text; nil: none
	balance  *balancer                                // BalanceRoundRobin, BalanceLeastConn; nil otherwise
	jobs     *dispatcher                              // Dispatch; nil: none (loop tests)
	// checkListeners heals the listeners and reports whether one was
	// replaced (see watchListeners); nil: listeners are not watched.
	checkListeners func(exited *worker, running []*worker) (replaced bool)
	// upgrader replaces the master's image (Options.UpgradeArgs); nil:
	// never. adopt, when not nil, is the state a previous image left: the
	// loop takes its workers instead of starting new ones.
	upgrader   *upgrader
	adopt      *upgradeState
	adoptFiles upgradeFiles
}

type loop struct {
	cfg  *config
	log  hclog.Logger
	rlog hclog.Logger // "reload"
	loopDeps

	slots    []*slot // index = slot id; len = desired count
	gens     map[int]int
	byPID    map[int]*worker
	reload   *reloadState
	stopping bool
	force    bool // stopping with SIGKILL
	paused   bool // WINCH: workers stopped, master and sockets kept
	result   error
	allReady bool
	// spokeIPC is set by the first worker that said hello on IPC. In the
	// balanced modes, start-up fails at ipcBy (ReadyTimeout after it began;
	// zero: no deadline) if none did: a binary that does not speak the
	// protocol, whether it waits or crash-loops, can take no connection.
	spokeIPC bool
	ipcBy    time.Time
	limit    intensity
	lastBad  string    // the last failed exit that was not restarted
	petAt    time.Time // next WATCHDOG=1
	sampleAt time.Time // next memory sample; zero: none
	scaleAt  time.Time // next accept queue sample; zero: none
	scaler   autoscaler
	ooms     uint64    // oomKills at the last look
	stopAt   time.Time // when the stop began
	sweep    sweepState
	rerouted bool      // a slot's serving online worker changed: publish routes
	termAt   time.Time // the TERM or INT that began a stop; zero: none
	checkAt  time.Time // next periodic listener check
	status   string    // the last STATUS= sent
	// upgrading is the upgrade being prepared (upgrade_linux.go); nil:
	// none.
	upgrading *upgradeCmd
}

func newLoop(cfg *config, log hclog.Logger, deps loopDeps) *loop {
	return &loop{
		cfg:      cfg,
		log:      log,
		rlog:     log.Named("reload"),
		loopDeps: deps,
		gens:     make(map[int]int),
		byPID:    make(map[int]*worker),
		limit:    intensity{max: cfg.MaxRestarts, window: cfg.RestartWindow},
		rerouted: true, // publish the first (empty) table
	}
}

// run supervises until every worker has exited after a stop (or, without
// restarts, on its own). It returns nil after a requested stop and the
// reason otherwise.
func (l *loop) run(ctx context.Context) error {
	if l.cfg.workersFrom != "" {
		l.log.Info("worker count from CPUs", "workers", l.cfg.Workers, "source", l.cfg.workersFrom)
	}
	if l.cfg.gomaxprocsFrom != "" {
		l.log.Debug("workers' GOMAXPROCS", "gomaxprocs", l.cfg.gomaxprocs, "source", l.cfg.gomaxprocsFrom)
	}
	if l.adopt != nil {
		l.adoptSlots(l.adopt, l.adoptFiles)
		l.adopt, l.adoptFiles = nil, nil
		l.spokeIPC = true // the previous image's workers: checked then
	} else {
		for i := range l.cfg.Workers {
			l.newSlot(i)
		}
		if l.cfg.Balance.overIPC() && l.cfg.ReadyTimeout > 0 {
			l.ipcBy = time.Now().Add(l.cfg.ReadyTimeout)
		}
	}
	for _, s := range l.slots {
		if s.cur != nil {
			continue // taken over from the previous image
		}
		if err := l.startWorker(s); err != nil {
			// The first start failing is a configuration problem, not a
			// crash to retry: stop what already runs and report it.
			l.result = err
			l.beginStop(false)
			break
		}
	}
	if l.watchdog > 0 {
		l.petAt = time.Now().Add(l.watchdog)
	}
	if l.autoscaling() {
		l.scaleAt = time.Now().Add(l.cfg.ScaleInterval)
	}
	if l.cfg.MaxMemory > 0 && l.memory != nil {
		l.sampleAt = time.Now().Add(l.cfg.SampleInterval)
	}
	if l.oomKills != nil {
		l.ooms, _ = l.oomKills()
	}
	if l.checkListeners != nil {
		l.checkAt = time.Now().Add(listenerCheckInterval)
	}
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	ctxDone := ctx.Done()
	signals := l.cfg.Signals
	defer l.endReload(ErrStopping) // a reload cut short by the end answers its caller
	quiet := false                 // the last iteration handled an event that leaves the status as it was
	for {
		l.publishRoutes()
		if !quiet {
			l.publishStatus()
		}
		quiet = false
		if l.finished() {
			break
		}
		if d, ok := l.nextDeadline(); ok {
			timer.Reset(max(time.Until(d), 0))
		} else {
			timer.Stop()
		}
		select {
		case <-ctxDone:
			ctxDone = nil
			l.log.Info("stopping", "reason", "context canceled")
			l.beginStop(false)
		case sig, ok := <-signals:
			if !ok {
				signals = nil // closed by the caller: no more signals
				continue
			}
			l.onSignal(sig)
		case e := <-l.exits:
			l.onExit(e)
		case e := <-l.events:
			l.onEvent(e)
			// The frequent ones change nothing the status line shows:
			// skip recomputing it for them.
			quiet = e.kind == evHeartbeat || e.kind == evStats || e.kind == evWatchdog
		case c := <-l.commands:
			c.apply(l)
		case <-timer.C:
			l.onTimers(time.Now())
		}
	}
	l.log.Info("stopped")
	return l.result
}

// finished reports whether nothing is left to supervise: no worker, and
// no other process of the cluster (see sweepLeftovers).
func (l *loop) finished() bool {
	if len(l.byPID) > 0 {
		return false
	}
	if !l.stopping {
		if l.paused {
			return false // waiting for HUP
		}
		for _, s := range l.slots {
			if !s.restartAt.IsZero() || s.cur != nil || s.next != nil {
				return false
			}
		}
		// Every worker exited and the policy restarts none of them.
		if l.lastBad != "" && l.result == nil {
			l.result = fmt.Errorf("all workers exited (last: %s)", l.lastBad)
		}
	}
	return l.sweepLeftovers(time.Now())
}

func (l *loop) newSlot(id int) *slot {
	s := &slot{id: id, backoff: backoff{min: l.cfg.BackoffMin, max: l.cfg.BackoffMax}}
	if id < len(l.slots) {
		l.slots[id] = s
	} else {
		l.slots = append(l.slots, s)
	}
	return s
}

// startWorker starts an incarnation of s: as s.cur, or as s.next while a
// reload replaces s.cur.
func (l *loop) startWorker(s *slot) error {
	replace := s.cur != nil
	s.restartAt = time.Time{}
	files, names, err := l.sockets.forSlot(s.id)
	if err != nil {
		return fmt.Errorf("start worker %d: %w", s.id, err)
	}
	if l.cfg.Balance.overIPC() {
		// The master keeps its listeners and hands out connections; a
		// worker asks for an address with worker.Listen.
		files, names = nil, nil
	}
	gen := l.gens[s.id] + 1
	pid, p, err := l.starter.start(spawnRequest{slot: s.id, gen: gen, files: files, names: names})
	if err != nil {
		return fmt.Errorf("start worker %d: %w", s.id, err)
	}
	l.gens[s.id] = gen
	now := time.Now()
	w := &worker{
		slot: s, gen: gen, pid: pid, proc: p, state: stateStarting, started: now,
		log: l.log.With("worker", s.id, "pid", pid, "generation", gen),
	}
	if l.cfg.RetireRequests > 0 {
		w.retireAfter = l.cfg.RetireRequests + int64(l.jitter()*float64(l.cfg.RetireJitter+1))
	}
	l.byPID[pid] = w
	if replace {
		s.next = w
	} else {
		s.cur = w
	}
	w.log.Debug("worker started")
	l.emit(EventFork, w, nil)
	if r, ok := p.(execReporter); ok && r.reportsExec() {
		w.exec = execPending
	}
	switch l.cfg.Ready.Kind {
	case ReadyExec:
		if w.exec == execUntracked {
			l.becameReady(w) // no exec outcome will come: running is all we know
			if !w.readyPending {
				return nil
			}
			// Balanced: ready at its hello, which must come in time.
		}
	case ReadyDelay:
		w.readyAt = now.Add(l.cfg.Ready.Delay)
	}
	if l.cfg.ReadyTimeout > 0 {
		w.readyBy = now.Add(l.cfg.ReadyTimeout)
	}
	return nil
}

// workers lists live workers in slot and generation order (deterministic).
func (l *loop) workers() []*worker {
	ws := make([]*worker, 0, len(l.byPID))
	for _, w := range l.byPID {
		ws = append(ws, w)
	}
	slices.SortFunc(ws, func(a, b *worker) int {
		if a.slot.id != b.slot.id {
			return a.slot.id - b.slot.id
		}
		return a.gen - b.gen
	})
	return ws
}

func (l *loop) onExit(e exitEvent) {
	w := l.byPID[e.pid]
	if w == nil {
		l.log.Trace("reaped process", "pid", e.pid, "status", e.status.String())
		return
	}
	if w.exec == execPending {
		// The reaper was quicker than the exec-outcome pipe, which reports
		// at the latest when the process is gone: act on the exit after it,
		// so that a failed exec is known as one (onExec).
		w.heldExit = &e
		return
	}
	delete(l.byPID, e.pid)
	var last *tail
	if l.output != nil {
		last = l.output(e.pid)
	}
	w.state = stateExited
	l.rerouted = l.rerouted || w.online
	w.proc.release()
	// The worker's children may outlive it in its process group; they must
	// not keep serving (or holding its sockets) behind the master's back.
	_ = w.proc.signal(syscall.SIGKILL)
	if l.cluster != nil && !l.stopping {
		// What left the group dies too; in a stop, the sweep ends it with
		// the stop's grace instead.
		l.cluster.killDescendants(w.slot.id, w.gen)
	}
	uptime := time.Since(w.started)
	kv := []any{"uptime", uptime.Round(time.Millisecond).String()}
	if e.status.signal != 0 {
		kv = append(kv, "signal", signalName(e.status.signal))
	} else {
		kv = append(kv, "exit_code", e.status.code)
	}
	if w.why != "" {
		kv = append(kv, "reason", w.why)
	}
	oom := false
	if e.status.signal == syscall.SIGKILL && !w.killed && l.oomKills != nil {
		if n, ok := l.oomKills(); ok {
			oom = n > l.ooms
			l.ooms = n
		}
	}
	cause := l.exitCause(w, e.status, oom)
	kv = append(kv, "cause", cause)
	if w.expected {
		w.log.Info("worker exited", kv...)
	} else {
		w.log.Warn("worker exited", kv...)
	}
	if w.online && !w.disconnected {
		// release closed the connection; the session's own report of it
		// would arrive after the exit.
		w.disconnected = true
		l.emit(EventDisconnect, w, nil)
	}
	l.emit(EventExit, w, func(ev *Event) {
		ev.ExitCode, ev.Signal, ev.Uptime = e.status.code, e.status.signal, uptime
		ev.ExitedAfterDisconnect = w.expected && !w.failed
		ev.Reason = w.why
		ev.Cause = cause
	})

	s := w.slot
	if w.gen > s.lastGen {
		// A worker drained by a reload may exit after a newer one of its
		// slot; the slot's last exit is the newest generation's.
		s.lastExit, s.lastCause, s.lastGen = e.status.String(), cause, w.gen
	}
	switch {
	case s.next == w:
		s.next = nil
		if !w.expected {
			l.abortReload(s, w.pid, e.status.String()+" before it was ready")
			l.replacementFailed(s)
		}
	case s.cur == w:
		s.cur = nil
		if w.expected || l.stopping || l.paused || s.removed {
			break
		}
		if s.next != nil {
			// A reload's replacement is on its way; it takes over the slot.
			break
		}
		desc := fmt.Sprintf("worker %d %s", s.id, e.status)
		if w.why != "" {
			desc += " (" + w.why + ")"
		}
		l.restartSlot(s, e.status, uptime, desc, last)
	}
	l.watchListeners(w)
}

func (l *loop) onEvent(e workerEvent) {
	w := l.byPID[e.pid]
	if w == nil {
		l.log.Trace("event from unknown process", "pid", e.pid)
		return
	}
	switch e.kind {
	case evReady:
		if l.cfg.Ready.accepts(e.source) {
			l.becameReady(w)
		}
	case evStopping:
		w.log.Debug("worker is stopping")
	case evWatchdog:
		w.log.Trace("watchdog")
		l.onWatchdog(w, time.Now())
	case evExec:
		l.onExec(w, e.err)
	case evProtocol:
		w.log.Warn("ipc protocol error", "error", e.err)
		if !w.expected {
			l.killWorker(w, false, "ipc protocol error: "+e.err.Error())
		}
	case evOnline:
		if w.online {
			return
		}
		w.online = true
		l.spokeIPC, l.ipcBy = true, time.Time{}
		w.target, w.jobTarget = e.target, e.jobTarget
		w.log.Debug("worker online")
		l.rerouted = true
		l.emit(EventOnline, w, nil)
		if w.readyPending {
			w.readyPending = false
			l.becameReady(w)
		}
	case evDisconnect:
		if !w.online || w.disconnected {
			return
		}
		w.disconnected = true
		l.rerouted = true
		l.emit(EventDisconnect, w, func(ev *Event) { ev.Err = e.err })
	case evHeartbeat:
		w.heartbeat = time.Now()
	case evStats:
		w.stats = e.stats
		l.checkRequests(w)
	}
}

// nextDeadline returns the earliest pending timer.
func (l *loop) nextDeadline() (time.Time, bool) {
	var next time.Time
	add := func(t time.Time) {
		if !t.IsZero() && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	for _, w := range l.byPID {
		add(w.readyAt)
		add(w.readyBy)
		add(w.killAt)
		add(l.hangDeadline(w))
		add(watchdogDeadline(w))
	}
	add(l.sampleAt)
	add(l.scaleAt)
	for _, s := range l.slots {
		add(s.restartAt)
		add(l.crashLoopEnds(s))
	}
	add(l.petAt)
	add(l.ipcBy)
	add(l.sweep.pollAt)
	add(l.checkAt)
	return next, !next.IsZero()
}

func due(t, now time.Time) bool { return !t.IsZero() && !now.Before(t) }

// onTimers acts on every deadline that has passed.
func (l *loop) onTimers(now time.Time) {
	if due(l.petAt, now) {
		l.sdNotify("WATCHDOG=1")
		l.petAt = now.Add(l.watchdog)
	}
	if due(l.scaleAt, now) {
		l.scaleAt = now.Add(l.cfg.ScaleInterval)
		l.autoscale(now)
	}
	if due(l.sampleAt, now) {
		l.sampleAt = now.Add(l.cfg.SampleInterval)
		if rss, err := l.memory(l.workerPIDs()); err != nil {
			l.log.Warn("memory sample failed", "error", err)
		} else {
			l.checkMemory(rss)
		}
	}
	if due(l.checkAt, now) {
		l.checkAt = now.Add(listenerCheckInterval)
		l.watchListeners(nil)
	}
	if due(l.ipcBy, now) { // set only while no worker has spoken IPC
		l.ipcBy = time.Time{}
		if !l.stopping {
			l.noWorkerSpokeIPC()
		}
	}
	for _, w := range l.workers() {
		if w.state == stateExited {
			continue // reaped meanwhile
		}
		l.checkHealth(w, now)
		if w.state == stateExited {
			continue
		}
		switch {
		case due(w.killAt, now):
			w.killAt = time.Time{}
			l.deadlinePassed(w, now)
		case due(w.readyAt, now):
			l.becameReady(w)
		case due(w.readyBy, now):
			l.readyTimeout(w)
		}
	}
	for _, s := range l.slots {
		if due(s.restartAt, now) {
			s.restartAt = time.Time{}
			if !l.stopping && !l.paused && s.cur == nil && s.next == nil && !s.removed {
				l.tryStart(s)
			}
		}
	}
}

// workerKey names one incarnation of a worker.
type workerKey struct{ id, gen int }
