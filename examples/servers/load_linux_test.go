package servers_test

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// requestTimeout bounds one request of the load and of get: a server that
// does not answer within it counts as a "timeout" failure.
const requestTimeout = 10 * time.Second

// get sends GET / on a connection of its own and reads the whole answer,
// as a client that never retries does.
func get(addr string) answer {
	conn, err := net.DialTimeout("tcp", addr, requestTimeout)
	if err != nil {
		return answer{err: err}
	}
	defer conn.Close()
	a, _ := roundTrip(conn, bufio.NewReader(conn), true)
	return a
}

// roundTrip sends one GET / on conn and reads its answer through br. It
// reports whether the server closes the connection after it.
func roundTrip(conn net.Conn, br *bufio.Reader, closeConn bool) (answer, bool) {
	if err := conn.SetDeadline(time.Now().Add(requestTimeout)); err != nil {
		return answer{err: err}, true
	}
	req := "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n"
	if closeConn {
		req += "Connection: close\r\n"
	}
	if _, err := io.WriteString(conn, req+"\r\n"); err != nil {
		return answer{err: fmt.Errorf("write request: %w", err)}, true
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return answer{err: fmt.Errorf("read answer: %w", err)}, true
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return answer{err: fmt.Errorf("read body: %w", err)}, true
	}
	if resp.StatusCode != http.StatusOK {
		return answer{err: &statusError{resp.StatusCode}}, resp.Close
	}
	return answer{header: resp.Header, body: string(body)}, resp.Close
}

// statusError is an answer other than 200 OK.
type statusError struct{ code int }

func (e *statusError) Error() string { return fmt.Sprintf("status %d", e.code) }

// failureClass names the kind of a failed request, for the report.
func failureClass(err error) string {
	var se *statusError
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "reset"
	case errors.Is(err, syscall.EPIPE):
		return "broken pipe"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "closed before answer"
	case errors.As(err, &se):
		return se.Error()
	case errors.As(err, &ne) && ne.Timeout(), errors.Is(err, os.ErrDeadlineExceeded):
		return "timeout"
	}
	return "other"
}

// Load modes: a new connection per request (Connection: close), or
// requests one after another on a keep-alive connection, which is dialed
// again only after the server closed it or a request failed.
const (
	modeClose     = "close"
	modeKeepAlive = "keep-alive"
)

// loadClients is how many clients of each mode a load runs; loadPace is
// each client's pause between requests, which keeps the load small on a
// shared machine.
const (
	loadClients = 2
	loadPace    = 5 * time.Millisecond
)

// load is a small HTTP load that never retries: each failed request is
// counted by mode and class, and the next request is a new one.
type load struct {
	addr string
	quit chan struct{}
	wg   sync.WaitGroup

	mu      sync.Mutex
	stats   loadStats
	changed chan struct{} // closed and replaced after each success
}

// loadStats counts requests by mode: "ok" and each failure class.
type loadStats map[string]map[string]int

func (s loadStats) ok() int { return s[modeClose]["ok"] + s[modeKeepAlive]["ok"] }

// failed returns the failed requests of one mode, of every class.
func (s loadStats) failed(mode string) int {
	n := 0
	for class, c := range s[mode] {
		if class != "ok" {
			n += c
		}
	}
	return n
}

// count returns the failures of class in every mode.
func (s loadStats) count(class string) int { return s[modeClose][class] + s[modeKeepAlive][class] }

// report formats the counts as "close: ok=N refused=0 ...; keep-alive: ...".
func (s loadStats) report() string {
	var parts []string
	for _, mode := range []string{modeClose, modeKeepAlive} {
		counts := s[mode]
		var b strings.Builder
		fmt.Fprintf(&b, "%s: ok=%d refused=%d", mode, counts["ok"], counts["refused"])
		for _, class := range slices.Sorted(maps.Keys(counts)) {
			if class != "ok" && class != "refused" {
				fmt.Fprintf(&b, " %s=%d", strings.ReplaceAll(class, " ", "-"), counts[class])
			}
		}
		parts = append(parts, b.String())
	}
	return strings.Join(parts, "; ")
}

// startLoad starts loadClients clients of each mode against addr. The test
// must call stop, which waits for them.
func startLoad(t testing.TB, addr string) *load {
	l := &load{
		addr:    addr,
		quit:    make(chan struct{}),
		stats:   loadStats{modeClose: {}, modeKeepAlive: {}},
		changed: make(chan struct{}),
	}
	for range loadClients {
		l.wg.Add(2)
		go l.client(modeClose)
		go l.client(modeKeepAlive)
	}
	t.Cleanup(func() { l.stop() })
	return l
}

func (l *load) client(mode string) {
	defer l.wg.Done()
	var conn net.Conn
	var br *bufio.Reader
	defer func() {
		if conn != nil {
			conn.Close()
		}
	}()
	pace := time.NewTicker(loadPace)
	defer pace.Stop()
	for {
		select {
		case <-l.quit:
			return
		case <-pace.C:
		}
		if conn == nil {
			c, err := net.DialTimeout("tcp", l.addr, requestTimeout)
			if err != nil {
				l.count(mode, err)
				continue
			}
			conn, br = c, bufio.NewReader(c)
		}
		a, closed := roundTrip(conn, br, mode == modeClose)
		l.count(mode, a.err)
		if closed || a.err != nil || mode == modeClose {
			conn.Close()
			conn = nil
		}
	}
}

func (l *load) count(mode string, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		l.stats[mode][failureClass(err)]++
		return
	}
	l.stats[mode]["ok"]++
	close(l.changed)
	l.changed = make(chan struct{})
}

// snapshot returns a copy of the counts so far.
func (l *load) snapshot() loadStats {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := loadStats{}
	for mode, counts := range l.stats {
		out[mode] = maps.Clone(counts)
	}
	return out
}

// waitOK waits until n requests in all have succeeded, and fails the test
// at the failure deadline.
func (l *load) waitOK(t testing.TB, n int) {
	t.Helper()
	timer := time.NewTimer(failAfter(t))
	defer timer.Stop()
	for {
		l.mu.Lock()
		ok, changed := l.stats.ok(), l.changed
		l.mu.Unlock()
		if ok >= n {
			return
		}
		select {
		case <-changed:
		case <-timer.C:
			t.Fatalf("load: %d of %d requests succeeded by the failure deadline (%s)", ok, n, l.snapshot().report())
		}
	}
}

// stop ends the load, waits for its clients, and returns the counts. It is
// idempotent.
func (l *load) stop() loadStats {
	l.mu.Lock()
	select {
	case <-l.quit:
	default:
		close(l.quit)
	}
	l.mu.Unlock()
	l.wg.Wait()
	return l.snapshot()
}
