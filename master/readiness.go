package master

import (
	"fmt"
	"time"
)

// Readiness: a starting worker becomes ready (by Options.Ready), the cluster
// becomes ready once every slot's worker is, and a worker that misses
// ReadyTimeout is killed (aborting a reload it belonged to).

// speaksNotify reports whether workers are expected to speak sd_notify and
// so get a NOTIFY_SOCKET: only under ReadyNotify, as systemd sets it only
// for Type=notify services. A server whose sd_notify client breaks on a
// socket it did not ask for (seen with puma) never sees one otherwise.
func (c *config) speaksNotify() bool { return c.Ready.Kind == ReadyNotify }

// becameReady moves a starting worker to ready.
func (l *loop) becameReady(w *worker) {
	if w.state != stateStarting || w.expected {
		return
	}
	w.state = stateReady
	w.readyAt, w.readyBy = time.Time{}, time.Time{}
	w.log.Info("worker ready", "duration", time.Since(w.started).Round(time.Microsecond).String())
	s := w.slot
	if s.next == w {
		s.next = nil
		old := s.cur
		s.cur = w
		if old != nil {
			l.drainWorker(old, "replaced by reload")
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
		w.slot.next = nil
		l.abortReload(fmt.Sprintf("worker %d (pid %d) %s", w.slot.id, w.pid, why))
		return
	}
	w.log.Error("worker not ready", "timeout", l.cfg.ReadyTimeout.String())
	l.killWorker(w, false, why)
}
