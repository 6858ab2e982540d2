package master

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/clusterd/clusterd/ipc"
	"github.com/hashicorp/go-hclog"
)

// Balancing over IPC (BalanceRoundRobin, BalanceLeastConn): the master
// accepts on every listener a worker asked for, on one goroutine per
// listener (balance_linux.go), and hands each accepted connection to a
// worker as an ipc KindConn message (SCM_RIGHTS).
//
// The loop never touches a connection. It publishes, whenever the worker
// table changes, the serving workers that may take connections (ready, not
// draining, online over IPC) as an immutable slice through an atomic
// pointer; the accepters read it without a lock. Each worker's target has a
// mutex of its own, shared by the accepters and the worker's IPC session,
// never by the loop.
//
// Ownership of a connection (ipc/doc.go tells the whole hand-off): the
// master owns an accepted descriptor until the worker acknowledges that it
// received it. It keeps the descriptor in the target's ring of outstanding
// connections, sends a duplicate, and closes its own copy when the worker's
// cumulative "received" count covers it. When the worker dies (its IPC
// session ends) first, the outstanding ones are handed to other workers:
// the duplicates in flight died with the worker's socket, the master's
// copies did not. A worker that cannot use a connection it received (no
// listener of that id, or closed) sends it back, and it is handed on
// again.

// maxBalanced is the most listeners that can be balanced at once: a
// target's listener set is one 64-bit mask.
const maxBalanced = 64

// DefaultConnQueue is the most connections handed to one worker and not yet
// acknowledged, when Options.ConnQueue is 0. A worker at this bound (one
// that stopped reading its IPC socket, or is slow to) is skipped.
const DefaultConnQueue = 128

// balancer spreads accepted connections over the published targets.
type balancer struct {
	mode      Balance
	log       hclog.Logger
	heartbeat time.Duration // 0: heartbeats are not checked
	queue     int           // per-target bound of outstanding connections

	targets atomic.Pointer[[]*target] // published by the loop
	cursor  atomic.Uint64             // round-robin position, and least-conn's tie breaker
	handed  atomic.Uint64             // connections sent to workers, for tests and metrics

	// held are connections no worker could take when they came (all of
	// them full, draining or gone); accepters hand them out before they
	// accept more. wake is kicked when room may have appeared.
	heldMu sync.Mutex
	held   []heldConn
	wake   chan struct{}

	// Owned by the loop goroutine: the listeners being accepted on.
	ids map[*os.File]uint8

	stop chan struct{} // closed by close: accepters return
	wg   sync.WaitGroup

	// An upgrade stops the accepters so that no connection is in the
	// master's hands at the exec (upgrade_linux.go): an accepter takes gate
	// for reading from accept4 to the end of the hand-off, and accepts
	// nothing while acceptPaused is set; resumed is closed to let it go on.
	gate         sync.RWMutex
	acceptPaused atomic.Bool
	resumedMu    sync.Mutex
	resumed      chan struct{}

	// carried are the connection totals of workers taken over from a
	// previous image, by pid, for their new targets (written before the
	// sessions start, read-only after).
	carried map[int]targetCounts
	acc     []*accepter // for close; appended by the loop only

	// deaf, when set (by Run), asks the loop to check its listeners now:
	// an accepter found its listener no longer listening. It may block
	// until the loop takes the request, or the loop has ended.
	deaf func()

	closeOnce sync.Once
}

type heldConn struct {
	fd  int
	lid uint8
}

func newBalancer(mode Balance, queue int, heartbeat time.Duration, log hclog.Logger) *balancer {
	b := &balancer{
		mode: mode, log: log, heartbeat: heartbeat, queue: queue,
		wake: make(chan struct{}, 1),
		ids:  make(map[*os.File]uint8),
		stop: make(chan struct{}),
	}
	b.targets.Store(&[]*target{})
	return b
}

// target is one worker that can take connections; its IPC session makes
// it and retires it when the connection ends.
type target struct {
	b       *balancer
	slot    int
	pid     int
	conn    *ipc.Conn
	listens atomic.Uint64 // listener ids the worker asked for
	handed  atomic.Uint64 // connections sent
	closed  atomic.Uint64 // closed by the worker, as it last reported
	beat    atomic.Int64  // time of the last heartbeat (UnixNano)
	out     atomic.Int32  // outstanding: len of the ring, for lock-free picks
	counts  *slotCounts   // the slot's totals (SlotStats); nil: none

	mu    sync.Mutex
	ring  []heldConn // outstanding connections, oldest first, from head
	head  int
	n     int
	acked uint64 // received count as of the last report
	dead  bool
}

// targetCounts are what an upgrade carries of a target.
type targetCounts struct {
	listens, handed, closed, acked uint64
}

// newTarget returns the target of a worker that said hello.
func (b *balancer) newTarget(slot, pid int, conn *ipc.Conn) *target {
	t := &target{b: b, slot: slot, pid: pid, conn: conn, ring: make([]heldConn, b.queue)}
	t.beat.Store(time.Now().UnixNano())
	if c, ok := b.carried[pid]; ok {
		// Taken over from the previous image: its listeners and totals go
		// on (a worker's reports carry running totals).
		t.listens.Store(c.listens)
		t.handed.Store(c.handed)
		t.closed.Store(c.closed)
		t.acked = c.acked
	}
	return t
}

// upgradeCounts returns what an upgrade carries of t.
func (t *target) upgradeCounts() targetCounts {
	t.mu.Lock()
	defer t.mu.Unlock()
	return targetCounts{listens: t.listens.Load(), handed: t.handed.Load(), closed: t.closed.Load(), acked: t.acked}
}

// pauseAccepting stops the accepters once the batches they are handing
// out are handed out; resumeAccepting lets them go on.
func (b *balancer) pauseAccepting() {
	b.resumedMu.Lock()
	if b.resumed == nil {
		b.resumed = make(chan struct{})
	}
	b.resumedMu.Unlock()
	b.acceptPaused.Store(true)
	b.gate.Lock() // waits for the batches in progress
	b.gate.Unlock()
}

func (b *balancer) resumeAccepting() {
	b.acceptPaused.Store(false)
	b.resumedMu.Lock()
	if b.resumed != nil {
		close(b.resumed)
		b.resumed = nil
	}
	b.resumedMu.Unlock()
}

// awaitResume blocks an accepter while accepting is paused; false when
// the balancer is closing.
func (b *balancer) awaitResume() bool {
	b.resumedMu.Lock()
	ch := b.resumed
	b.resumedMu.Unlock()
	if ch == nil {
		return true
	}
	select {
	case <-ch:
		return true
	case <-b.stop:
		return false
	}
}

// settled reports whether the master holds no connection: none waiting
// for a worker, none handed out and not yet received.
func (b *balancer) settled() bool {
	b.heldMu.Lock()
	held := len(b.held)
	b.heldMu.Unlock()
	if held > 0 {
		return false
	}
	if ts := b.targets.Load(); ts != nil {
		for _, t := range *ts {
			if t.out.Load() > 0 {
				return false
			}
		}
	}
	return true
}

// publish makes ts (never modified afterwards) the workers that take
// connections. Called by the loop.
func (b *balancer) publish(ts []*target) {
	b.targets.Store(&ts)
	b.kick()
}

func (b *balancer) kick() {
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

// open is how many connections the worker holds, as far as the master
// knows: handed minus reported closed. A lost report is made good by the
// next one, since reports carry running totals, not differences.
func (t *target) open() uint64 {
	h, c := t.handed.Load(), t.closed.Load()
	if c > h {
		return 0
	}
	return h - c
}

// usable reports whether t may get a connection of listener lid now.
func (t *target) usable(lid uint8, now int64) bool {
	if t.listens.Load()&(1<<lid) == 0 || int(t.out.Load()) >= len(t.ring) {
		return false
	}
	if hb := t.b.heartbeat; hb > 0 && now-t.beat.Load() > int64(hungAfter(hb)) {
		return false // hung: heartbeats missed
	}
	return true
}

// pick chooses the worker for a connection of listener lid, skipping
// skip; nil when none can take it.
func (b *balancer) pick(lid uint8, now int64, skip *target) *target {
	return b.pickAfter(lid, now, skip, nil)
}

// pickAfter is pick for one connection of a batch whose earlier
// connections go to prior (not handed yet): least-conn counts them as the
// connections they will be, so that a batch is spread rather than given
// whole to the worker that had the fewest when it began.
func (b *balancer) pickAfter(lid uint8, now int64, skip *target, prior []*target) *target {
	ts := *b.targets.Load()
	n := uint64(len(ts))
	if n == 0 {
		return nil
	}
	start := b.cursor.Add(1)
	var best *target
	var bestOpen uint64
	for k := range n {
		t := ts[(start+k)%n]
		if t == skip || !t.usable(lid, now) {
			continue
		}
		if b.mode == BalanceRoundRobin {
			return t
		}
		o := t.open()
		for _, p := range prior {
			if p == t {
				o++
			}
		}
		if best == nil || o < bestOpen {
			best, bestOpen = t, o
		}
	}
	return best
}

// hand sends fds, connections of listener lid, to t in one message and
// records them as outstanding; false (nothing sent, the caller keeps fds)
// when t is gone, full or its connection's buffer is.
func (t *target) hand(lid uint8, fds []int) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.dead || t.n+len(fds) > len(t.ring) {
		return false
	}
	if err := t.conn.SendFDs(ipc.KindConn, lid, fds); err != nil {
		if !errors.Is(err, ipc.ErrWouldBlock) && t.conn.Err() == nil {
			t.b.log.Debug("hand connections", "worker", t.slot, "pid", t.pid, "error", err)
		}
		return false
	}
	for _, fd := range fds {
		t.ring[(t.head+t.n)%len(t.ring)] = heldConn{fd: fd, lid: lid}
		t.n++
	}
	t.out.Store(int32(t.n))
	t.handed.Add(uint64(len(fds)))
	t.b.handed.Add(uint64(len(fds)))
	t.counts.handed(len(fds))
	return true
}

// report applies a worker's running totals: received (the master closes
// its copies of that many of the oldest outstanding connections) and
// closed.
func (t *target) report(r ipc.ConnReport) {
	t.mu.Lock()
	if r.Received > t.acked {
		k := min(r.Received-t.acked, uint64(t.n))
		for range k {
			closeFD(t.ring[t.head].fd)
			t.head = (t.head + 1) % len(t.ring)
			t.n--
		}
		t.acked = r.Received
		t.out.Store(int32(t.n))
	}
	t.mu.Unlock()
	for {
		c := t.closed.Load()
		if r.Closed <= c || t.closed.CompareAndSwap(c, r.Closed) {
			break
		}
	}
	t.b.kick()
}

// retire marks t gone and hands its outstanding connections to the other
// workers. The session calls it once its connection ended.
func (t *target) retire() {
	t.mu.Lock()
	t.dead = true
	var orphans []heldConn
	for t.n > 0 {
		orphans = append(orphans, t.ring[t.head])
		t.head = (t.head + 1) % len(t.ring)
		t.n--
	}
	t.out.Store(0)
	t.mu.Unlock()
	if len(orphans) > 0 {
		t.b.log.Debug("re-routing connections of a gone worker", "worker", t.slot, "pid", t.pid, "connections", len(orphans))
	}
	for _, c := range orphans {
		t.b.route(c.lid, c.fd, t)
	}
}

// route hands one connection to a worker other than skip, or holds it
// until one has room. The balancer owns fd from here.
func (b *balancer) route(lid uint8, fd int, skip *target) {
	now := time.Now().UnixNano()
	var one [1]int
	one[0] = fd
	for range 4 {
		t := b.pick(lid, now, skip)
		if t == nil {
			break
		}
		if t.hand(lid, one[:]) {
			return
		}
	}
	b.hold(heldConn{fd: fd, lid: lid})
}

func (b *balancer) hold(c heldConn) {
	b.heldMu.Lock()
	b.held = append(b.held, c)
	b.heldMu.Unlock()
	b.kick()
}

// retryHeld hands out held connections; it reports whether none is left.
func (b *balancer) retryHeld() bool {
	b.heldMu.Lock()
	held := b.held
	b.held = nil
	b.heldMu.Unlock()
	if len(held) == 0 {
		return true
	}
	now := time.Now().UnixNano()
	var one [1]int
	var left []heldConn
	for _, c := range held {
		t := b.pick(c.lid, now, nil)
		one[0] = c.fd
		if t == nil || !t.hand(c.lid, one[:]) {
			left = append(left, c)
		}
	}
	if len(left) == 0 {
		return true
	}
	b.heldMu.Lock()
	b.held = append(left, b.held...)
	b.heldMu.Unlock()
	return false
}

// listenerID returns the id of listener f, starting its accepter the first
// time. Called by the loop only.
func (b *balancer) listenerID(f *os.File, addr string) (uint8, error) {
	if id, ok := b.ids[f]; ok {
		return id, nil
	}
	if len(b.ids) >= maxBalanced {
		return 0, &listenError{ipc.CodeLimit, fmt.Errorf("listen %s: %d listeners are balanced, the most --balance %s can", addr, maxBalanced, b.mode)}
	}
	id := uint8(len(b.ids))
	a, err := b.startAccepter(f, id, addr)
	if err != nil {
		return 0, &listenError{ipc.CodeListen, err}
	}
	b.ids[f] = id
	b.acc = append(b.acc, a)
	return id, nil
}

// close stops the accepters and closes every connection the master still
// holds (Run ends: no worker is left to take them).
func (b *balancer) close() {
	b.closeOnce.Do(func() {
		close(b.stop)
		for _, a := range b.acc {
			a.shutdown()
		}
		b.wg.Wait()
		b.heldMu.Lock()
		for _, c := range b.held {
			closeFD(c.fd)
		}
		b.held = nil
		b.heldMu.Unlock()
	})
}

// hungAfter is how long a worker may go without a heartbeat before it gets
// no more connections or jobs: three intervals, and at least a second, so
// that a busy machine's scheduling delays do not count.
func hungAfter(heartbeat time.Duration) time.Duration {
	return max(3*heartbeat, time.Second)
}

func closeFD(fd int) {
	_ = syscall.Close(fd) // a descriptor the master drops; nobody to tell
}
