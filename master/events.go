package master

import (
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Events: what happens to the cluster, as typed values out of the loop, in
// the order the loop saw it (Node's cluster events: fork, online,
// listening, disconnect, exit). Application messages are not events: they
// go to Options.OnMessage and Options.HandleRequest.

// EventKind says what an [Event] reports.
type EventKind int

// Event kinds, in the order they happen to one worker: fork, online (once,
// if it speaks IPC), listening (for each run-time listener, usually before
// ready), ready, disconnect (if it spoke IPC), exit. With ReadyExec a
// worker is ready at fork, so its ready comes before its online.
const (
	// EventFork: a worker process was started (its pid exists).
	EventFork EventKind = iota + 1
	// EventOnline: the worker's IPC hello arrived; from now on it can be
	// sent messages and requests.
	EventOnline
	// EventReady: the worker became ready by Options.Ready (Node's
	// "listening").
	EventReady
	// EventDisconnect: the worker's IPC connection ended (it closed its end,
	// broke the protocol, or exited). Err says why when it was not a plain
	// close.
	EventDisconnect
	// EventExit: the worker was reaped. ExitCode or Signal, Uptime and
	// ExitedAfterDisconnect describe the exit.
	EventExit
	// EventReload: a rolling reload ended (done, aborted, or started over
	// by another one); Reload holds its result.
	EventReload
	// EventListening: the master handed the worker a listener it asked
	// for at run time (worker.Listen); Addr is its address. Listeners the
	// worker inherited at start raise no event.
	EventListening
	// EventHang: the worker was found hung (its heartbeats or watchdog
	// keep-alives stopped); Reason says which. Its replacement starts
	// next, and it is drained once that one is ready.
	EventHang
)

func (k EventKind) String() string {
	switch k {
	case EventFork:
		return "fork"
	case EventOnline:
		return "online"
	case EventReady:
		return "ready"
	case EventDisconnect:
		return "disconnect"
	case EventExit:
		return "exit"
	case EventReload:
		return "reload"
	case EventListening:
		return "listening"
	case EventHang:
		return "hang"
	}
	return fmt.Sprintf("event(%d)", int(k))
}

// Event is one thing that happened to the cluster. Slot, PID and
// Generation name the worker (all events but EventReload).
type Event struct {
	Kind       EventKind
	Time       time.Time
	Slot       int
	PID        int
	Generation int

	// ExitCode is the exit status of a worker that exited normally
	// (EventExit with Signal 0).
	ExitCode int
	// Signal is the signal that killed the worker (EventExit), or 0.
	Signal syscall.Signal
	// Uptime is how long the worker ran (EventExit).
	Uptime time.Duration
	// ExitedAfterDisconnect is true when the master stopped the worker on
	// purpose (drained or killed for a reload, a stop, scaling or a
	// maintenance stop), as Node's worker.exitedAfterDisconnect; false when
	// it exited or crashed by itself, or was killed for failing (ready
	// timeout, protocol error).
	ExitedAfterDisconnect bool
	// Reason says why the master stopped the worker (EventExit), e.g.
	// "replaced by reload"; empty when it exited by itself.
	Reason string
	// Cause says in words why the worker ended (EventExit): "crashed: exit
	// code 1", "killed by clusterd: memory limit: rss 52.0MiB over
	// 48.0MiB", "killed by the kernel's OOM killer ...".
	Cause string
	// Err is why the IPC connection ended (EventDisconnect), nil for a
	// plain close; or why a reload failed (EventReload), as Master.Reload
	// returns it.
	Err error
	// Reload is the result of the reload that ended (EventReload).
	Reload *ReloadResult
	// Addr is the listener's address (EventListening), e.g.
	// "127.0.0.1:8080".
	Addr string
}

// DefaultEventBuffer is the buffer of a [Master.Subscribe] with a buffer
// of 0 or less.
const DefaultEventBuffer = 1024

// Subscription receives the master's events ([Master.Subscribe]).
//
// The loop never waits for a subscriber: it puts each event in the
// subscription's buffer, and when the buffer is full it drops the event and
// counts it ([Subscription.Dropped]). Events that are delivered arrive in
// the order they happened. C is closed after Run's last event, or by
// [Subscription.Close].
type Subscription struct {
	// C delivers the events.
	C <-chan Event

	c       chan Event
	hub     *eventHub
	dropped atomic.Uint64
}

// Dropped returns how many events were dropped because the buffer was full.
// It is safe for concurrent use.
func (s *Subscription) Dropped() uint64 { return s.dropped.Load() }

// Close ends the subscription: no more events are sent and C is closed
// (events already buffered stay readable). It is idempotent and safe for
// concurrent use.
func (s *Subscription) Close() { s.hub.remove(s) }

// eventHub fans events out to subscriptions. Its mutex guards only the set
// of subscriptions (not supervisor state): the loop holds it while it puts
// an event in each buffer, which never blocks.
type eventHub struct {
	mu     sync.Mutex
	subs   map[*Subscription]struct{}
	closed bool // Run ended: new subscriptions start closed
}

func newEventHub() *eventHub {
	return &eventHub{subs: make(map[*Subscription]struct{})}
}

func (h *eventHub) subscribe(buffer int) *Subscription {
	if buffer <= 0 {
		buffer = DefaultEventBuffer
	}
	c := make(chan Event, buffer)
	s := &Subscription{C: c, c: c, hub: h}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		close(c)
		return s
	}
	h.subs[s] = struct{}{}
	return s
}

func (h *eventHub) remove(s *Subscription) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.subs[s]; ok {
		delete(h.subs, s)
		close(s.c)
	}
}

// publish hands e to every subscription without blocking.
func (h *eventHub) publish(e Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.subs {
		select {
		case s.c <- e:
		default:
			s.dropped.Add(1)
		}
	}
}

// close closes every subscription; called once when Run ends.
func (h *eventHub) close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closed = true
	for s := range h.subs {
		delete(h.subs, s)
		close(s.c)
	}
}

// emit publishes an event about w.
func (l *loop) emit(kind EventKind, w *worker, fill func(*Event)) {
	// A subscriber that acts on an event (Send after EventOnline) must find
	// the routes it implies.
	l.publishRoutes()
	if l.hub == nil {
		return
	}
	e := Event{Kind: kind, Time: time.Now()}
	if w != nil {
		e.Slot, e.PID, e.Generation = w.slot.id, w.pid, w.gen
	}
	if fill != nil {
		fill(&e)
	}
	l.hub.publish(e)
}
