package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// failClass is what went wrong with one request of the load client.
type failClass int

const (
	failRefused   failClass = iota // connect(2) refused: nobody listening
	failReset                      // ECONNRESET or EPIPE on write or read
	failEOFFresh                   // EOF before any response byte, on a new connection
	failEOFReused                  // EOF before any response byte, on a reused keep-alive connection
	failTimeout                    // no complete answer within the request timeout
	failHung                       // still open when the run ended
	failOther                      // a bad status, a malformed answer, EOF inside a response
	numFailClasses
)

var failNames = [numFailClasses]string{"refused", "reset", "eof-fresh", "eof-reused", "timeout", "hung", "other"}

func (f failClass) String() string { return failNames[f] }

// failCounts counts failed requests by class.
type failCounts [numFailClasses]int

func (f failCounts) total() int {
	n := 0
	for _, v := range f {
		n += v
	}
	return n
}

func (f *failCounts) add(o failCounts) {
	for i, v := range o {
		f[i] += v
	}
}

// String lists the classes that occurred: "reset 3, eof-reused 12", or "0".
func (f failCounts) String() string {
	var parts []string
	for i, v := range f {
		if v > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", failClass(i), v))
		}
	}
	if len(parts) == 0 {
		return "0"
	}
	return strings.Join(parts, ", ")
}

// sample is one completed request: when it ended, counted from the start
// of the load, and how long it took.
type sample struct {
	At, Latency time.Duration
}

// loadClient sends GET / over conns connections as fast as answers come,
// one request at a time per connection, and never retries: every failure
// is counted once, in the class that describes it. Unlike wrk, which folds
// them into "read" and "connect" errors, and unlike Go's http.Client, which
// silently retries an idempotent request that failed on a reused
// connection, it tells apart the ways a supervisor can lose a request.
type loadClient struct {
	addr      string
	keepAlive bool
	timeout   time.Duration
	record    bool // keep a sample of every request

	start time.Time
	stop  chan struct{}
	wg    sync.WaitGroup
	ok    atomic.Int64

	mu      sync.Mutex
	fails   failCounts
	samples []sample
	first   []string // the first few errors, for the log
	open    map[*clientConn]bool
	failLog []failRecord // every failure, for attribution (soak)
}

// failRecord is one failed request: its class, when it ended (from the
// start of the load), and the worker that last answered on its
// connection (0 for a connection that had no answer yet).
type failRecord struct {
	Class failClass
	At    time.Duration
	PID   int
}

// clientConn is one connection's state, for the end of the run: a request
// still open then is hung.
type clientConn struct {
	mu        sync.Mutex
	conn      net.Conn
	inRequest bool
	hung      bool // counted hung by halt; its late error is not counted again
	pid       int  // the worker that last answered on this connection
}

func startLoadClient(addr string, conns int, keepAlive, record bool) *loadClient {
	l := &loadClient{
		addr: addr, keepAlive: keepAlive, timeout: 5 * time.Second, record: record,
		start: time.Now(), stop: make(chan struct{}), open: map[*clientConn]bool{},
	}
	for range conns {
		cc := &clientConn{}
		l.open[cc] = true
		l.wg.Go(func() { l.loop(cc) })
	}
	return l
}

func (l *loadClient) loop(cc *clientConn) {
	var samples []sample
	defer func() {
		l.mu.Lock()
		l.samples = append(l.samples, samples...)
		delete(l.open, cc)
		l.mu.Unlock()
	}()
	var br *bufio.Reader
	var cr *countingReader
	reused := false
	req := "GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
	if !l.keepAlive {
		req = "GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
	}
	closeConn := func() {
		cc.mu.Lock()
		if cc.conn != nil {
			cc.conn.Close()
			cc.conn = nil
		}
		cc.mu.Unlock()
	}
	defer closeConn()
	for {
		select {
		case <-l.stop:
			return
		default:
		}
		t0 := time.Now()
		cc.mu.Lock()
		cc.inRequest = true
		conn := cc.conn
		cc.mu.Unlock()
		if conn == nil {
			c, err := net.DialTimeout("tcp", l.addr, l.timeout)
			if err != nil {
				l.failed(cc, classify(err, false, false), err)
				l.endRequest(cc)
				continue
			}
			cc.mu.Lock()
			cc.conn, conn = c, c
			cc.mu.Unlock()
			cr = &countingReader{r: c}
			br = bufio.NewReader(cr)
			reused = false
			cc.mu.Lock()
			cc.pid = 0
			cc.mu.Unlock()
		}
		cr.n = 0
		conn.SetDeadline(t0.Add(l.timeout))
		resp, pid, err := l.roundTrip(conn, br, req)
		if err != nil {
			l.failed(cc, classify(err, reused, cr.n > 0), err)
			closeConn()
			l.endRequest(cc)
			continue
		}
		l.ok.Add(1)
		cc.mu.Lock()
		cc.pid = pid
		cc.mu.Unlock()
		if l.record {
			samples = append(samples, sample{At: time.Since(l.start), Latency: time.Since(t0)})
		}
		if !l.keepAlive || resp.Close {
			closeConn()
		} else {
			reused = true
		}
		l.endRequest(cc)
	}
}

// failed counts a failed request of cc unless halt has counted it hung.
func (l *loadClient) failed(cc *clientConn, c failClass, err error) {
	cc.mu.Lock()
	hung, pid := cc.hung, cc.pid
	cc.mu.Unlock()
	if !hung {
		l.fail(c, err)
		l.mu.Lock()
		if len(l.failLog) < 100000 {
			l.failLog = append(l.failLog, failRecord{c, time.Since(l.start), pid})
		}
		l.mu.Unlock()
	}
}

func (l *loadClient) endRequest(cc *clientConn) {
	cc.mu.Lock()
	cc.inRequest = false
	cc.mu.Unlock()
}

// roundTrip writes one request and reads its whole answer.
func (l *loadClient) roundTrip(conn net.Conn, br *bufio.Reader, req string) (*http.Response, int, error) {
	if _, err := io.WriteString(conn, req); err != nil {
		return nil, 0, err
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return nil, 0, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, 0, &answerError{fmt.Sprintf("body: %v", err)}
	}
	if resp.StatusCode != http.StatusOK {
		return nil, 0, &answerError{fmt.Sprintf("status %d", resp.StatusCode)}
	}
	pid, ok := parsePID(string(body))
	if !ok {
		return nil, 0, &answerError{fmt.Sprintf("answer %q", body)}
	}
	return resp, pid, nil
}

// answerError is a response that arrived but is not the expected one.
type answerError struct{ s string }

func (e *answerError) Error() string { return e.s }

// classify sorts one failed request. gotBytes says whether any byte of the
// response had arrived.
func classify(err error, reused, gotBytes bool) failClass {
	var ae *answerError
	var ne net.Error
	switch {
	case errors.As(err, &ae):
		return failOther
	case errors.Is(err, syscall.ECONNREFUSED):
		return failRefused
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return failReset
	case errors.As(err, &ne) && ne.Timeout():
		return failTimeout
	case !gotBytes && (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)):
		if reused {
			return failEOFReused
		}
		return failEOFFresh
	}
	return failOther
}

func (l *loadClient) fail(c failClass, err error) {
	l.mu.Lock()
	l.fails[c]++
	if len(l.first) < 5 {
		l.first = append(l.first, fmt.Sprintf("%s: %v", c, err))
	}
	l.mu.Unlock()
}

// loadResult is what a load client saw, once stopped.
type loadResult struct {
	ok        int64
	fails     failCounts
	samples   []sample
	closeWait int // sockets to the port in CLOSE-WAIT when the run ended
	first     []string
	failLog   []failRecord
}

// halt stops the client: requests in flight get grace to finish; those
// still open after it are counted hung, and the sockets to the server's
// port left in CLOSE-WAIT (a peer closed, nobody read the EOF) are counted
// before the client closes its own.
func (l *loadClient) halt(grace time.Duration) loadResult {
	close(l.stop)
	done := make(chan struct{})
	go func() { l.wg.Wait(); close(done) }()
	var r loadResult
	select {
	case <-done:
	case <-time.After(grace):
		_, port, _ := net.SplitHostPort(l.addr)
		r.closeWait = closeWaitSockets(port)
		l.mu.Lock()
		for cc := range l.open {
			cc.mu.Lock()
			if cc.inRequest {
				l.fails[failHung]++
				cc.hung = true
			}
			if cc.conn != nil {
				cc.conn.SetDeadline(time.Now())
			}
			cc.mu.Unlock()
		}
		l.mu.Unlock()
		<-done
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	r.ok, r.fails, r.samples, r.first, r.failLog = l.ok.Load(), l.fails, l.samples, l.first, l.failLog
	return r
}

// closeWaitSockets counts TCP sockets of this machine in CLOSE-WAIT whose
// local or remote port is port.
func closeWaitSockets(port string) int {
	p, err := strconv.Atoi(port)
	if err != nil {
		return 0
	}
	hex := fmt.Sprintf(":%04X", p)
	n := 0
	for _, file := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(file)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			f := strings.Fields(line)
			if len(f) < 4 || f[3] != "08" { // TCP_CLOSE_WAIT
				continue
			}
			if strings.HasSuffix(f[1], hex) || strings.HasSuffix(f[2], hex) {
				n++
			}
		}
	}
	return n
}

// countingReader counts the bytes read from a connection, to tell an EOF
// before any byte of the response from one inside it.
type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

// parsePID finds the serving process in an answer: every server of the
// comparison says "pid=N" or "pid N".
func parsePID(body string) (int, bool) {
	i := strings.Index(body, "pid")
	if i < 0 || i+4 > len(body) {
		return 0, false
	}
	rest := body[i+4:]
	j := 0
	for j < len(rest) && rest[j] >= '0' && rest[j] <= '9' {
		j++
	}
	pid, err := strconv.Atoi(rest[:j])
	return pid, err == nil
}
