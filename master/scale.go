package master

import "time"

// Scaling: one slot more or fewer (TTIN/TTOU).

// scaleUp adds one slot (TTIN).
func (l *loop) scaleUp() {
	s := l.newSlot(len(l.slots))
	l.log.Info("scaling up", "workers", len(l.slots))
	if !l.paused {
		l.tryStart(s)
	}
}

// scaleDown removes the highest slot (TTOU), draining its workers.
func (l *loop) scaleDown() {
	if len(l.slots) <= 1 {
		l.log.Warn("not scaling below one worker")
		return
	}
	s := l.slots[len(l.slots)-1]
	l.slots = l.slots[:len(l.slots)-1]
	s.removed = true
	s.restartAt = time.Time{}
	l.log.Info("scaling down", "workers", len(l.slots), "worker", s.id)
	if s.next != nil {
		l.killWorker(s.next, true, "scaled down")
		s.next = nil
	}
	if s.cur != nil {
		l.drainWorker(s.cur, "scaled down")
	}
	l.sockets.dropSlot(s.id)
	l.rerouted = true
	if l.reload != nil {
		l.reloadStep()
	}
	l.checkAllReady()
}
