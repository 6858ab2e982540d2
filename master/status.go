package master

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// The master's one-line status for its service manager (sd_notify STATUS=,
// shown by `systemctl status`). The loop recomputes it after every event it
// handled and sends it only when it changed, so a quiet cluster sends
// nothing and a busy one at most one datagram per loop iteration.

// crashLoopAttempts is how many consecutive short-lived exits (see
// backoff.attempt) make a slot "crash-looping" in the status.
const crashLoopAttempts = 2

// crashLooping reports whether s is in a crash loop: it has had
// crashLoopAttempts short-lived exits in a row and no worker that has been
// ready for MinUptime since.
func (l *loop) crashLooping(s *slot, now time.Time) bool {
	if s.backoff.attempt < crashLoopAttempts {
		return false
	}
	w := s.cur
	return w == nil || w.state != stateReady || now.Sub(w.readySince) < l.cfg.MinUptime
}

// crashLoopEnds returns when the ready worker of a crash-looping slot will
// have been up MinUptime, so that the status is recomputed then; zero if
// no such time is pending.
func (l *loop) crashLoopEnds(s *slot) time.Time {
	if l.sdStatus == nil || s.backoff.attempt < crashLoopAttempts {
		return time.Time{}
	}
	if w := s.cur; w != nil && w.state == stateReady {
		if end := w.readySince.Add(l.cfg.MinUptime); time.Now().Before(end) {
			return end
		}
	}
	return time.Time{}
}

// statusText describes the cluster in one line: "stopping: 2 workers
// left", "paused for maintenance", "reloading 2/4", "degraded: slot 3
// crash-looping", or "4/4 workers ready".
func (l *loop) statusText(now time.Time) string {
	switch {
	case l.stopping:
		return fmt.Sprintf("stopping: %d %s left", len(l.byPID), plural(len(l.byPID), "worker"))
	case l.paused:
		return fmt.Sprintf("paused for maintenance: %d %s left", len(l.byPID), plural(len(l.byPID), "worker"))
	case l.reload != nil:
		r := l.reload
		done := len(r.result.Slots) - len(r.batch)
		return fmt.Sprintf("reloading %d/%d", done, len(r.result.Slots)+len(r.pending))
	}
	ready := 0
	var looping []string
	for _, s := range l.slots {
		if s.cur != nil && s.cur.state == stateReady {
			ready++
		}
		if l.crashLooping(s, now) {
			looping = append(looping, strconv.Itoa(s.id))
		}
	}
	switch len(looping) {
	case 0:
		return fmt.Sprintf("%d/%d workers ready", ready, len(l.slots))
	case 1:
		return "degraded: slot " + looping[0] + " crash-looping"
	default:
		return "degraded: slots " + strings.Join(looping, ", ") + " crash-looping"
	}
}

// publishStatus sends the status when it changed since the last one sent.
func (l *loop) publishStatus() {
	if l.sdStatus == nil {
		return
	}
	if s := l.statusText(time.Now()); s != l.status {
		l.status = s
		l.sdStatus(s)
	}
}

func plural(n int, word string) string {
	if n == 1 {
		return word
	}
	return word + "s"
}
