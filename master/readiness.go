package master

import (
	"errors"
	"fmt"
	"time"
)

// Readiness: a starting worker becomes ready (by Options.Ready), the cluster
// becomes ready once every slot's worker is, and a worker that misses
// ReadyTimeout is killed (aborting a reload it belonged to).

// speaksNotify reports whether workers are expected to speak sd_notify and
// so get a NOTIFY_SOCKET: only under ReadyNotify or with a Watchdog, as
// systemd sets it only for Type=notify services or WatchdogSec=. A server
// whose sd_notify client breaks on a socket it did not ask for (seen with
// puma) never sees one otherwise.
func (c *config) speaksNotify() bool { return c.Ready.Kind == ReadyNotify || c.Watchdog > 0 }

// execState is what the loop knows of a worker's execve.
type execState int

const (
	execUntracked execState = iota // the process reports no exec outcome
	execPending                    // the outcome has not arrived yet
	execRan                        // the command was executed
	execFailed                     // the execve failed
)

// execReporter is a process whose exec outcome arrives as an evExec event.
// Under ReadyExec such a worker is ready when that event says the command
// was executed; any other is ready once started.
type execReporter interface {
	reportsExec() bool
}

// onExec acts on the outcome of a worker's execve. Under ReadyExec a
// successful one makes it ready. A failed one is logged once, naming the
// command and the errno; the worker then exits (code 127). When no other
// worker runs the command, it is a configuration problem rather than a
// crash (a binary of the wrong architecture, one the --user may not
// execute): the cluster stops and Run returns the error, with no restart
// loop. Otherwise the exit is a crash of its slot, restarted as any other.
func (l *loop) onExec(w *worker, err error) {
	if w.exec != execPending {
		return // reported once only
	}
	defer func() {
		if e := w.heldExit; e != nil {
			w.heldExit = nil
			l.onExit(*e)
		}
	}()
	if err == nil {
		w.exec = execRan
		if l.cfg.Ready.Kind == ReadyExec {
			l.becameReady(w)
		}
		return
	}
	w.exec = execFailed
	if w.why == "" {
		w.why = "not executed: " + err.Error()
	}
	if l.stopping {
		// Stopping already (for this failure in another slot, most
		// likely): the first line said it.
		w.log.Debug("worker command not executed", "command", l.cfg.path, "error", err)
		return
	}
	w.log.Error("worker command not executed", "command", l.cfg.path, "error", err)
	for _, o := range l.byPID {
		if o != w && o.exec == execRan && o.state != stateExited {
			return // others run it: this is one worker's failure
		}
	}
	if l.result == nil {
		l.result = fmt.Errorf("worker %d: %w", w.slot.id, err)
	}
	l.log.Info("stopping", "reason", "the worker command cannot be executed")
	l.beginStop(false)
}

// becameReady moves a starting worker to ready.
func (l *loop) becameReady(w *worker) {
	if w.state != stateStarting || w.expected {
		return
	}
	if l.cfg.Balance.overIPC() && !w.online {
		// It cannot take connections before its hello: ready then.
		w.readyPending = true
		w.readyAt = time.Time{}
		return
	}
	w.state = stateReady
	w.readyAt, w.readyBy = time.Time{}, time.Time{}
	w.readySince = time.Now()
	took := w.readySince.Sub(w.started)
	w.log.Info("worker ready", "duration", took.Round(time.Microsecond).String())
	l.rerouted = true // it takes balanced connections from now on
	s := w.slot
	replacing := s.next == w
	var old *worker
	if replacing {
		// The replacement serves the slot (and takes its messages) from
		// the moment its ready event is seen.
		s.next = nil
		old, s.cur = s.cur, w
		l.rerouted = true
	}
	l.emit(EventReady, w, nil)
	if replacing {
		l.reloadReplaced(s, w, took)
		if old != nil {
			why := "replaced by reload"
			if old.retiring != "" {
				why = old.retiring
			}
			l.drainWorker(old, why)
		}
		l.reloadStep()
	}
	l.checkAllReady()
}

func (l *loop) checkAllReady() {
	if l.allReady || l.stopping {
		return
	}
	for _, s := range l.slots {
		if s.cur == nil || s.cur.state != stateReady {
			return
		}
	}
	l.allReady = true
	l.log.Info("all workers ready", "workers", len(l.slots))
	l.sdNotify("READY=1")
	l.ready()
}

// noWorkerSpokeIPC ends a start-up in the balanced modes that no worker
// has said hello on IPC in: ReadyTimeout passed since it began, while they
// waited or crash-looped.
func (l *loop) noWorkerSpokeIPC() {
	why := fmt.Sprintf("no worker spoke the clusterd IPC protocol within --ready-timeout %v, %s",
		l.cfg.ReadyTimeout, l.balanceHint("none can"))
	l.log.Error("no worker can take balanced connections", "error", why)
	if l.result == nil {
		l.result = errors.New(why)
	}
	l.beginStop(false)
}

// balanceHint says what workers that never spoke IPC mean in the
// balanced modes; who is "it cannot", "none can" or the like.
func (l *loop) balanceHint(who string) string {
	return fmt.Sprintf("so %s take connections with --balance %s; run binaries that do not link the worker library "+
		"with --balance shared or --balance reuseport", who, l.cfg.Balance)
}

func (l *loop) readyTimeout(w *worker) {
	why := fmt.Sprintf("not ready after %v", l.cfg.ReadyTimeout)
	if l.cfg.Balance.overIPC() && !w.online {
		why = fmt.Sprintf("worker %d (pid %d) never spoke the clusterd IPC protocol within --ready-timeout %v, %s",
			w.slot.id, w.pid, l.cfg.ReadyTimeout, l.balanceHint("it cannot"))
		if !l.allReady && l.reload == nil && !l.stopping {
			// At start-up this is the configuration, not a crash to retry.
			w.log.Error("worker cannot take balanced connections", "error", why)
			l.killWorker(w, false, why)
			if l.result == nil {
				l.result = errors.New(why)
			}
			l.beginStop(false)
			return
		}
	}
	if w.slot.next == w {
		l.killWorker(w, true, why)
		w.failed = true // stopped on purpose, but for failing
		w.slot.next = nil
		l.abortReload(w.slot, w.pid, why)
		l.replacementFailed(w.slot)
		return
	}
	w.log.Error("worker not ready", "timeout", l.cfg.ReadyTimeout.String())
	l.killWorker(w, false, why)
}
