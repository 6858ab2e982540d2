package master

import (
	"fmt"
	"time"
)

// Worker health: hangs (a library worker's heartbeats stop, or a worker's
// sd_notify watchdog keep-alives stop), memory over Options.MaxMemory, and
// retiring after Options.RetireRequests requests. Each ends in the same
// graceful replacement: the new worker starts beside the old one (as
// slot.next, as a reload's does) and only once it is ready is the old one
// drained, so the slot's capacity never dips.

// watched reports whether w's liveness is checked: it serves or starts,
// and is not on its way out already.
func watched(w *worker) bool {
	return (w.state == stateStarting || w.state == stateReady) && w.retiring == "" && !w.expected
}

// hangDeadline is when w counts as hung without another heartbeat; zero
// when w is not watched (it never heartbeat, or heartbeats are off).
func (l *loop) hangDeadline(w *worker) time.Time {
	if l.cfg.HeartbeatTimeout <= 0 || w.heartbeat.IsZero() || !watched(w) {
		return time.Time{}
	}
	return w.heartbeat.Add(l.cfg.HeartbeatTimeout)
}

// watchdogDeadline is when w counts as hung without another WATCHDOG=1.
func watchdogDeadline(w *worker) time.Time {
	if !watched(w) {
		return time.Time{}
	}
	return w.watchdogBy
}

// onWatchdog records a WATCHDOG=1 keep-alive of w.
func (l *loop) onWatchdog(w *worker, now time.Time) {
	if l.cfg.Watchdog <= 0 {
		return
	}
	if w.watchdogBy.IsZero() {
		w.log.Debug("worker watchdog armed", "watchdog", l.cfg.Watchdog.String())
	}
	w.watchdogBy = now.Add(l.cfg.Watchdog)
}

// checkHealth acts on the hang and watchdog deadlines of w that passed.
func (l *loop) checkHealth(w *worker, now time.Time) {
	if d := l.hangDeadline(w); due(d, now) {
		silent := now.Sub(w.heartbeat).Round(time.Millisecond)
		w.log.Warn("worker hung", "cause", "no heartbeat", "silent", silent.String(),
			"timeout", l.cfg.HeartbeatTimeout.String())
		l.hung(w, fmt.Sprintf("hang: no heartbeat for %v", silent))
		return
	}
	if d := watchdogDeadline(w); due(d, now) {
		silent := now.Sub(d.Add(-l.cfg.Watchdog)).Round(time.Millisecond)
		w.log.Warn("worker hung", "cause", "no watchdog keep-alive", "silent", silent.String(),
			"timeout", l.cfg.Watchdog.String())
		l.hung(w, fmt.Sprintf("hang: no WATCHDOG=1 for %v", silent))
	}
}

// hung counts a hang of w's slot and replaces w.
func (l *loop) hung(w *worker, why string) {
	w.slot.hangs++
	w.hung = true
	l.emit(EventHang, w, func(e *Event) { e.Reason = why })
	l.replace(w, why)
}

// workerPIDs lists the live workers' pids, which are their process groups.
func (l *loop) workerPIDs() []int {
	pids := make([]int, 0, len(l.byPID))
	for pid := range l.byPID {
		pids = append(pids, pid)
	}
	return pids
}

// checkMemory compares each watched worker's sampled memory (by process
// group) with Options.MaxMemory.
func (l *loop) checkMemory(rss map[int]int64) {
	for _, w := range l.workers() {
		if !watched(w) {
			continue
		}
		n, ok := rss[w.pid]
		if !ok {
			continue
		}
		w.rss = n
		if n <= l.cfg.MaxMemory {
			continue
		}
		w.log.Warn("worker over memory limit", "rss", formatSize(n), "limit", formatSize(l.cfg.MaxMemory),
			"rss_bytes", n, "limit_bytes", l.cfg.MaxMemory)
		l.replace(w, fmt.Sprintf("memory limit: rss %s over %s", formatSize(n), formatSize(l.cfg.MaxMemory)))
	}
}

// checkRequests retires w once its "http_requests" counter passed its limit.
func (l *loop) checkRequests(w *worker) {
	if w.retireAfter <= 0 || !watched(w) {
		return
	}
	n, ok := w.stats[RequestsStat]
	if !ok || n < w.retireAfter {
		return
	}
	w.log.Info("worker reached max requests", "requests", n, "max_requests", w.retireAfter)
	l.replace(w, fmt.Sprintf("max requests: served %d of %d", n, w.retireAfter))
}

// RequestsStat is the stats counter that Options.RetireRequests reads: the
// requests a library worker served (worker.ServeHTTP counts them).
const RequestsStat = "http_requests"

// replace replaces w gracefully: a new worker starts in its slot, and w is
// drained once that one is ready (becameReady). Without a replacement
// possible (stopping, paused, the slot removed) nothing happens; when the
// replacement cannot start, w is killed as a failure of its slot, so the
// restart policy (backoff, intensity limit) decides what comes next.
func (l *loop) replace(w *worker, why string) {
	s := w.slot
	if l.stopping || l.paused || s.removed || w.state == stateExited {
		return
	}
	w.retiring = why
	if s.cur != w {
		// A starting replacement: it cannot serve, kill it as the
		// reload code does for a failed one.
		l.killWorker(w, false, why)
		return
	}
	if s.next != nil {
		return // a replacement (a reload's) is on its way already
	}
	if err := l.startWorker(s); err != nil {
		w.log.Error("replacement not started", "reason", why, "error", err)
		l.killWorker(w, false, why)
		return
	}
	if s.next != nil {
		s.next.log.Info("replacing worker", "old_pid", w.pid, "reason", why)
	}
}

// replacementFailed handles a slot whose replacement (s.next) exited or
// missed its ready timeout outside a reload: the worker it was to replace
// is killed as a failure, so the restart policy applies to the slot.
func (l *loop) replacementFailed(s *slot) {
	if l.reload != nil {
		return // the reload's own abort handles it
	}
	if old := s.cur; old != nil && old.retiring != "" {
		l.killWorker(old, false, old.retiring+"; its replacement failed")
	}
}

// formatSize writes n bytes in binary units ("48.0MiB").
func formatSize(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	v, exp := float64(n)/unit, 0
	for v >= unit && exp < 4 {
		v /= unit
		exp++
	}
	return fmt.Sprintf("%.1f%ciB", v, "KMGTP"[exp])
}
