package master

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/clusterd/clusterd/ipc"
	"github.com/clusterd/clusterd/sockshare"
	"github.com/hashicorp/go-hclog"
)

// Tests of the embedding API: a Master runs inside the test binary (the
// default, without Options.Subreaper, waits only for its own workers),
// with api-worker helpers, and the tests drive it through its methods and
// synchronise on its events and the workers' messages.

// apiCluster is a Master running in the test process.
type apiCluster struct {
	t      *testing.T
	m      *Master
	events *Subscription
	msgs   chan apiMsg // the workers' user messages, in order per worker
	logs   *syncBuffer
	runErr chan error
}

// startAPI runs a Master of api-workers with opts (Command, Env, Ready,
// Logger and OnMessage set here unless given) and waits until every
// initial worker is ready. The cleanup stops it and checks Run's result.
func startAPI(t *testing.T, opts Options, env ...string) *apiCluster {
	t.Helper()
	helper := "api-worker"
	var rest []string
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, envHelper+"="); ok {
			helper = v // another helper than api-worker
			continue
		}
		rest = append(rest, kv)
	}
	usedHelpers.Store(helper, true)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	c := &apiCluster{t: t, msgs: make(chan apiMsg, 100000), logs: &syncBuffer{}, runErr: make(chan error, 1)}
	opts.Command = []string{exe}
	opts.Env = append([]string{envHelper + "=" + helper}, rest...)
	opts.Ready = ReadyMode{Kind: ReadyIPC}
	if opts.KillTimeout == 0 {
		opts.KillTimeout = 10 * time.Second
	}
	opts.Logger = hclog.New(&hclog.LoggerOptions{Output: c.logs, Level: hclog.Debug})
	opts.Stdout, opts.Stderr = c.logs, c.logs
	if opts.OnMessage == nil {
		opts.OnMessage = func(from WorkerRef, m *ipc.Message) {
			var v apiMsg
			if err := m.Decode(&v); err != nil {
				v = apiMsg{Op: "undecodable", Text: err.Error()}
			}
			v.PID = from.PID
			c.msgs <- v
		}
	}
	m, err := New(opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	c.m = m
	c.events = m.Subscribe(4096)
	ctx, cancel := context.WithCancel(context.Background())
	go func() { c.runErr <- m.Run(ctx) }()
	t.Cleanup(func() {
		defer cancel()
		stop, cancelStop := context.WithTimeout(context.Background(), failDeadline(t))
		defer cancelStop()
		if err := m.Stop(stop); err != nil && !errors.Is(err, ErrNotRunning) {
			t.Errorf("Stop = %v", err)
		}
		select {
		case err := <-c.runErr:
			if err != nil {
				t.Errorf("Run = %v", err)
			}
		case <-time.After(failDeadline(t)):
			t.Errorf("Run did not return")
		}
		if t.Failed() {
			t.Logf("master log:\n%s", c.logs.String())
		}
	})
	select {
	case <-m.Ready():
	case err := <-c.runErr:
		c.runErr <- err
		t.Fatalf("Run = %v before the workers were ready", err)
	case <-time.After(failDeadline(t)):
		t.Fatal("workers not ready")
	}
	return c
}

// event waits for the next event that match accepts, skipping others.
func (c *apiCluster) event(what string, match func(Event) bool) Event {
	c.t.Helper()
	timeout := time.After(failDeadline(c.t))
	for {
		select {
		case e, ok := <-c.events.C:
			if !ok {
				c.t.Fatalf("events ended waiting for %s", what)
			}
			if match(e) {
				return e
			}
		case <-timeout:
			c.t.Fatalf("no %s event", what)
		}
	}
}

// msg waits for the next worker message with op.
func (c *apiCluster) msg(op string) apiMsg {
	c.t.Helper()
	timeout := time.After(failDeadline(c.t))
	for {
		select {
		case v := <-c.msgs:
			if v.Op == op {
				return v
			}
		case <-timeout:
			c.t.Fatalf("no %q message from a worker", op)
		}
	}
}

func (c *apiCluster) pids() map[int]int {
	ps := map[int]int{}
	for _, w := range c.m.Workers() {
		if w.State != WorkerDraining && !w.Replacing {
			ps[w.Slot] = w.PID
		}
	}
	return ps
}

func TestAPINotRunning(t *testing.T) {
	m, err := New(Options{Command: []string{"/bin/true"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Reload(t.Context()); !errors.Is(err, ErrNotRunning) {
		t.Errorf("Reload before Run = %v, want ErrNotRunning", err)
	}
	if err := m.Scale(t.Context(), 2); !errors.Is(err, ErrNotRunning) {
		t.Errorf("Scale before Run = %v, want ErrNotRunning", err)
	}
	if err := m.Stop(t.Context()); !errors.Is(err, ErrNotRunning) {
		t.Errorf("Stop before Run = %v, want ErrNotRunning", err)
	}
	if err := m.Signal(0, syscall.SIGTERM); !errors.Is(err, ErrNotRunning) {
		t.Errorf("Signal before Run = %v, want ErrNotRunning", err)
	}
	if err := m.Send(0, "x"); !errors.Is(err, ErrNotRunning) {
		t.Errorf("Send before Run = %v, want ErrNotRunning", err)
	}
	if _, err := m.Request(t.Context(), 0, "x"); !errors.Is(err, ErrNotRunning) {
		t.Errorf("Request before Run = %v, want ErrNotRunning", err)
	}
	if ws := m.Workers(); ws != nil {
		t.Errorf("Workers before Run = %v, want nil", ws)
	}
}

// TestAPIMessagesInOrder sends 10,000 messages each way and checks them by
// sequence number.
func TestAPIMessagesInOrder(t *testing.T) {
	const n = 10000
	c := startAPI(t, Options{Workers: 1})
	for i := range n {
		if err := c.m.Send(0, apiMsg{Op: "seq", Seq: i}); err != nil {
			t.Fatalf("Send %d: %v", i, err)
		}
	}
	if err := c.m.Send(0, apiMsg{Op: "seq-done"}); err != nil {
		t.Fatal(err)
	}
	if r := c.msg("seq-result"); r.N != n || !r.OK {
		t.Errorf("worker got %d messages, in order: %v; want %d in order", r.N, r.OK, n)
	}
	if err := c.m.Send(0, apiMsg{Op: "flood", N: n}); err != nil {
		t.Fatal(err)
	}
	timeout := time.After(failDeadline(t))
	for next := 0; next < n; {
		select {
		case v := <-c.msgs:
			if v.Op != "seq" {
				t.Fatalf("got %q after %d of %d messages", v.Op, next, n)
			}
			if v.Seq != next {
				t.Fatalf("message %d has seq %d", next, v.Seq)
			}
			next++
		case <-timeout:
			t.Fatalf("got %d of %d messages", next, n)
		}
	}
	if r := c.msg("flood-done"); r.N != n {
		t.Errorf("flood-done n = %d, want %d", r.N, n)
	}
}

// TestAPIRequests runs 64 concurrent callers each way and matches every
// reply to its request.
func TestAPIRequests(t *testing.T) {
	const callers, each = 64, 50
	handled := make(chan struct{}, callers*each)
	c := startAPI(t, Options{
		Workers: 2,
		HandleRequest: func(ctx context.Context, from WorkerRef, req *ipc.Message) (any, error) {
			var v apiMsg
			if err := req.Decode(&v); err != nil {
				return nil, err
			}
			handled <- struct{}{}
			return apiMsg{Op: "echo", Seq: v.Seq, PID: from.PID}, nil
		},
	})
	pids := c.pids()
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	for i := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			slot := i % 2
			for j := range each {
				seq := i*1000 + j
				r, err := c.m.Request(t.Context(), slot, apiMsg{Op: "echo", Seq: seq})
				if err != nil {
					errs <- fmt.Errorf("request %d to worker %d: %w", seq, slot, err)
					return
				}
				var v apiMsg
				if err := r.Decode(&v); err != nil {
					errs <- err
					return
				}
				if v.Seq != seq || v.PID != pids[slot] {
					errs <- fmt.Errorf("request %d to worker %d (pid %d): reply seq %d from pid %d", seq, slot, pids[slot], v.Seq, v.PID)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	_, err := c.m.Request(t.Context(), 0, apiMsg{Op: "fail"})
	var re *ipc.RemoteError
	if !errors.As(err, &re) || re.Code != "nope" {
		t.Errorf("Request(fail) = %v, want a remote error with code nope", err)
	}
	if _, err := c.m.Request(t.Context(), 7, apiMsg{Op: "echo"}); !errors.Is(err, ErrNoWorker) {
		t.Errorf("Request to slot 7 = %v, want ErrNoWorker", err)
	}

	if err := c.m.Send(1, apiMsg{Op: "calls", N: callers, Seq: each}); err != nil {
		t.Fatal(err)
	}
	if r := c.msg("calls-result"); !r.OK || r.N != callers*each {
		t.Errorf("worker's %d requests: ok %v (%s), want %d matched replies", r.N, r.OK, r.Text, callers*each)
	}
	if len(handled) != callers*each {
		t.Errorf("HandleRequest ran %d times, want %d", len(handled), callers*each)
	}
}

// TestAPIRequestUnhandled: without HandleRequest a worker's request is
// answered "unsupported", not left hanging.
func TestAPIRequestUnhandled(t *testing.T) {
	c := startAPI(t, Options{Workers: 1})
	if err := c.m.Send(0, apiMsg{Op: "calls", N: 1, Seq: 1}); err != nil {
		t.Fatal(err)
	}
	r := c.msg("calls-result")
	if r.OK || !containsAll(r.Text, ipc.CodeUnsupported) {
		t.Errorf("worker's request without HandleRequest: ok %v, %q; want an %s error", r.OK, r.Text, ipc.CodeUnsupported)
	}
}

func TestAPIBroadcast(t *testing.T) {
	c := startAPI(t, Options{Workers: 3})
	want := c.pids()
	sent, err := c.m.Broadcast(apiMsg{Op: "ping"})
	if err != nil || len(sent) != 3 {
		t.Fatalf("Broadcast = %v, %v; want 3 workers", sent, err)
	}
	got := map[int]bool{}
	for range 3 {
		got[c.msg("pong").PID] = true
	}
	for slot, pid := range want {
		if !got[pid] {
			t.Errorf("worker %d (pid %d) did not answer the broadcast; answers from %v", slot, pid, got)
		}
	}
}

// TestAPIRequestToDyingWorker: a worker that exits with a request
// outstanding answers it with an error, not a hang.
func TestAPIRequestToDyingWorker(t *testing.T) {
	c := startAPI(t, Options{Workers: 1})
	_, err := c.m.Request(t.Context(), 0, apiMsg{Op: "die"})
	var re *ipc.RemoteError
	if !errors.Is(err, ErrWorkerGone) || !errors.As(err, &re) || re.Code != ipc.CodeGone {
		t.Fatalf("Request to a dying worker = %v, want ErrWorkerGone and code %s", err, ipc.CodeGone)
	}
	e := c.event("exit", func(e Event) bool { return e.Kind == EventExit })
	if e.ExitCode != 3 || e.ExitedAfterDisconnect {
		t.Errorf("exit event %+v, want code 3, not after a disconnect", e)
	}
}

// TestAPIEventsAndReload: fork → online → ready for every worker; Reload
// names every slot's old and new pid; the old workers exit after a
// disconnect, a kill -9 does not.
func TestAPIEventsAndReload(t *testing.T) {
	c := startAPI(t, Options{Workers: 2})
	// A subscriber that never reads must not stall anything.
	stuck := c.m.Subscribe(1)
	defer stuck.Close()

	seen := map[int][]EventKind{}
	for len(seen[0]) < 3 || len(seen[1]) < 3 {
		e := c.event("startup", func(Event) bool { return true })
		seen[e.Slot] = append(seen[e.Slot], e.Kind)
	}
	for slot, kinds := range seen {
		if want := []EventKind{EventFork, EventOnline, EventReady}; !slices.Equal(kinds, want) {
			t.Errorf("worker %d events %v, want %v", slot, kinds, want)
		}
	}
	before := c.pids()
	var res ReloadResult
	for round := range 3 {
		var err error
		res, err = c.m.Reload(t.Context())
		if err != nil {
			t.Fatalf("Reload %d = %v", round, err)
		}
		if len(res.Slots) != 2 {
			t.Fatalf("Reload %d: %d slots, want 2: %+v", round, len(res.Slots), res)
		}
		for _, s := range res.Slots {
			if s.OldPID == 0 || s.NewPID == 0 || s.OldPID == s.NewPID || s.Err != nil || s.ReadyAfter <= 0 {
				t.Errorf("Reload %d slot %+v: want distinct old and new pids, a readiness time, no error", round, s)
			}
		}
		if round == 0 {
			for _, s := range res.Slots {
				if before[s.Slot] != s.OldPID {
					t.Errorf("Reload slot %d old pid %d, want %d", s.Slot, s.OldPID, before[s.Slot])
				}
			}
		}
	}
	if stuck.Dropped() == 0 {
		t.Errorf("the subscriber with a buffer of 1 dropped nothing over 3 reloads")
	}
	// The last reload's old workers exit after their drain.
	old := map[int]bool{}
	for _, s := range res.Slots {
		old[s.OldPID] = true
	}
	for len(old) > 0 {
		e := c.event("exit of a replaced worker", func(e Event) bool { return e.Kind == EventExit && old[e.PID] })
		delete(old, e.PID)
		if !e.ExitedAfterDisconnect || e.Reason != "replaced by reload" {
			t.Errorf("replaced worker's exit %+v, want exitedAfterDisconnect and the reason", e)
		}
	}
	after := c.pids()
	for _, s := range res.Slots {
		if after[s.Slot] != s.NewPID {
			t.Errorf("Workers() slot %d pid %d, Reload said %d", s.Slot, after[s.Slot], s.NewPID)
		}
	}

	victim := after[1]
	if err := c.m.Signal(1, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	e := c.event("kill -9 exit", func(e Event) bool { return e.Kind == EventExit && e.PID == victim })
	if e.ExitedAfterDisconnect || e.Signal != syscall.SIGKILL {
		t.Errorf("killed worker's exit %+v, want SIGKILL and not exitedAfterDisconnect", e)
	}
	// Its slot restarts: fork, online, ready again.
	for _, k := range []EventKind{EventFork, EventOnline, EventReady} {
		c.event(k.String()+" of the restarted slot", func(e Event) bool { return e.Kind == k && e.Slot == 1 })
	}
	ws := c.m.Workers()
	for _, w := range ws {
		if w.Slot == 1 && (w.Restarts != 1 || w.LastExit != "killed by signal SIGKILL") {
			t.Errorf("Workers() slot 1 = %+v, want one restart after SIGKILL", w)
		}
	}
	if err := c.m.Signal(9, syscall.SIGTERM); !errors.Is(err, ErrNoWorker) {
		t.Errorf("Signal(9) = %v, want ErrNoWorker", err)
	}
	if err := c.m.Signal(0, 0); err == nil {
		t.Error("Signal(0, 0) = nil, want an error")
	}
}

// TestAPIReloadInProgress: a second Reload while one runs says so.
func TestAPIReloadInProgress(t *testing.T) {
	c := startAPI(t, Options{Workers: 1, ReadyTimeout: -1}, envAPINeverReadyFrom+"=2")
	done := make(chan error, 1)
	go func() {
		_, err := c.m.Reload(t.Context())
		done <- err
	}()
	c.event("fork of the replacement", func(e Event) bool { return e.Kind == EventFork && e.Generation == 2 })
	if _, err := c.m.Reload(t.Context()); !errors.Is(err, ErrReloadInProgress) {
		t.Errorf("second Reload = %v, want ErrReloadInProgress", err)
	}
	// The stop ends the reload that never finishes.
	stop, cancel := context.WithTimeout(t.Context(), failDeadline(t))
	defer cancel()
	if err := c.m.Stop(stop); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, ErrStopping) {
		t.Errorf("Reload cut short by Stop = %v, want ErrStopping", err)
	}
}

// TestAPIReloadAbort: a replacement that never becomes ready aborts the
// reload with an error naming its slot; the old workers still serve.
func TestAPIReloadAbort(t *testing.T) {
	c := startAPI(t, Options{Workers: 2, ReadyTimeout: 5 * time.Second}, envAPINeverReadyFrom+"=2")
	before := c.pids()
	res, err := c.m.Reload(t.Context())
	var re *ReloadError
	if !errors.As(err, &re) || re.Slot != 0 || re.PID == 0 {
		t.Fatalf("Reload = %v, want a *ReloadError for worker 0", err)
	}
	if len(res.Slots) != 1 || res.Slots[0].Slot != 0 || res.Slots[0].OldPID != before[0] || !errors.Is(res.Slots[0].Err, err) {
		t.Errorf("aborted reload result %+v, want slot 0 (old pid %d) with the error", res, before[0])
	}
	e := c.event("reload event", func(e Event) bool { return e.Kind == EventReload })
	if !errors.As(e.Err, &re) {
		t.Errorf("reload event error %v, want the ReloadError", e.Err)
	}
	for slot, pid := range before {
		r, err := c.m.Request(t.Context(), slot, apiMsg{Op: "echo", Seq: slot})
		var v apiMsg
		if err == nil {
			err = r.Decode(&v)
		}
		if err != nil || v.PID != pid {
			t.Errorf("worker %d after the aborted reload: pid %d, %v; want the old pid %d", slot, v.PID, err, pid)
		}
	}
	if got := c.pids(); !maps.Equal(got, before) {
		t.Errorf("workers after an aborted reload %v, want %v", got, before)
	}
}

// TestAPIStopExpired: Stop with a context that has already ended stops the
// cluster at once.
func TestAPIStopExpired(t *testing.T) {
	c := startAPI(t, Options{Workers: 2})
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := c.m.Stop(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Stop(canceled) = %v, want context.Canceled after stopping", err)
	}
	select {
	case <-c.m.Done():
	default:
		t.Fatal("Stop returned before Run")
	}
	for range 2 {
		e := c.event("exit", func(e Event) bool { return e.Kind == EventExit })
		if !e.ExitedAfterDisconnect {
			t.Errorf("exit %+v, want a deliberate stop", e)
		}
	}
	if err := c.m.Stop(t.Context()); err != nil {
		t.Errorf("second Stop = %v, want nil", err)
	}
}

// TestAPIScale scales up and down through the API.
func TestAPIScale(t *testing.T) {
	c := startAPI(t, Options{Workers: 1})
	if err := c.m.Scale(t.Context(), 3); err != nil {
		t.Fatal(err)
	}
	ready := map[int]bool{}
	for len(ready) < 2 {
		e := c.event("ready of a new slot", func(e Event) bool { return e.Kind == EventReady && e.Slot > 0 })
		ready[e.Slot] = true
	}
	if !ready[1] || !ready[2] {
		t.Errorf("new slots ready: %v, want 1 and 2", ready)
	}
	if err := c.m.Scale(t.Context(), 1); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		e := c.event("exit of a removed slot", func(e Event) bool { return e.Kind == EventExit })
		if e.Slot == 0 || !e.ExitedAfterDisconnect || e.Reason != "scaled down" {
			t.Errorf("exit %+v, want a removed slot, scaled down", e)
		}
	}
	if err := c.m.Scale(t.Context(), 0); err == nil {
		t.Error("Scale(0) = nil, want an error")
	}
}

// TestAPIStatsAndHeartbeats: the latest stats and heartbeat time of each
// worker are in Workers().
func TestAPIStatsAndHeartbeats(t *testing.T) {
	c := startAPI(t, Options{Workers: 1, HeartbeatInterval: 10 * time.Millisecond, HeartbeatTimeout: time.Minute})
	for i := range 5 {
		if err := c.m.Send(0, apiMsg{Op: "seq", Seq: i}); err != nil {
			t.Fatal(err)
		}
	}
	var w WorkerInfo
	if !eventually(t, func() bool {
		ws := c.m.Workers()
		if len(ws) == 1 {
			w = ws[0]
		}
		return w.Stats["received"] == 5 && !w.LastHeartbeat.IsZero()
	}) {
		t.Fatalf("Workers() = %+v, want received=5 and a heartbeat", w)
	}
	if !w.Online || w.State != WorkerReady || w.Ready.IsZero() || w.Started.After(w.Ready) {
		t.Errorf("Workers() = %+v, want an online ready worker", w)
	}
}

// TestAPIRuntimeListen: workers that ask for an address the master does
// not have get one socket, the same for all (one inode), held by the
// master across a reload.
func TestAPIRuntimeListen(t *testing.T) {
	c := startAPI(t, Options{Workers: 2}, envAPIListen+"=tcp://127.0.0.1:0")
	inode := func() (string, string) {
		t.Helper()
		var ino, addr string
		for slot, pid := range c.pids() {
			c.m.Send(slot, apiMsg{Op: "listen", Addr: "tcp://127.0.0.1:0"})
			r := c.msg("listened")
			if r.Text != "" {
				t.Fatalf("worker %d listen: %s", slot, r.Text)
			}
			got, err := procSocketLink(r.PID, r.FD)
			if err != nil {
				t.Fatal(err)
			}
			if r.PID != pid {
				t.Fatalf("listened from pid %d, want %d", r.PID, pid)
			}
			if ino != "" && got != ino {
				t.Errorf("worker %d has %s, another worker %s: want one socket", slot, got, ino)
			}
			ino, addr = got, r.Addr
		}
		return ino, addr
	}
	ino, addr := inode()
	for slot := range 2 {
		if e := c.event("listening", func(e Event) bool { return e.Kind == EventListening && e.Slot == slot }); e.Addr != addr {
			t.Errorf("listening event of worker %d: %+v, want addr %s", slot, e, addr)
		}
	}
	if !holdsInode(os.Getpid(), ino) {
		t.Errorf("the master does not hold the listener %s", ino)
	}
	pidsServing(t, addr, 2)
	if _, err := c.m.Reload(t.Context()); err != nil {
		t.Fatal(err)
	}
	ino2, addr2 := inode()
	if ino2 != ino || addr2 != addr {
		t.Errorf("after a reload the workers have %s at %s, before %s at %s", ino2, addr2, ino, addr)
	}
	pidsServing(t, addr, 2)
	if err := c.m.Stop(t.Context()); err != nil {
		t.Fatal(err)
	}
	if holdsInode(os.Getpid(), ino) {
		t.Errorf("the master still holds the run-time listener %s after Run returned", ino)
	}
}

// TestAPIListenRefused: a bad address, a forbidden one and one past the
// limit are refused with their codes; a worker that keeps asking past the
// limit is killed.
func TestAPIListenRefused(t *testing.T) {
	c := startAPI(t, Options{
		Workers: 1, MaxListeners: 1,
		AllowListen: func(spec sockshare.Spec) error {
			if spec.Network == "udp" {
				return errors.New("no udp here")
			}
			return nil
		},
	})
	listen := func(addr string) apiMsg {
		t.Helper()
		if err := c.m.Send(0, apiMsg{Op: "listen", Addr: addr}); err != nil {
			t.Fatal(err)
		}
		return c.msg("listened")
	}
	for _, tt := range []struct{ addr, code string }{
		{"tcp://127.0.0.1:notaport", ipc.CodeBadRequest},
		{"udp://127.0.0.1:0", ipc.CodeForbidden},
		{"tcp://127.0.0.1:0", ""},
		{"tcp://127.0.0.1:0", ""}, // the same one again: no new socket
		{"tcp://[::1]:0", ipc.CodeLimit},
	} {
		if r := listen(tt.addr); r.Addr != tt.code && (tt.code != "" || r.Text != "") {
			t.Errorf("listen %s = code %q (%s), want %q", tt.addr, r.Addr, r.Text, tt.code)
		}
	}
	pid := c.pids()[0]
	for range maxLimitRefusals {
		c.m.Send(0, apiMsg{Op: "listen", Addr: "tcp://127.0.0.2:0"})
	}
	e := c.event("exit of the greedy worker", func(e Event) bool { return e.Kind == EventExit && e.PID == pid })
	if e.ExitedAfterDisconnect || !containsAll(e.Reason, "ipc protocol error") {
		t.Errorf("exit %+v, want a kill for a protocol error", e)
	}
}

// TestAPIEmbeddedExecCommand: a program embedding the master can still
// wait for its own children: the default does not reap them.
func TestAPIEmbeddedExecCommand(t *testing.T) {
	c := startAPI(t, Options{Workers: 2})
	for i := range 5 {
		if err := exec.Command("true").Run(); err != nil {
			t.Fatalf("exec true %d beside a master: %v", i, err)
		}
		err := exec.Command("false").Run()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 {
			t.Fatalf("exec false %d beside a master = %v, want exit status 1", i, err)
		}
	}
	// A worker's crash is still seen by the master meanwhile.
	victim := c.pids()[0]
	c.m.Signal(0, syscall.SIGKILL)
	c.event("exit", func(e Event) bool { return e.Kind == EventExit && e.PID == victim })
	if err := exec.Command("true").Run(); err != nil {
		t.Fatalf("exec true after a worker crash: %v", err)
	}
}

func containsAll(s string, subs ...string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// TestAPIListenStatic: a listen request for an address of Options.Listen,
// as given, as bound or by name, gets that listener (the one the worker
// inherited at fd 3), not a new socket.
func TestAPIListenStatic(t *testing.T) {
	spec, err := sockshare.ParseSpec("web=tcp://127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := startAPI(t, Options{Workers: 1, Listen: []sockshare.Spec{spec}, MaxListeners: -1})
	pid := c.pids()[0]
	inherited, err := procSocketLink(pid, 3)
	if err != nil {
		t.Fatal(err)
	}
	for _, addr := range []string{"tcp://127.0.0.1:0", "tcp://" + c.m.Addrs()[0].String(), "web=tcp://127.0.0.1:1"} {
		c.m.Send(0, apiMsg{Op: "listen", Addr: addr})
		r := c.msg("listened")
		if r.Text != "" {
			t.Errorf("listen %s: %s", addr, r.Text)
			continue
		}
		if got, err := procSocketLink(pid, r.FD); err != nil || got != inherited {
			t.Errorf("listen %s gave %s (%v), want the inherited listener %s", addr, got, err, inherited)
		}
	}
}

// TestAPIRuntimeListenReusePort: under BalanceReusePort a run-time address
// gets one socket per slot, all on the port the first one chose, and a
// slot's replacement gets its slot's socket again.
func TestAPIRuntimeListenReusePort(t *testing.T) {
	c := startAPI(t, Options{Workers: 2, Balance: BalanceReusePort}, envAPIListen+"=tcp://127.0.0.1:0")
	sockets := func() map[int]string {
		t.Helper()
		inodes := map[int]string{}
		addr := ""
		for slot, pid := range c.pids() {
			c.m.Send(slot, apiMsg{Op: "listen", Addr: "tcp://127.0.0.1:0"})
			r := c.msg("listened")
			if r.Text != "" || r.PID != pid {
				t.Fatalf("worker %d listen: %q from pid %d", slot, r.Text, r.PID)
			}
			ino, err := procSocketLink(pid, r.FD)
			if err != nil {
				t.Fatal(err)
			}
			inodes[slot] = ino
			if addr != "" && r.Addr != addr {
				t.Errorf("worker %d listens on %s, another on %s: want one port", slot, r.Addr, addr)
			}
			addr = r.Addr
		}
		if inodes[0] == inodes[1] {
			t.Errorf("both slots have socket %s, want one each", inodes[0])
		}
		pidsServing(t, addr, 2)
		return inodes
	}
	before := sockets()
	if _, err := c.m.Reload(t.Context()); err != nil {
		t.Fatal(err)
	}
	if after := sockets(); !maps.Equal(before, after) {
		t.Errorf("sockets per slot after a reload %v, before %v", after, before)
	}
}
