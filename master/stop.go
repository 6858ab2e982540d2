package master

import (
	"strconv"
	"syscall"
	"time"
)

// Stopping: draining a worker (stop signal, IPC drain, kill timeout),
// killing one, the cluster's graceful and immediate stop, and the
// maintenance pause (WINCH) and resume.

// drainWorker tells a worker to stop (its stop signal, and a drain message
// over IPC) and arms the kill timeout.
func (l *loop) drainWorker(w *worker, why string) {
	if w.state == stateDraining || w.state == stateExited {
		return
	}
	w.state = stateDraining
	l.rerouted = true // no more balanced connections
	w.expected = true
	w.why = why
	w.readyAt, w.readyBy = time.Time{}, time.Time{}
	w.killAt = time.Now().Add(l.cfg.KillTimeout)
	w.log.Debug("draining worker", "reason", why, "signal", signalName(l.cfg.StopSignal))
	if w.online {
		w.proc.drain(l.cfg.KillTimeout)
	}
	w.signalled = true
	if err := w.proc.signal(l.cfg.StopSignal); err != nil {
		w.log.Debug("stop signal not delivered", "error", err)
	}
}

// deadlinePassed ends a draining worker whose KillTimeout passed: it
// records what its threads are doing, sends Options.DumpSignal (for a Go
// worker, SIGQUIT writes every goroutine's stack to its stderr, which is
// relayed) and waits DumpWait for it, then SIGKILLs it.
func (l *loop) deadlinePassed(w *worker, now time.Time) {
	if !w.deadline {
		w.deadline = true
		if l.threads != nil {
			l.threads(w, "drain deadline passed")
		}
		if l.cfg.DumpSignal != 0 {
			w.log.Warn("asking worker for a dump before the kill", "signal", signalName(l.cfg.DumpSignal),
				"wait", l.cfg.DumpWait.String())
			w.dumpSent = true
			if err := w.proc.signal(l.cfg.DumpSignal); err != nil {
				w.log.Debug("dump signal not delivered", "error", err)
			}
			w.killAt = now.Add(l.cfg.DumpWait)
			return
		}
	}
	kv := []any{"timeout", l.cfg.KillTimeout.String()}
	if n, ok := w.stats[ConnectionsStat]; ok {
		kv = append(kv, "connections", n)
	}
	w.log.Warn("worker killed after kill timeout", kv...)
	l.killWorker(w, true, w.why)
}

// killWorker SIGKILLs a worker's process group. expected says whether its
// exit is intended (no restart) or counts as a failure of its slot.
func (l *loop) killWorker(w *worker, expected bool, why string) {
	if w.state == stateExited {
		return
	}
	if expected {
		w.expected = true
		w.state = stateDraining
	}
	if w.why == "" {
		w.why = why
	}
	w.readyAt, w.readyBy, w.killAt = time.Time{}, time.Time{}, time.Time{}
	w.killed = true
	if err := w.proc.signal(syscall.SIGKILL); err != nil {
		w.log.Debug("kill not delivered", "error", err)
	}
}

// beginStop stops every worker: drained (graceful) or SIGKILLed (force).
func (l *loop) beginStop(force bool) {
	if !l.stopping {
		l.stopping = true
		l.stopAt = time.Now()
		l.sdNotify("STOPPING=1")
		if l.reload != nil {
			l.rlog.Info("reload canceled by stop")
			l.endReload(ErrStopping)
		}
		for _, s := range l.slots {
			s.restartAt = time.Time{}
		}
	}
	if force {
		l.force = true
	}
	for _, w := range l.workers() {
		if l.force {
			l.killWorker(w, true, "stop")
		} else {
			l.drainWorker(w, "stop")
		}
	}
}

// sweepPoll is how often the loop looks at the cluster's leftovers while
// it waits for them: the master is told of the exit of its own children,
// not of processes in its cgroup whose parent is elsewhere.
const sweepPoll = 20 * time.Millisecond

// sweepState is the end of a stop: the workers are gone, other processes of
// the cluster are not.
type sweepState struct {
	started bool
	killAt  time.Time // SIGKILL at this time; zero: sent
	pollAt  time.Time // look again; zero: not sweeping
	killed  int
}

// sweepLeftovers ends the cluster once its workers are gone, and reports
// whether nothing of it is left. The leftovers (children of workers,
// escaped ones included) get the stop signal, then SIGKILL when the stop's
// kill timeout is over (at once after an immediate stop): a graceful stop
// ends within KillTimeout of its start, whoever holds up the exit. Only
// then does Run return, so its return means the cluster's ports are free.
func (l *loop) sweepLeftovers(now time.Time) bool {
	if l.cluster == nil {
		return true
	}
	pids := l.cluster.members()
	if len(pids) == 0 {
		if l.sweep.started {
			l.log.Info("processes left by workers are gone", "killed", l.sweep.killed)
		}
		l.sweep.pollAt = time.Time{}
		return true
	}
	if !l.sweep.started {
		l.sweep.started = true
		start := l.stopAt
		if start.IsZero() {
			start = now // the workers ended on their own
		}
		l.sweep.killAt = start.Add(l.cfg.KillTimeout)
		if l.force || !now.Before(l.sweep.killAt) {
			l.sweep.killAt = now
		}
		l.log.Info("waiting for processes left by workers", "processes", len(pids), "pids", pidList(pids),
			"timeout", l.sweep.killAt.Sub(now).Round(time.Millisecond).String())
		if now.Before(l.sweep.killAt) {
			l.cluster.signal(l.cfg.StopSignal)
		}
	}
	// An immediate stop asked for during the sweep kills at once too.
	if !l.sweep.killAt.IsZero() && (l.force || !now.Before(l.sweep.killAt)) {
		l.log.Warn("killing processes left by workers", "processes", len(pids), "pids", pidList(pids))
		l.sweep.killed += len(pids)
		l.sweep.killAt = time.Time{}
	}
	if l.sweep.killAt.IsZero() {
		// Again on every look: a process may have forked meanwhile.
		l.cluster.signal(syscall.SIGKILL)
	}
	l.sweep.pollAt = now.Add(sweepPoll)
	return false
}

// pidList renders at most 16 pids for a log line.
func pidList(pids []int) string {
	var b []byte
	for i, pid := range pids {
		if i == 16 {
			b = append(b, " ..."...)
			break
		}
		if i > 0 {
			b = append(b, ' ')
		}
		b = strconv.AppendInt(b, int64(pid), 10)
	}
	return string(b)
}

// pause stops every worker but keeps the master and its sockets (WINCH,
// for maintenance); HUP brings the workers back.
func (l *loop) pause() {
	l.paused = true
	l.log.Info("stopping workers for maintenance", "workers", len(l.slots))
	if l.reload != nil {
		l.rlog.Info("reload canceled by maintenance stop")
		l.endReload(errReloadPaused)
	}
	for _, s := range l.slots {
		s.restartAt = time.Time{}
	}
	for _, w := range l.workers() {
		l.drainWorker(w, "maintenance stop")
	}
}

// resume starts a worker in every slot after pause.
func (l *loop) resume() {
	l.paused = false
	l.log.Info("starting workers after maintenance", "workers", len(l.slots))
	for _, s := range l.slots {
		s.backoff.attempt = 0
		if s.cur == nil && s.next == nil {
			l.tryStart(s)
		}
	}
}
