package worker

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// httpTest runs an HTTPServer on a loopback listener in the background.
type httpTest struct {
	t       *testing.T
	addr    string
	cancel  context.CancelFunc // starts the drain
	drained chan struct{}      // closed once the listener is closed
	done    chan struct{}      // closed when Serve has returned
	err     error              // Serve's result, once done is closed
	newConn chan struct{}      // a token per accepted connection
}

func startHTTP(t *testing.T, h http.Handler, s HTTPServer) *httpTest {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ht := &httpTest{
		t:       t,
		addr:    ln.Addr().String(),
		drained: make(chan struct{}),
		done:    make(chan struct{}),
		newConn: make(chan struct{}, 100),
	}
	s.Server = &http.Server{
		Handler: h,
		ConnState: func(c net.Conn, st http.ConnState) {
			if st == http.StateNew {
				ht.newConn <- struct{}{}
			}
		},
	}
	s.drained = func() { close(ht.drained) }
	ctx, cancel := context.WithCancel(context.Background())
	ht.cancel = cancel
	go func() {
		ht.err = s.Serve(ctx, ln)
		close(ht.done)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-ht.done:
		case <-time.After(DefaultDrainTimeout):
			t.Error("Serve did not return")
		}
	})
	return ht
}

// wait returns Serve's result.
func (ht *httpTest) wait() error {
	<-ht.done
	return ht.err
}

// drain starts the drain and waits until the listener is closed.
func (ht *httpTest) drain() {
	ht.t.Helper()
	ht.cancel()
	<-ht.drained
}

// rawConn is a client connection that writes requests by hand.
type rawConn struct {
	net.Conn
	r *bufio.Reader
}

func (ht *httpTest) dial() *rawConn {
	ht.t.Helper()
	c, err := net.Dial("tcp", ht.addr)
	if err != nil {
		ht.t.Fatal(err)
	}
	ht.t.Cleanup(func() { c.Close() })
	<-ht.newConn // the server has accepted it
	return &rawConn{Conn: c, r: bufio.NewReader(c)}
}

func (c *rawConn) get(t *testing.T, path string) *http.Response {
	t.Helper()
	if _, err := io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: test\r\n\r\n"); err != nil {
		t.Fatalf("write request: %v", err)
	}
	resp, err := http.ReadResponse(c.r, nil)
	if err != nil {
		t.Fatalf("GET %s: read response: %v", path, err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: read body: %v", path, err)
	}
	resp.Body = io.NopCloser(strings.NewReader(string(body)))
	return resp
}

// expectEOF checks that the server closed the connection.
func (c *rawConn) expectEOF(t *testing.T) {
	t.Helper()
	if b, err := c.r.ReadByte(); err == nil {
		t.Errorf("read after the last response = %q, want EOF", b)
	}
}

var okHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	io.WriteString(w, "ok")
})

// The trap net/http's Shutdown falls into: a connection accepted before the
// drain whose request arrives after it must still be answered.
func TestServeHTTPAnswersConnectionAcceptedBeforeDrain(t *testing.T) {
	ht := startHTTP(t, okHandler, HTTPServer{})
	c := ht.dial()
	ht.drain()
	resp := c.get(t, "/")
	if resp.StatusCode != http.StatusOK || !resp.Close {
		t.Errorf("GET during drain = %d, Connection close %v; want 200 with Connection: close", resp.StatusCode, resp.Close)
	}
	c.expectEOF(t)
	if err := ht.wait(); err != nil {
		t.Errorf("Serve = %v, want nil after a complete drain", err)
	}
}

// TestShutdownAloneDropsRequest shows the net/http behaviour that ServeHTTP
// works around, so that the test above is known to test something.
func TestShutdownAloneDropsRequest(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan struct{}, 1)
	srv := &http.Server{Handler: okHandler, ConnState: func(c net.Conn, st http.ConnState) {
		// Only the first connection is awaited. The probes below may be
		// accepted too, before Shutdown closes the listener (a loaded
		// machine runs Shutdown late): a blocking send would stall Serve.
		if st == http.StateNew {
			select {
			case accepted <- struct{}{}:
			default:
			}
		}
	}}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	<-accepted
	shut := make(chan error, 1)
	go func() { shut <- srv.Shutdown(context.Background()) }()
	// Shutdown closes the listener first; once Dial is refused, it runs.
	for {
		d, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			break
		}
		d.Close()
	}
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: test\r\n\r\n")
	if _, err := http.ReadResponse(bufio.NewReader(c), nil); err == nil {
		t.Error("net/http answered a request read after Shutdown began: ServeHTTP's work-around is no longer needed, and this test should go")
	}
	<-shut
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		t.Errorf("Serve after Shutdown = %v, want http.ErrServerClosed", err)
	}
}

// A keep-alive connection that is idle when the drain starts stays open
// while the client may still reuse it: its next request is answered, with
// "Connection: close", at once or however late it comes within the grace.
func TestServeHTTPKeepAliveGetsConnectionClose(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts HTTPServer
	}{
		{"defaults", HTTPServer{}},
		{"late request within an hour's grace", HTTPServer{IdleGrace: time.Hour, DrainTimeout: 2 * time.Hour}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ht := startHTTP(t, okHandler, tc.opts)
			c := ht.dial()
			if resp := c.get(t, "/"); resp.Close {
				t.Fatalf("GET before drain has Connection: close")
			}
			ht.drain()
			resp := c.get(t, "/")
			if resp.StatusCode != http.StatusOK || !resp.Close {
				t.Errorf("keep-alive GET during drain = %d, close %v; want 200 with Connection: close", resp.StatusCode, resp.Close)
			}
			c.expectEOF(t)
			if err := ht.wait(); err != nil {
				t.Errorf("Serve = %v, want nil", err)
			}
		})
	}
}

func TestServeHTTPClosesIdleAfterGrace(t *testing.T) {
	ht := startHTTP(t, okHandler, HTTPServer{IdleGrace: 10 * time.Millisecond})
	c := ht.dial()
	c.get(t, "/")
	ht.drain()
	c.expectEOF(t) // the idle connection is closed by the drain
	if err := ht.wait(); err != nil {
		t.Errorf("Serve = %v, want nil", err)
	}
}

func TestServeHTTPFinishesRequestInProgress(t *testing.T) {
	started := make(chan struct{})
	release := make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		<-release
		io.WriteString(w, "slow")
	})
	ht := startHTTP(t, h, HTTPServer{})
	c := ht.dial()
	got := make(chan *http.Response, 1)
	go func() {
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: test\r\n\r\n")
		resp, err := http.ReadResponse(c.r, nil)
		if err != nil {
			t.Errorf("slow GET: %v", err)
		}
		got <- resp
	}()
	<-started
	ht.drain()
	select {
	case <-ht.done:
		t.Fatalf("Serve returned %v with a request in progress", ht.err)
	default:
	}
	close(release)
	if resp := <-got; resp == nil || resp.StatusCode != http.StatusOK {
		t.Errorf("slow GET across the drain = %v, want 200", resp)
	}
	if err := ht.wait(); err != nil {
		t.Errorf("Serve = %v, want nil", err)
	}
}

func TestServeHTTPDeadline(t *testing.T) {
	started := make(chan struct{})
	release := make(chan struct{})
	defer close(release)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		<-release
	})
	before := Stats()[ConnectionsMetric]
	ht := startHTTP(t, h, HTTPServer{DrainTimeout: 50 * time.Millisecond})
	c := ht.dial()
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: test\r\n\r\n")
	<-started
	ht.cancel()
	err := ht.wait()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Serve with a request past the deadline = %v, want context.DeadlineExceeded", err)
	}
	// The deadline closed the connection; its handler still runs, but
	// Serve no longer counts it once it has returned.
	if got := Stats()[ConnectionsMetric] - before; got != 0 {
		t.Errorf("%s grew by %d once Serve returned past the deadline, want 0", ConnectionsMetric, got)
	}
}

func TestServeHTTPArguments(t *testing.T) {
	if err := ServeHTTP(context.Background(), &http.Server{}); err == nil {
		t.Error("ServeHTTP without listeners = nil, want an error")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := (&HTTPServer{}).Serve(context.Background(), ln); err == nil {
		t.Error("Serve without a server = nil, want an error")
	}
	if _, err := net.Dial("tcp", ln.Addr().String()); err == nil {
		t.Error("Serve without a server left its listener open")
	}
}

// A client that closes its idle connection ends the drain: nothing waits
// for the grace.
func TestServeHTTPClientCloseEndsDrain(t *testing.T) {
	ht := startHTTP(t, okHandler, HTTPServer{IdleGrace: time.Hour, DrainTimeout: 2 * time.Hour})
	c := ht.dial()
	c.get(t, "/")
	ht.drain()
	c.Close()
	if err := ht.wait(); err != nil {
		t.Errorf("Serve = %v, want nil", err)
	}
}

// TestServeHTTPCountsRequestsAndConnections: the metrics the master reads
// (--max-requests, the open connections named at a drain deadline).
func TestServeHTTPCountsRequestsAndConnections(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	before := Stats()[RequestsMetric]
	ctx, cancel := context.WithCancel(t.Context())
	served := make(chan error, 1)
	go func() {
		served <- ServeHTTP(ctx, &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "ok")
		})}, ln)
	}()
	// A connection held open, then three requests on connections of their own.
	held, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	for range 3 {
		resp, err := client.Get("http://" + ln.Addr().String() + "/")
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	if got := Stats()[RequestsMetric] - before; got != 3 {
		t.Errorf("%s grew by %d, want 3", RequestsMetric, got)
	}
	// The held connection is open (the server has seen it: StateNew is set
	// before the next accept, and three were accepted after it).
	if got := Stats()[ConnectionsMetric]; got < 1 {
		t.Errorf("%s = %d with a connection open, want at least 1", ConnectionsMetric, got)
	}
	held.Close()
	cancel()
	if err := <-served; err != nil {
		t.Errorf("ServeHTTP = %v, want nil", err)
	}
	if got := Stats()[ConnectionsMetric]; got != 0 {
		t.Errorf("%s = %d after the drain, want 0", ConnectionsMetric, got)
	}
}
