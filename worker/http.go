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

// DefaultIdleGrace is how long, by default, an HTTP drain leaves open a
// keep-alive connection that has no request, counted from the drain's start
// or from the connection's last response, whichever is later.
//
// A client that reuses its connection at once (a load generator such as
// wrk, or a Go client in a loop) sends its next request within
// microseconds of the response, and that request is answered with
// "Connection: close"; the grace covers such a client on a loaded machine,
// where it may not run for a while. A connection left idle longer sits in a
// client's pool: closing it then can still meet a request sent at that
// instant, which is the race every HTTP/1.1 server has when it closes an
// idle connection, so the drain also checks, just before it closes one,
// that no byte of a request has reached it (on Linux, for TCP).
const DefaultIdleGrace = time.Second

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

	// IdleGrace is how long the drain leaves open a connection that has no
	// request, from the drain's start or its last response, whichever is
	// later; see DefaultIdleGrace. Zero: DefaultIdleGrace.
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
// closes the listeners first and answers every request of the connections
// already accepted with "Connection: close". A connection without a request
// stays open until the client sends one (answered, then closed), closes it,
// or leaves it idle for [HTTPServer.IdleGrace]; only then does the drain
// close it. Once no connection is left, or at the drain deadline, it calls
// [http.Server.Shutdown] with what is left of the deadline.
//
// Serve owns the listeners and closes them. It returns nil after a complete
// drain; an error wrapping [context.DeadlineExceeded] when the deadline cut
// requests short (the remaining connections are closed); or the error of a
// listener that failed while serving. Once it returns, the
// [ConnectionsMetric] gauge counts none of its connections, even one whose
// handler outlived the deadline.
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
	tr.open, _ = self().metrics.gauge(ConnectionsMetric)
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
		tr.set(c, st)
		if prevState != nil {
			prevState(c, st)
		}
	}

	// Whatever the way out, Serve counts no connection once it returns:
	// the metric is settled for the master to read.
	defer tr.uncountAll()

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

	// 2. Serve what was accepted until every connection is gone: closed
	// after a response with "Connection: close", by its client, or by the
	// drain once it has had no request for the grace.
	tr.drain(start, grace, deadline)

	// 3. Shut down within the deadline: nothing is left but connections
	// the deadline cut short.
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
// its ConnState hook, and closes the quiet ones during a drain. The hook runs
// twice per request (active, then idle), so it takes no lock shared by all
// connections: each connection has its own entry, found in a sync.Map.
type connTracker struct {
	draining atomic.Bool
	open     *Gauge // the connections metric: nil when not counted

	conns sync.Map // net.Conn -> *connEntry; each one counted in open

	changed chan struct{} // gets a token after a change while draining (capacity 1)
}

// connEntry is one connection's state. Its lock orders the drain's decision
// to close the connection against the server's report that it went active.
type connEntry struct {
	mu    sync.Mutex
	st    http.ConnState
	quiet time.Time // while draining: when it last became new or idle
	// sample is what the connection had received when the drain first saw
	// it quiet (sampled); a change since means a request is on its way.
	sample  uint64
	sampled bool
	closed  bool // closed by the drain
}

func newConnTracker() *connTracker {
	return &connTracker{changed: make(chan struct{}, 1)}
}

// isQuiet reports whether a connection in state st has no request: net/http
// has not read one since it accepted the connection or answered the last.
func isQuiet(st http.ConnState) bool {
	return st == http.StateNew || st == http.StateIdle
}

// set records that c is now in state st. net/http reports the states of one
// connection in order.
func (t *connTracker) set(c net.Conn, st http.ConnState) {
	draining := t.draining.Load()
	switch st {
	case http.StateNew:
		e := &connEntry{st: st}
		if draining {
			e.quiet = time.Now()
		}
		t.conns.Store(c, e)
		if t.open != nil {
			t.open.Add(1)
		}
	case http.StateClosed, http.StateHijacked:
		t.uncount(c)
	default:
		v, ok := t.conns.Load(c)
		if !ok {
			return
		}
		e := v.(*connEntry)
		e.mu.Lock()
		e.st = st
		e.sampled = false
		if draining && st == http.StateIdle {
			e.quiet = time.Now()
		}
		e.mu.Unlock()
	}
	// Only drain reads the tokens, and it runs once draining is set.
	if draining {
		select {
		case t.changed <- struct{}{}:
		default:
		}
	}
}

// uncount forgets c, once: net/http reporting it closed or uncountAll.
func (t *connTracker) uncount(c net.Conn) {
	if _, ok := t.conns.LoadAndDelete(c); ok && t.open != nil {
		t.open.Add(-1)
	}
}

// uncountAll forgets every connection, as Serve returns. What is left was
// closed by the deadline (srv.Close) but not yet reported closed: net/http
// reports that from each connection's goroutine, which may still run its
// handler.
func (t *connTracker) uncountAll() {
	t.conns.Range(func(k, _ any) bool {
		t.uncount(k.(net.Conn))
		return true
	})
}

// drain returns once no connection is left, or at deadline. It closes a
// connection that has been quiet for grace since start or since it became
// quiet, whichever is later, unless a request has begun to arrive on it.
func (t *connTracker) drain(start time.Time, grace time.Duration, deadline time.Time) {
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	for {
		now := time.Now()
		if !now.Before(deadline) {
			return
		}
		next := deadline
		open := 0
		t.conns.Range(func(k, v any) bool {
			open++
			if end, ok := v.(*connEntry).closeIfQuiet(k.(net.Conn), start, grace, now); ok && end.Before(next) {
				next = end
			}
			return true
		})
		if open == 0 {
			return
		}
		timer.Reset(time.Until(next))
		select {
		case <-t.changed:
		case <-timer.C:
		}
	}
}

// closeIfQuiet closes c if it has been quiet for grace and nothing has
// arrived on it since the drain last looked; otherwise it reports when to
// look again (ok false: when its state changes).
func (e *connEntry) closeIfQuiet(c net.Conn, start time.Time, grace time.Duration, now time.Time) (next time.Time, ok bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed || !isQuiet(e.st) {
		return time.Time{}, false
	}
	end := e.quiet
	if end.Before(start) {
		end = start
	}
	end = end.Add(grace)
	if e.sampled && now.Before(end) {
		return end, true
	}
	n, pending, known := received(c)
	if !e.sampled {
		e.sample, e.sampled = n, true
	}
	if now.Before(end) {
		return end, true
	}
	if known && (pending || n != e.sample) {
		// A request is arriving or being read: net/http reports it active
		// once it has the header. Look again then or after another grace.
		e.sample = n
		return now.Add(grace), true
	}
	// The error says only that the connection was already gone.
	c.Close()
	e.closed = true
	return time.Time{}, false
}
