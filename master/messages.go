package master

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/clusterd/clusterd/ipc"
)

// Application messages between the master and its workers (ipc KindUser,
// KindRequest). They are data, not supervision: they do not pass through
// the loop. The loop publishes, whenever it changes, which process serves
// each slot (routeTable, copy-on-write through an atomic pointer), and the
// callers of Send and Request use the worker's connection directly. A
// worker's messages to the master are read by its session goroutine and
// handed to Options.OnMessage and Options.HandleRequest there.

// WorkerRef names one worker incarnation: the sender of a message or
// request, or the target of one.
type WorkerRef struct {
	Slot, PID, Generation int
}

// route is a slot's serving worker that spoke IPC.
type route struct {
	ref  WorkerRef
	proc process
}

// routeTable maps slot numbers to their serving online workers. A
// published table is never modified.
type routeTable map[int]route

// publishRoutes publishes the slots' serving online workers when they
// changed since the last time.
func (l *loop) publishRoutes() {
	if !l.rerouted || l.routes == nil {
		return
	}
	l.rerouted = false
	t := make(routeTable, len(l.slots))
	var targets []*target
	var jobTargets []*jobTarget
	for _, s := range l.slots {
		if w := s.cur; w != nil && w.online && !w.disconnected && w.state != stateExited {
			t[s.id] = route{ref: WorkerRef{Slot: s.id, PID: w.pid, Generation: w.gen}, proc: w.proc}
			if w.target != nil && w.state == stateReady {
				targets = append(targets, w.target)
			}
			if w.jobTarget != nil && w.state == stateReady {
				jobTargets = append(jobTargets, w.jobTarget)
			}
		}
	}
	l.routes.Store(&t)
	if l.balance != nil {
		l.balance.publish(targets)
	}
	if l.jobs != nil {
		l.jobs.publish(jobTargets)
	}
}

// route returns slot's serving online worker.
func (m *Master) route(slot int) (route, error) {
	t := m.routes.Load()
	if t == nil {
		return route{}, ErrNotRunning
	}
	r, ok := (*t)[slot]
	if !ok {
		return route{}, fmt.Errorf("worker %d: %w", slot, ErrNoWorker)
	}
	return r, nil
}

// Send sends msg (any value msgpack encodes, or an ipc-encoded
// msgpack.RawMessage) as a one-way KindUser message to slot's serving
// worker; during a reload that is the old worker until its replacement is
// ready. Messages sent to one worker arrive in the order of Send. Send
// returns once the message is queued (it blocks while the connection's
// write buffer is full); an error wraps [ErrNoWorker] when the slot has no
// worker that spoke IPC. Safe for concurrent use.
func (m *Master) Send(slot int, msg any) error {
	r, err := m.route(slot)
	if err != nil {
		return fmt.Errorf("send: %w", err)
	}
	im, err := ipc.NewMessage(ipc.KindUser, msg)
	if err != nil {
		return fmt.Errorf("send to worker %d: %w", slot, err)
	}
	if err := r.proc.send(im); err != nil {
		return fmt.Errorf("send to worker %d (pid %d): %w", slot, r.ref.PID, err)
	}
	return nil
}

// Broadcast sends msg to every slot's serving worker that spoke IPC, as
// [Master.Send] does, one after the other in slot order (so a worker whose
// write buffer is full delays the ones after it), and returns the workers
// it was queued for, with the errors of the others joined. Safe for
// concurrent use.
func (m *Master) Broadcast(msg any) ([]WorkerRef, error) {
	t := m.routes.Load()
	if t == nil {
		return nil, fmt.Errorf("broadcast: %w", ErrNotRunning)
	}
	im, err := ipc.NewMessage(ipc.KindUser, msg)
	if err != nil {
		return nil, fmt.Errorf("broadcast: %w", err)
	}
	slots := make([]int, 0, len(*t))
	for s := range *t {
		slots = append(slots, s)
	}
	slices.Sort(slots)
	var sent []WorkerRef
	var errs []error
	for _, s := range slots {
		r := (*t)[s]
		if err := r.proc.send(im); err != nil {
			errs = append(errs, fmt.Errorf("broadcast to worker %d (pid %d): %w", s, r.ref.PID, err))
			continue
		}
		sent = append(sent, r.ref)
	}
	return sent, errors.Join(errs...)
}

// Request sends msg as a KindRequest to slot's serving worker and waits for
// its answer: a KindResponse, returned as a message whose body the caller
// decodes ([ipc.Message.Decode]) and whose descriptors it owns, or a
// KindError, returned as an [*ipc.RemoteError]. When the worker exits or
// closes its connection first, the error wraps [ErrWorkerGone] and an
// [*ipc.RemoteError] with Code [ipc.CodeGone]; when ctx ends first, ctx's
// error. Safe for concurrent use; concurrent requests are answered
// independently.
func (m *Master) Request(ctx context.Context, slot int, msg any) (*ipc.Message, error) {
	r, err := m.route(slot)
	if err != nil {
		return nil, fmt.Errorf("request: %w", err)
	}
	im, err := ipc.NewMessage(ipc.KindRequest, msg)
	if err != nil {
		return nil, fmt.Errorf("request to worker %d: %w", slot, err)
	}
	reply, err := r.proc.call(ctx, im)
	if err == nil {
		return reply, nil
	}
	var re *ipc.RemoteError
	switch {
	case errors.As(err, &re):
		return nil, fmt.Errorf("request to worker %d (pid %d): %w", slot, r.ref.PID, err)
	case ctx.Err() != nil:
		return nil, fmt.Errorf("request to worker %d (pid %d): %w", slot, r.ref.PID, ctx.Err())
	}
	gone := &ipc.RemoteError{Code: ipc.CodeGone, Text: err.Error()}
	return nil, fmt.Errorf("request to worker %d (pid %d): %w: %w", slot, r.ref.PID, ErrWorkerGone, gone)
}
