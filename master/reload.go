package master

import (
	"time"
)

// Rolling reload. Slots are replaced ReloadBatch at a time: the new worker
// starts beside the old one (as slot.next), and only once it is ready does
// the old one drain. So every slot keeps an accepting worker throughout. A
// replacement that fails (exits or misses ReadyTimeout) aborts the reload:
// the old workers keep serving and the error names the slot and the cause.
// The outcome of each slot is collected in a ReloadResult, answered to the
// Reload that asked for it and published as an EventReload.

type reloadState struct {
	pending []*slot        // slots not yet begun
	batch   map[*slot]bool // slots whose replacement is starting
	started time.Time
	reply   chan<- reloadReply // nil: started by SIGHUP
	result  ReloadResult
	index   map[*slot]int // slot -> its entry in result.Slots
}

// beginReload starts a rolling reload; during a reload (only SIGHUP gets
// here then) it starts over, so every slot ends up running a worker started
// after the last HUP.
func (l *loop) beginReload(reply chan<- reloadReply) {
	if l.reload != nil {
		l.rlog.Info("reload restarted")
		for s := range l.reload.batch {
			if s.next != nil {
				l.killWorker(s.next, true, "reload restarted")
				s.next = nil
			}
		}
		l.endReload(errReloadRestarted)
	} else {
		l.sdNotify("RELOADING=1")
	}
	now := time.Now()
	l.reload = &reloadState{
		pending: append([]*slot(nil), l.slots...),
		batch:   make(map[*slot]bool),
		started: now,
		reply:   reply,
		result:  ReloadResult{Started: now},
		index:   make(map[*slot]int),
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
		if s.removed || s.next != nil {
			continue // removed by scaling
		}
		r.index[s] = len(r.result.Slots)
		r.result.Slots = append(r.result.Slots, SlotReload{Slot: s.id})
		if s.cur == nil {
			// Empty: its next start (a pending restart) already uses the
			// current options.
			continue
		}
		r.result.Slots[r.index[s]].OldPID = s.cur.pid
		if err := l.startWorker(s); err != nil {
			l.abortReload(s, 0, err.Error())
			return
		}
		if l.reload == nil {
			return // ready at once (ReadyExec) and the reload ended meanwhile
		}
		if s.next != nil {
			r.result.Slots[r.index[s]].NewPID = s.next.pid
			r.batch[s] = true
		}
	}
	if len(r.batch) == 0 && len(r.pending) == 0 {
		l.rlog.Info("reload done", "workers", len(l.slots), "duration", time.Since(r.started).String())
		l.endReload(nil)
		l.sdNotify("READY=1")
	}
}

// reloadReplaced records that w, ready after took, replaced s's worker.
func (l *loop) reloadReplaced(s *slot, w *worker, took time.Duration) {
	if l.reload == nil {
		return
	}
	if i, ok := l.reload.index[s]; ok {
		l.reload.result.Slots[i].NewPID = w.pid
		l.reload.result.Slots[i].ReadyAfter = took
	}
}

// abortReload stops a reload whose replacement in slot s (pid, 0 if it did
// not start) failed; the old workers keep serving.
func (l *loop) abortReload(s *slot, pid int, reason string) {
	r := l.reload
	if r == nil {
		return
	}
	for b := range r.batch {
		if b.next != nil {
			l.killWorker(b.next, true, "reload aborted")
			b.next = nil
		}
		if b.cur == nil && !b.removed && b.restartAt.IsZero() && !l.stopping {
			// Its old worker died while the replacement was starting.
			b.restartAt = time.Now()
		}
	}
	err := &ReloadError{Slot: s.id, PID: pid, Reason: reason}
	if i, ok := r.index[s]; ok {
		r.result.Slots[i].Err = err
	}
	l.rlog.Error("reload aborted", "error", err.Error())
	l.endReload(err)
	l.sdNotify("READY=1")
}

// endReload ends the running reload (if any) with err: it answers the
// Reload that started it and publishes an EventReload.
func (l *loop) endReload(err error) {
	r := l.reload
	if r == nil {
		return
	}
	l.reload = nil
	r.result.Finished = time.Now()
	res := r.result
	if r.reply != nil {
		r.reply <- reloadReply{res: res, err: err}
	}
	l.emit(EventReload, nil, func(e *Event) { e.Reload = &res; e.Err = err })
}
