package master

import (
	"time"
)

// Autoscaling (Options.MaxWorkers above Options.Workers): the master owns
// the listening sockets, so it reads their accept queues (TCP_INFO, see
// queue_linux.go) every ScaleInterval without touching the data path. A
// queue that stays non-empty for ScaleUpAfter adds a worker, up to
// MaxWorkers and within MemoryBudget; an empty queue for ScaleDownAfter,
// with workers that report (the "http_connections" gauge of library workers) no
// more open connections than one fewer worker could hold one each, retires
// the highest slot gracefully, down to Workers. After each change nothing
// changes for ScaleCooldown. The two thresholds are the hysteresis: adding
// needs a queue that persists, removing needs a long quiet, so the count
// does not flap. Every decision is logged with the figures that made it.

// autoscaler is the loop's autoscaling state.
type autoscaler struct {
	busy, idle int       // consecutive samples with a queue / without
	quietUntil time.Time // cool-down after a change
	peak       int       // the highest queue seen in the current busy run
}

// autoscaling reports whether the loop samples the accept queues at all.
func (l *loop) autoscaling() bool { return l.cfg.MaxWorkers > l.cfg.Workers }

// samples converts a duration into a number of ScaleInterval samples.
func (l *loop) samples(d time.Duration) int {
	return max(int((d+l.cfg.ScaleInterval-1)/l.cfg.ScaleInterval), 1)
}

// autoscale takes one sample and decides.
func (l *loop) autoscale(now time.Time) {
	if l.stopping || l.paused || l.reload != nil {
		return
	}
	queued, limit, ok := l.sockets.acceptQueue()
	if !ok {
		return // no TCP listener: nothing to measure
	}
	as := &l.scaler
	if queued > 0 {
		as.busy++
		as.idle = 0
		as.peak = max(as.peak, queued)
	} else {
		as.idle++
		as.busy = 0
		as.peak = 0
	}
	if now.Before(as.quietUntil) {
		return
	}
	n := len(l.slots)
	switch {
	case as.busy >= l.samples(l.cfg.ScaleUpAfter) && n < l.cfg.MaxWorkers:
		if l.cfg.MemoryBudget > 0 && !l.budgetAllows(n) {
			return
		}
		l.log.Info("autoscale: adding a worker", "workers", n+1, "min", l.cfg.Workers, "max", l.cfg.MaxWorkers,
			"queue", queued, "queue_peak", as.peak, "backlog", limit,
			"busy_for", (time.Duration(as.busy) * l.cfg.ScaleInterval).String())
		l.scaleUp()
	case as.idle >= l.samples(l.cfg.ScaleDownAfter) && n > l.cfg.Workers:
		conns, known := l.openConnections()
		if known && conns > int64(n-1) {
			return // the queue is empty but the workers are not idle
		}
		kv := []any{"workers", n - 1, "min", l.cfg.Workers, "max", l.cfg.MaxWorkers,
			"queue", queued, "idle_for", (time.Duration(as.idle) * l.cfg.ScaleInterval).String()}
		if known {
			kv = append(kv, "connections", conns)
		}
		l.log.Info("autoscale: retiring a worker", kv...)
		l.scaleDown()
	default:
		return
	}
	as.busy, as.idle, as.peak = 0, 0, 0
	as.quietUntil = now.Add(l.cfg.ScaleCooldown)
}

// openConnections sums the "http_connections" gauge of the workers reporting it.
func (l *loop) openConnections() (int64, bool) {
	var sum int64
	known := false
	for _, w := range l.byPID {
		if n, ok := w.stats[ConnectionsStat]; ok && w.state != stateDraining {
			sum += n
			known = true
		}
	}
	return sum, known
}

// budgetAllows reports whether one more worker, as large as the average
// one now, stays within Options.MemoryBudget; it logs a refusal.
func (l *loop) budgetAllows(n int) bool {
	if l.memory == nil {
		return true
	}
	rss, err := l.memory(l.workerPIDs())
	if err != nil {
		l.log.Warn("autoscale: memory sample failed", "error", err)
		return false
	}
	var total int64
	for _, w := range l.byPID {
		total += rss[w.pid]
	}
	next := total + total/int64(max(n, 1))
	if next <= l.cfg.MemoryBudget {
		return true
	}
	l.log.Info("autoscale: not adding a worker: memory budget", "workers", n, "memory", formatSize(total),
		"with_one_more", formatSize(next), "budget", formatSize(l.cfg.MemoryBudget))
	return false
}
