package master

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/clusterd/clusterd/ipc"
	"github.com/vmihailenco/msgpack/v5"
)

// Jobs: Dispatch sends a unit of work (ipc KindJob) to the ready worker
// with the fewest outstanding jobs and waits for its KindResult (or
// KindError). Delivery is at least once: a job whose worker dies, misses
// three heartbeats or closes its connection before answering is sent
// again, to another worker where there is one, with the attempt number
// increased, until Options.JobAttempts attempts were orphaned. Like
// messages, jobs do not pass through the loop: the loop publishes the
// workers that take jobs (ready and online) through an atomic pointer, and
// each worker's outstanding jobs are in its jobTarget, under a mutex of
// its own that the loop never takes. A worker found hung (heartbeats
// missed) loses its outstanding jobs at once, to one watcher per worker,
// rather than each waiting caller looking for itself: a timer per job cost
// the master a fifth of its CPU time per job.

// Defaults of the job options.
const (
	// DefaultJobAttempts is Options.JobAttempts when 0.
	DefaultJobAttempts = 3
	// DefaultJobQueue is Options.JobQueue when 0.
	DefaultJobQueue = 256
	// DefaultMaxJobs is Options.MaxJobs when 0.
	DefaultMaxJobs = 4096
)

// ErrJobQueueFull is returned by Dispatch with Options.JobsFailFast when
// Options.MaxJobs jobs are in flight, or no worker has room in its queue.
var ErrJobQueueFull = errors.New("master: job queue full")

// ErrJobOrphaned is wrapped by the error of a job that lost its worker
// Options.JobAttempts times.
var ErrJobOrphaned = errors.New("master: job orphaned")

// jobIDBit marks the IDs of jobs, so that a worker's answer to a job never
// matches a request the master's connection made with Call (those count
// up from 1).
const jobIDBit = 1 << 63

// JobResult is a worker's answer to a job.
type JobResult struct {
	// Body is the result, one msgpack value.
	Body msgpack.RawMessage
	// Attempts is how many times the job was sent: 1 unless it was
	// redelivered after losing its worker.
	Attempts int
	// Worker answered it.
	Worker WorkerRef
}

// Decode decodes the result's body into v.
func (r JobResult) Decode(v any) error {
	m := ipc.Message{Kind: ipc.KindResult, Body: r.Body}
	return m.Decode(v)
}

// dispatcher is the master's side of jobs.
type dispatcher struct {
	attempts  int
	perWorker int
	failFast  bool
	heartbeat time.Duration

	inFlight chan struct{} // one token per job being dispatched (MaxJobs)
	targets  atomic.Pointer[[]*jobTarget]
	nextID   atomic.Uint64
	// Redeliveries counts jobs sent again after losing their worker.
	redeliveries atomic.Uint64

	// changed is closed when room may have appeared, for the Dispatch
	// calls waiting for a worker (waiting counts them); nil while none
	// waits. A caller counts itself in waiting before it looks for room
	// again, and whoever makes room changes the count of outstanding jobs
	// before it looks at waiting: one of the two sees the other, and a
	// job that finishes while nobody waits costs no lock here.
	waiting atomic.Int32
	mu      sync.Mutex
	changed chan struct{}
}

func newDispatcher(cfg *config) *dispatcher {
	d := &dispatcher{
		attempts: cfg.JobAttempts, perWorker: cfg.JobQueue, failFast: cfg.JobsFailFast,
		heartbeat: cfg.HeartbeatInterval,
		inFlight:  make(chan struct{}, cfg.MaxJobs),
	}
	d.targets.Store(&[]*jobTarget{})
	return d
}

// jobTarget is one online worker's outstanding jobs; its session makes it
// and retires it.
type jobTarget struct {
	d    *dispatcher
	ref  WorkerRef
	send func(id uint64, attempt int, body []byte) error // the worker's connection's SendJob
	beat atomic.Int64                                    // last heartbeat, UnixNano
	n    atomic.Int32                                    // outstanding
	gone atomic.Bool                                     // retired: pick skips it until the loop publishes again
	// counts are the slot's totals (SlotStats); nil: none.
	counts *slotCounts

	mu      sync.Mutex
	pending map[uint64]chan jobAnswer
	dead    bool
	stop    chan struct{} // closed by retire: ends watch
}

// jobAnswer is a worker's answer, or gone when the worker went away first.
type jobAnswer struct {
	m    *ipc.Message
	gone bool
}

// newTarget returns the jobTarget of a worker that said hello; the session
// retires it when the connection ends.
func (d *dispatcher) newTarget(ref WorkerRef, conn *ipc.Conn) *jobTarget {
	t := &jobTarget{d: d, ref: ref, send: conn.SendJob, pending: make(map[uint64]chan jobAnswer), stop: make(chan struct{})}
	t.beat.Store(time.Now().UnixNano())
	if d.heartbeat > 0 {
		go t.watch()
	}
	return t
}

// watch looks at every heartbeat interval whether t is hung, and if so
// orphans its outstanding jobs: their callers send them again, to another
// worker (pick skips t while it is hung), and what t answers late is
// dropped. It returns when t is retired.
func (t *jobTarget) watch() {
	tk := time.NewTicker(t.d.heartbeat)
	defer tk.Stop()
	for {
		select {
		case <-t.stop:
			return
		case now := <-tk.C:
			if t.hung(now.UnixNano()) {
				t.orphan()
			}
		}
	}
}

// orphan tells the callers of t's outstanding jobs that t lost them.
func (t *jobTarget) orphan() {
	t.mu.Lock()
	pending := t.pending
	if len(pending) > 0 {
		t.pending = make(map[uint64]chan jobAnswer)
		t.n.Store(0)
	}
	t.mu.Unlock()
	if len(pending) == 0 {
		return
	}
	for _, ch := range pending {
		ch <- jobAnswer{gone: true}
	}
	t.d.signal()
}

func (d *dispatcher) publish(ts []*jobTarget) {
	d.targets.Store(&ts)
	d.signal()
}

// signal wakes the Dispatch calls waiting for room.
func (d *dispatcher) signal() {
	if d.waiting.Load() == 0 {
		return
	}
	d.mu.Lock()
	if d.changed != nil {
		close(d.changed)
		d.changed = nil
	}
	d.mu.Unlock()
}

// waitChange returns the channel the next signal closes; the caller is
// counted in waiting.
func (d *dispatcher) waitChange() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.changed == nil {
		d.changed = make(chan struct{})
	}
	return d.changed
}

func (t *jobTarget) hung(now int64) bool {
	hb := t.d.heartbeat
	return hb > 0 && now-t.beat.Load() > int64(hungAfter(hb))
}

// pick returns the usable worker with the fewest outstanding jobs, other
// than skip.
func (d *dispatcher) pick(skip *jobTarget) *jobTarget {
	now := time.Now().UnixNano()
	var best *jobTarget
	for _, t := range *d.targets.Load() {
		if t == skip || t.gone.Load() || t.hung(now) {
			continue
		}
		n := t.n.Load()
		if int(n) >= d.perWorker {
			continue
		}
		if best == nil || n < best.n.Load() {
			best = t
		}
	}
	return best
}

// start registers job id on t and sends it; false when t is gone. ch
// gets at most one value, whatever start returns: when the send fails
// because the worker died, retire may have sent gone on ch already.
func (t *jobTarget) start(id uint64, attempt int, body []byte, ch chan jobAnswer) bool {
	t.mu.Lock()
	if t.dead {
		t.mu.Unlock()
		return false
	}
	t.pending[id] = ch
	t.n.Add(1)
	t.mu.Unlock()
	if err := t.send(id, attempt, body); err != nil {
		t.forget(id)
		return false
	}
	return true
}

// jobBuffers holds the buffers Dispatch encodes jobs in, up to
// maxPooledJob bytes each.
var jobBuffers = sync.Pool{New: func() any { return new([]byte) }}

const maxPooledJob = 64 << 10

// forget drops job id; false when its answer (or gone) was already sent
// on its channel.
func (t *jobTarget) forget(id uint64) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.pending[id]; !ok {
		return false
	}
	delete(t.pending, id)
	t.n.Add(-1)
	t.d.signal()
	return true
}

// answer delivers a worker's KindResult or KindError for job id; a late
// answer (the job was redelivered or its caller gave up) is dropped.
func (t *jobTarget) answer(id uint64, m *ipc.Message) {
	t.mu.Lock()
	ch, ok := t.pending[id]
	if ok {
		delete(t.pending, id)
		t.n.Add(-1)
	}
	t.mu.Unlock()
	if !ok {
		return
	}
	ch <- jobAnswer{m: m}
	t.d.signal()
}

// retire marks t gone and orphans its outstanding jobs; the session calls
// it when the connection ended.
func (t *jobTarget) retire() {
	t.gone.Store(true)
	t.mu.Lock()
	t.dead = true
	t.mu.Unlock()
	close(t.stop)
	t.orphan()
}

// Dispatch sends job (any value msgpack encodes, or an encoded
// msgpack.RawMessage) to the ready worker with the fewest outstanding jobs
// and returns its answer: a JobResult, or the worker's error as an
// [*ipc.RemoteError] (not retried: the worker saw the job and refused it).
// A job whose worker dies, hangs (three heartbeats missed) or closes its
// connection before answering is sent again, to another worker when there
// is one, with its attempt number increased; after Options.JobAttempts
// such attempts the error wraps [ErrJobOrphaned] and says how many.
// Delivery is at least once: a worker may see a job twice, the caller gets
// one answer.
//
// Options.MaxJobs bounds the jobs in flight, Options.JobQueue those
// outstanding on one worker. When either is full Dispatch waits until ctx
// is done, or, with Options.JobsFailFast, returns an error wrapping
// [ErrJobQueueFull]. Cancelling ctx abandons the job (a late answer is
// dropped) and returns ctx's error. Safe for concurrent use while Run
// runs; before Run, or after it returned, the error wraps [ErrNotRunning].
func (m *Master) Dispatch(ctx context.Context, job any) (JobResult, error) {
	return m.dispatch(ctx, job, nil)
}

func (m *Master) dispatch(ctx context.Context, job any, skip *jobTarget) (JobResult, error) {
	if m.routes.Load() == nil {
		return JobResult{}, fmt.Errorf("dispatch: %w", ErrNotRunning)
	}
	d := m.jobs
	// The job's body stays in this buffer until Dispatch returns: each
	// attempt's send copies it into the connection's buffer, and nothing
	// else keeps it.
	buf := jobBuffers.Get().(*[]byte)
	body, err := ipc.AppendEncode((*buf)[:0], job)
	defer func() {
		if cap(body) <= maxPooledJob {
			*buf = body[:0]
			jobBuffers.Put(buf)
		}
	}()
	if err != nil {
		return JobResult{}, fmt.Errorf("dispatch: %w", err)
	}
	select {
	case d.inFlight <- struct{}{}:
	default:
		if d.failFast {
			return JobResult{}, fmt.Errorf("dispatch: %d jobs in flight, Options.MaxJobs: %w", cap(d.inFlight), ErrJobQueueFull)
		}
		select {
		case d.inFlight <- struct{}{}:
		case <-ctx.Done():
			return JobResult{}, fmt.Errorf("dispatch: %w", ctx.Err())
		}
	}
	defer func() { <-d.inFlight }()
	var lastGone WorkerRef
	for attempt := 1; ; {
		t, err := d.wait(ctx, skip)
		if err != nil {
			return JobResult{}, err
		}
		// A channel per send: a send that failed as its worker died may
		// leave a gone on its channel, which must not answer the next
		// send (and then fill the channel, so that a later answer or
		// retire blocks its session for good).
		// A channel whose one value was taken is empty, and no worker's
		// pending jobs hold it any more: the next job may have it.
		ch := answerChans.Get().(chan jobAnswer)
		id := jobIDBit | d.nextID.Add(1)
		if !t.start(id, attempt, body, ch) {
			continue // gone between pick and send: not an attempt
		}
		a, err := t.await(ctx, id, ch)
		answerChans.Put(ch)
		if err != nil {
			return JobResult{}, err
		}
		if !a.gone {
			if a.m.Kind == ipc.KindError {
				t.counts.job(jobFailed)
				var e ipc.Error
				if err := a.m.Decode(&e); err != nil {
					return JobResult{}, fmt.Errorf("dispatch: answer of worker %d: %w", t.ref.Slot, err)
				}
				return JobResult{}, fmt.Errorf("dispatch: worker %d (pid %d): %w", t.ref.Slot, t.ref.PID, &ipc.RemoteError{Code: e.Code, Text: e.Text})
			}
			t.counts.job(jobCompleted)
			return JobResult{Body: a.m.Body, Attempts: attempt, Worker: t.ref}, nil
		}
		t.counts.job(jobLost)
		lastGone = t.ref
		if attempt >= d.attempts {
			return JobResult{}, fmt.Errorf("dispatch: job lost its worker %d times, the most Options.JobAttempts allows (last worker %d, pid %d): %w",
				attempt, lastGone.Slot, lastGone.PID, ErrJobOrphaned)
		}
		attempt++
		d.redeliveries.Add(1)
	}
}

// answerChans holds the channels of jobs that were answered: each has
// room for one value and is empty.
var answerChans = sync.Pool{New: func() any { return make(chan jobAnswer, 1) }}

// wait returns a worker with room, waiting for one unless fail-fast.
func (d *dispatcher) wait(ctx context.Context, skip *jobTarget) (*jobTarget, error) {
	if t := d.pick(skip); t != nil {
		return t, nil
	}
	if d.failFast {
		return nil, fmt.Errorf("dispatch: no ready worker can take a job (none ready, hung, or all at Options.JobQueue %d): %w", d.perWorker, ErrJobQueueFull)
	}
	d.waiting.Add(1)
	defer d.waiting.Add(-1)
	for {
		changed := d.waitChange()
		if t := d.pick(skip); t != nil {
			return t, nil
		}
		// Heartbeats have no event here: look again every interval for a
		// worker that came back.
		var tick <-chan time.Time
		var tm *time.Timer
		if d.heartbeat > 0 {
			tm = time.NewTimer(d.heartbeat)
			tick = tm.C
		}
		select {
		case <-changed:
		case <-tick:
		case <-ctx.Done():
			return nil, fmt.Errorf("dispatch: waiting for a worker: %w", ctx.Err())
		}
		if tm != nil {
			tm.Stop()
		}
	}
}

// await waits for job id's answer on t, or gone when t lost the job: it
// died, disconnected or was found hung (watch).
func (t *jobTarget) await(ctx context.Context, id uint64, ch chan jobAnswer) (jobAnswer, error) {
	done := ctx.Done()
	if done == nil { // a context that is never done: no select needed
		return <-ch, nil
	}
	select {
	case a := <-ch:
		return a, nil
	case <-done:
		if !t.forget(id) {
			<-ch // answered (or orphaned) meanwhile; the caller gave up all the same
		}
		return jobAnswer{}, fmt.Errorf("dispatch: %w", ctx.Err())
	}
}

// Redeliveries returns how many times a job was sent again after losing
// its worker, since New.
func (m *Master) Redeliveries() uint64 { return m.jobs.redeliveries.Load() }
