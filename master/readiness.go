package master

import (
	"fmt"
	"time"
)

// Readiness: a starting worker becomes ready (by Options.Ready), the cluster
// becomes ready once every slot's worker is, and a worker that misses
// ReadyTimeout is killed (aborting a reload it belonged to).

// becameReady moves a starting worker to ready.
func (l *loop) becameReady(w *worker) {
	if w.state != stateStarting || w.expected {
		return
	}
	w.state = stateReady
	w.readyAt, w.readyBy = time.Time{}, time.Time{}
	w.readySince = time.Now()
	took := w.readySince.Sub(w.started)
	w.log.Info("worker ready", "duration", took.Round(time.Microsecond).String())
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

func (l *loop) readyTimeout(w *worker) {
	why := fmt.Sprintf("not ready after %v", l.cfg.ReadyTimeout)
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
