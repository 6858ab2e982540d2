package worker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultDrainTimeout bounds an HTTP drain when neither [HTTPServer] nor the
// master's drain message gives a deadline. clusterd's --kill-timeout
// normally ends a worker before it.
const DefaultDrainTimeout = 30 * time.Second

// DefaultIdleGrace is how long, by default, an HTTP drain leaves open the
// keep-alive connections that are idle when it starts, so that a request a
// client is sending on one at that moment is still answered.
const DefaultIdleGrace = 250 * time.Millisecond

// HTTPServer serves an [http.Server] on listeners and drains it without
// losing a request; see "Draining an HTTP server" in the package doc.
// [ServeHTTP] is HTTPServer with default settings.
type HTTPServer struct {
	// Server is the server to run. Serve wraps its Handler (nil:
	// http.DefaultServeMux) and ConnState hook with its own, which call the
	// originals; they must not be changed while it serves. As with
	// Shutdown, a Server cannot be served again afterwards.
	Server *http.Server

	// DrainTimeout bounds the drain, from its start to the end of Shutdown.
	// Zero: the deadline of the master's drain message when it sent one,
	// else DefaultDrainTimeout.
	DrainTimeout time.Duration

	// IdleGrace is how long the drain leaves idle keep-alive connections
	// open before closing them. Zero: DefaultIdleGrace.
	IdleGrace time.Duration

	// drained, when set (by tests), is called once the listeners are
	// closed and every accepted connection is tracked.
	drained func()
}

// Metrics that [HTTPServer.Serve] keeps and the master reads from the
// heartbeat's stats.
const (
	// RequestsMetric counts the requests served (clusterd's --max-requests
	// retires a worker after that many).
	RequestsMetric = "http_requests"
	// ConnectionsMetric is the gauge of open connections (clusterd names it
	// when a worker's drain deadline passes).
	ConnectionsMetric = "http_connections"
)

// ServeHTTP serves srv on lns until ctx is done or the master asks this
// worker to drain ([Drain]), then drains it: see [HTTPServer.Serve].
func ServeHTTP(ctx context.Context, srv *http.Server, lns ...net.Listener) error {
	s := HTTPServer{Server: srv}
	return s.Serve(ctx, lns...)
}

// Serve serves s.Server on every listener in lns and blocks until it has
// drained. The drain starts when ctx is done or when [Drain] is closed
// (the master's drain message, or a signal given to [DrainOnSignal]); it
// closes the listeners first, answers every request of the connections
// already accepted with "Connection: close", waits until none has a request
// pending or in progress and idle ones have had [HTTPServer.IdleGrace], and
// then calls [http.Server.Shutdown] with what is left of the drain deadline.
//
// Serve owns the listeners and closes them. It returns nil after a complete
// drain; an error wrapping [context.DeadlineExceeded] when the deadline cut
// requests short (the remaining connections are closed); or the error of a
// listener that failed while serving.
func (s *HTTPServer) Serve(ctx context.Context, lns ...net.Listener) error {
	if s.Server == nil {
		closeAll(lns)
		return errors.New("worker: serve http: nil server")
	}
	if len(lns) == 0 {
		return errors.New("worker: serve http: no listeners")
	}
	srv := s.Server
	tr := newConnTracker()
	next := srv.Handler
	if next == nil {
		next = http.DefaultServeMux
	}
	// The master reads these: "requests" retires a worker after
	// --max-requests, "connections" is named when a drain deadline passes.
	// A program that made either name a metric of the other kind keeps it
	// as its own (nil here).
	requests, _ := self().metrics.counter(RequestsMetric)
	open, _ := self().metrics.gauge(ConnectionsMetric)
	srv.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if requests != nil {
			requests.Inc()
		}
		if tr.draining.Load() {
			// Ends this keep-alive connection after the response: the
			// client sends its next request to another worker.
			w.Header().Set("Connection", "close")
		}
		next.ServeHTTP(w, r)
	})
	prevState := srv.ConnState
	srv.ConnState = func(c net.Conn, st http.ConnState) {
		if open != nil {
			switch st {
			case http.StateNew:
				open.Add(1)
			case http.StateClosed, http.StateHijacked:
				open.Add(-1)
			}
		}
		tr.set(c, st)
		if prevState != nil {
			prevState(c, st)
		}
	}

	serveErrs := make(chan error, len(lns))
	var serving sync.WaitGroup
	for _, ln := range lns {
		serving.Go(func() {
			serveErrs <- srv.Serve(ln)
		})
	}

	var failed error
	select {
	case <-ctx.Done():
	case <-Drain():
	case err := <-serveErrs:
		// A listener failed before any drain was asked for.
		failed = fmt.Errorf("worker: serve http: %w", err)
	}
	start := time.Now()

	// 1. No new connections: the kernel hands them to the other workers.
	tr.draining.Store(true)
	closeAll(lns)
	// Serve returns only after registering the connection it accepted
	// last (StateNew is set before the next Accept), so from here on the
	// tracker sees every connection this server will ever have.
	serving.Wait()
	if s.drained != nil {
		s.drained()
	}

	timeout := s.DrainTimeout
	if timeout <= 0 {
		if d, ok := DrainDeadline(); ok {
			timeout = time.Until(d)
		} else {
			timeout = DefaultDrainTimeout
		}
	}
	grace := s.IdleGrace
	if grace <= 0 {
		grace = DefaultIdleGrace
	}
	deadline := start.Add(timeout)

	// 2. Serve what was accepted until nothing is pending or in progress.
	tr.waitQuiet(start.Add(grace), deadline)

	// 3. Close idle connections, then shut down within the deadline.
	srv.SetKeepAlivesEnabled(false)
	sctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		if cerr := srv.Close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
		return errors.Join(failed, fmt.Errorf("worker: drain http server: %w", err))
	}
	return failed
}

func closeAll(lns []net.Listener) {
	for _, ln := range lns {
		// A listener that is already closed (its Serve failed) reports
		// an error here that says nothing new.
		ln.Close()
	}
}

// connTracker follows the state of every connection of one server, through
// its ConnState hook. The hook runs twice per request (active, then idle), so
// it takes no lock shared by all connections: sync.Map swaps the state of a
// known connection without one, and the count of busy ones is atomic.
type connTracker struct {
	draining atomic.Bool

	state sync.Map     // net.Conn -> http.ConnState
	busy  atomic.Int64 // connections in StateNew or StateActive

	changed chan struct{} // gets a token after a change while draining (capacity 1)
}

func newConnTracker() *connTracker {
	return &connTracker{changed: make(chan struct{}, 1)}
}

func isBusy(st http.ConnState) bool {
	return st == http.StateNew || st == http.StateActive
}

// set records that c is now in state st. net/http reports the states of one
// connection in order, so the swap returns the state this one replaces.
func (t *connTracker) set(c net.Conn, st http.ConnState) {
	var old any
	var known bool
	if st == http.StateClosed || st == http.StateHijacked {
		old, known = t.state.LoadAndDelete(c)
	} else {
		old, known = t.state.Swap(c, st)
		if isBusy(st) {
			t.busy.Add(1)
		}
	}
	if known && isBusy(old.(http.ConnState)) {
		t.busy.Add(-1)
	}
	// Only waitQuiet reads the tokens, and it runs once draining is set.
	if t.draining.Load() {
		select {
		case t.changed <- struct{}{}:
		default:
		}
	}
}

// waitQuiet returns once no connection is new or active and graceEnd has
// passed, or at deadline.
func (t *connTracker) waitQuiet(graceEnd, deadline time.Time) {
	graceTimer := time.NewTimer(time.Until(graceEnd))
	defer graceTimer.Stop()
	deadlineTimer := time.NewTimer(time.Until(deadline))
	defer deadlineTimer.Stop()
	graceOver := false
	for {
		if graceOver && t.busy.Load() == 0 {
			return
		}
		select {
		case <-t.changed:
		case <-graceTimer.C:
			graceOver = true
		case <-deadlineTimer.C:
			return
		}
	}
}
