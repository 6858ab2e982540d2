package master

import (
	"context"
	"sync"
	"testing"

	"github.com/clusterd/clusterd/ipc"
)

// TestDispatchSendFailsAsItsWorkerRetires: a job whose send fails because
// its worker died while it was being sent (the worker's session retired it
// between registering the job and the send) goes to another worker as the
// same attempt. The gone the dead worker left must not answer the job's
// next send, and no answer may block the session that delivers it.
func TestDispatchSendFailsAsItsWorkerRetires(t *testing.T) {
	d := newDispatcher(&config{Options: Options{JobAttempts: 3, JobQueue: 4, MaxJobs: 4}})
	m := &Master{jobs: d}
	m.routes.Store(&routeTable{})

	dead := d.newTarget(WorkerRef{Slot: 0, PID: 100, Generation: 1}, nil)
	dead.send = func(uint64, int, []byte) error {
		dead.retire() // the session saw the worker's end of the stream
		return ipc.ErrClosed
	}
	live := d.newTarget(WorkerRef{Slot: 1, PID: 101, Generation: 1}, nil)
	var answering sync.WaitGroup // answers as live's session delivers them
	var mu sync.Mutex
	var sent []uint64
	live.send = func(id uint64, _ int, _ []byte) error {
		mu.Lock()
		sent = append(sent, id)
		mu.Unlock()
		r := &ipc.Message{Kind: ipc.KindResult, ReplyTo: id, Body: mustEncode(t, "done")}
		answering.Go(func() { live.answer(id, r) })
		return nil
	}
	// dead has fewer outstanding jobs, so it is picked first.
	live.n.Store(1)
	d.publish([]*jobTarget{dead, live})

	res, err := m.Dispatch(context.Background(), "job")
	if err != nil {
		t.Fatal(err)
	}
	var body string
	if err := res.Decode(&body); err != nil || body != "done" {
		t.Fatalf("result %q (%v), want the live worker's %q", body, err, "done")
	}
	if res.Worker != live.ref || res.Attempts != 1 {
		t.Errorf("answered by %+v on attempt %d, want %+v on attempt 1 (a send that failed is no attempt)", res.Worker, res.Attempts, live.ref)
	}
	if n := m.Redeliveries(); n != 0 {
		t.Errorf("%d redeliveries, want 0", n)
	}
	if t.Failed() {
		return // an answer may be stuck on a full channel: do not wait for it
	}
	// Every answer live's session delivered was taken or dropped: none
	// blocks its session, nor does the retire that ends it.
	answering.Wait()
	live.retire()
	mu.Lock()
	defer mu.Unlock()
	if len(sent) != 1 {
		t.Errorf("live worker was sent %d jobs, want 1", len(sent))
	}
}

func mustEncode(t *testing.T, v any) []byte {
	t.Helper()
	b, err := ipc.Encode(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
