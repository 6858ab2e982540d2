package master

import (
	"math"
	"time"

	"github.com/hashicorp/go-hclog"
)

// Per-worker limits on what a worker may make the master read over IPC.
// Package ipc bounds memory (frame size, descriptors per frame, queue
// depth); these bound CPU: a worker sending 0.8 M messages/s, or 16
// descriptors with each, would otherwise keep the master's reader busy on
// most of a CPU.
//
// They are the defaults of Options.IPCMessageRate and Options.IPCFDRate.
const (
	// IPCMessageRate is the number of IPC messages per second the master
	// reads from one worker, with bursts of as many again.
	IPCMessageRate = 20000
	// IPCFDRate is the number of descriptors per second the master accepts
	// from one worker (each costs it a close), with bursts of as many again.
	IPCFDRate = 2000
)

// ipcLimiter paces the master's reading of one worker's IPC connection with
// two token buckets, one for messages and one for descriptors. A worker
// over a limit is not killed: the master reads its messages at the limit,
// so its receive queue fills, the connection stops reading, the socket
// buffer fills and the worker's own sends block (the push-back of package
// ipc). A flood so costs the master a bounded share of a CPU, and a
// legitimate burst (many messages at once, then quiet) is only delayed.
// The first message over a limit logs one line; the next line comes only
// after the worker stayed within its limits long enough to refill the
// buckets, that is once per burst.
//
// An ipcLimiter belongs to the goroutine that reads the connection.
type ipcLimiter struct {
	log       hclog.Logger // carries worker, pid, generation
	msgs, fds bucket
	msgLimit  int  // msgs' rate, for the log; 0: unlimited
	fdLimit   int  // fds' rate, for the log; 0: unlimited
	flooding  bool // a burst was logged and has not ended
	now       func() time.Time
	// wait sleeps for d and reports whether reading should go on (false:
	// the connection is being released).
	wait func(d time.Duration) bool
}

// bucket is a token bucket: rate tokens a second, at most burst stored.
type bucket struct {
	rate, burst float64
	tokens      float64
	last        time.Time
}

// newIPCLimiter paces one worker at msgRate messages and fdRate
// descriptors a second; a rate of 0 is no limit.
func newIPCLimiter(log hclog.Logger, done <-chan struct{}, msgRate, fdRate int) *ipcLimiter {
	now := time.Now()
	return &ipcLimiter{
		log:      log,
		msgs:     newBucket(msgRate, now),
		fds:      newBucket(fdRate, now),
		msgLimit: msgRate,
		fdLimit:  fdRate,
		now:      time.Now,
		wait: func(d time.Duration) bool {
			t := time.NewTimer(d)
			defer t.Stop()
			select {
			case <-t.C:
				return true
			case <-done:
				return false
			}
		},
	}
}

// newBucket is a bucket of rate tokens a second holding as many; rate 0 is
// a bucket that never runs out.
func newBucket(rate int, now time.Time) bucket {
	r := float64(rate)
	if rate <= 0 {
		r = math.Inf(1)
	}
	return bucket{rate: r, burst: r, tokens: r, last: now}
}

// take refills b up to now and takes n tokens. It returns how long to wait
// until the balance is no longer negative (0 when within the limit), and
// whether the bucket was full before this take (the worker had been quiet).
func (b *bucket) take(n float64, now time.Time) (wait time.Duration, wasFull bool) {
	if dt := now.Sub(b.last).Seconds(); dt > 0 {
		b.tokens = min(b.burst, b.tokens+dt*b.rate)
	}
	b.last = now
	wasFull = b.tokens >= b.burst
	b.tokens -= n
	if b.tokens >= 0 {
		return 0, wasFull
	}
	return time.Duration(-b.tokens / b.rate * float64(time.Second)), wasFull
}

// admit accounts for one received message carrying nfds descriptors and
// waits as long as the limits require. It returns false when the
// connection is released meanwhile.
func (lim *ipcLimiter) admit(nfds int) bool {
	now := lim.now()
	wait, full := lim.msgs.take(1, now)
	what, limit := "messages", lim.msgLimit
	if nfds > 0 {
		w, f := lim.fds.take(float64(nfds), now)
		full = full && f
		if w > wait {
			wait, what, limit = w, "descriptors", lim.fdLimit
		}
	}
	if wait == 0 {
		if full {
			lim.flooding = false // quiet long enough: the burst is over
		}
		return true
	}
	if !lim.flooding {
		lim.flooding = true
		lim.log.Warn("ipc flood: reading the worker's messages at the limit", "what", what,
			"limit_per_second", limit)
	}
	if wait < limiterQuantum {
		return true // let the debt grow a little: one sleep per quantum, not per message
	}
	return lim.wait(wait)
}

// limiterQuantum is the shortest pause of a limited reader: a worker over
// its limit is read in bursts of this much of its rate, then paused, so that
// pacing costs about a hundred timer wake-ups a second rather than one per
// message.
const limiterQuantum = 10 * time.Millisecond
