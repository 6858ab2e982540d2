package master

import (
	"fmt"
	"time"
)

// Rolling reload. Slots are replaced ReloadBatch at a time: the new worker
// starts beside the old one (as slot.next), and only once it is ready does
// the old one drain. So every slot keeps an accepting worker throughout. A
// replacement that fails (exits or misses ReadyTimeout) aborts the reload:
// the old workers keep serving and the error names the slot and the cause.

type reloadState struct {
	pending []*slot        // slots not yet begun
	batch   map[*slot]bool // slots whose replacement is starting
	started time.Time
}

// beginReload starts a rolling reload (HUP); during a reload it starts over,
// so every slot ends up running a worker started after the last HUP.
func (l *loop) beginReload() {
	if l.reload != nil {
		l.rlog.Info("reload restarted")
		for s := range l.reload.batch {
			if s.next != nil {
				l.killWorker(s.next, true, "reload restarted")
				s.next = nil
			}
		}
	} else {
		l.sdNotify("RELOADING=1")
	}
	l.reload = &reloadState{
		pending: append([]*slot(nil), l.slots...),
		batch:   make(map[*slot]bool),
		started: time.Now(),
	}
	l.rlog.Info("reload started", "workers", len(l.slots), "batch", l.cfg.ReloadBatch)
	l.reloadStep()
}

// reloadStep retires finished slots from the batch, fills the batch from
// pending, and ends the reload when nothing is left.
func (l *loop) reloadStep() {
	r := l.reload
	if r == nil {
		return
	}
	for s := range r.batch {
		if s.next == nil || s.removed {
			delete(r.batch, s)
		}
	}
	for len(r.batch) < l.cfg.ReloadBatch && len(r.pending) > 0 {
		s := r.pending[0]
		r.pending = r.pending[1:]
		if s.removed || s.cur == nil || s.next != nil {
			// Removed by scaling, or empty: an empty slot's next start
			// (a pending restart) already uses the current options.
			continue
		}
		if err := l.startWorker(s); err != nil {
			l.abortReload(err.Error())
			return
		}
		if l.reload == nil {
			return // ready at once (ReadyExec) and the reload ended meanwhile
		}
		if s.next != nil {
			r.batch[s] = true
		}
	}
	if len(r.batch) == 0 && len(r.pending) == 0 {
		l.reload = nil
		l.rlog.Info("reload done", "workers", len(l.slots), "duration", time.Since(r.started).String())
		l.sdNotify("READY=1")
	}
}

// abortReload stops a reload whose replacement failed; the old workers keep
// serving.
func (l *loop) abortReload(reason string) {
	r := l.reload
	if r == nil {
		return
	}
	l.reload = nil
	for s := range r.batch {
		if s.next != nil {
			l.killWorker(s.next, true, "reload aborted")
			s.next = nil
		}
		if s.cur == nil && !s.removed && s.restartAt.IsZero() && !l.stopping {
			// Its old worker died while the replacement was starting.
			s.restartAt = time.Now()
		}
	}
	l.rlog.Error("reload aborted", "error", fmt.Sprintf("reload: %s", reason))
	l.sdNotify("READY=1")
}
