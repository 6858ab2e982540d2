package mastertest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/clusterd/clusterd/master"
	"github.com/clusterd/clusterd/sockshare"
)

// NoDeadlineWait bounds every wait of a [Cluster] whose test has no
// deadline (a benchmark, or go test -timeout 0).
const NoDeadlineWait = 2 * time.Minute

// logTail is how many of the master's last log lines a failed test prints.
const logTail = 200

// ErrStopped is returned, wrapped, by [Cluster.Signal] once the master's
// Run has returned: nothing reads the signal channel any more.
var ErrStopped = errors.New("mastertest: master stopped")

// Cluster is a master running in the test process, started by [Start].
// Its methods are safe for concurrent use, but those that fail the test
// ([Cluster.WaitLog]) must be called from the test's goroutine.
type Cluster struct {
	t      testing.TB
	m      *master.Master
	logs   *logSink
	events *eventLog
	sigs   chan os.Signal
	cancel context.CancelFunc
	done   chan struct{} // closed when Run has returned

	runErr error // Run's result; written before done is closed

	mu        sync.Mutex
	collected bool // the test has seen runErr through Stop or Wait
}

// Start runs a master with opts in the test process and returns once it
// listens and every initial worker is ready. See the package doc for what
// it changes in opts (Subreaper, Signals, Logger, Stdout, Stderr,
// Listen); opts itself is not modified.
//
// Start fails the test (t.Fatal) when opts is invalid, when Run returns
// before the workers are ready, or when they are not ready by the failure
// deadline. It registers a cleanup that stops the master gracefully, fails
// the test if Run has not returned by the failure deadline, reports an
// error of Run that the test did not collect, and, whenever the test has
// failed, prints the tail of the master's log. Call Start from the test's
// goroutine.
func Start(t testing.TB, opts master.Options) *Cluster {
	t.Helper()
	if opts.Signals != nil {
		t.Fatal("mastertest: Options.Signals must be nil: the Cluster owns the signal channel (use Cluster.Signal)")
	}
	if opts.Logger != nil {
		t.Fatal("mastertest: Options.Logger must be nil: the Cluster captures the log (use Cluster.Logs and Cluster.WaitLog)")
	}
	c := &Cluster{
		t:    t,
		logs: newLogSink(),
		// Unbuffered: Signal returns once the master's loop has taken the
		// signal, so the test knows the master is acting on it.
		sigs: make(chan os.Signal),
		done: make(chan struct{}),
	}
	opts.Subreaper = false
	opts.Signals = c.sigs
	opts.Logger = hclog.New(&hclog.LoggerOptions{
		Name:       "clusterd",
		Level:      hclog.Debug,
		JSONFormat: true,
		Output:     c.logs,
	})
	if opts.Stdout == nil {
		opts.Stdout = io.Discard
	}
	if opts.Stderr == nil {
		opts.Stderr = io.Discard
	}
	if len(opts.Listen) == 0 && len(opts.Activated) == 0 {
		spec, err := sockshare.ParseSpec("tcp://127.0.0.1:0")
		if err != nil {
			t.Fatalf("mastertest: default listen address: %v", err)
		}
		opts.Listen = []sockshare.Spec{spec}
	}
	m, err := master.New(opts)
	if err != nil {
		t.Fatalf("mastertest: new master: %v", err)
	}
	c.m = m
	c.events = newEventLog(m)

	// Not t.Context: it is canceled before cleanups run, and the stop is
	// the cleanup's to start and to check.
	ctx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	go func() {
		c.runErr = m.Run(ctx)
		close(c.done)
	}()
	t.Cleanup(c.cleanup)

	limit := failDeadline(t)
	timer := time.NewTimer(limit)
	defer timer.Stop()
	select {
	case <-m.Ready():
	case <-c.done:
		c.markCollected()
		t.Fatalf("mastertest: master stopped before its workers were ready: %v", c.runErr)
	case <-timer.C:
		t.Fatalf("mastertest: workers not ready within %v", limit)
	}
	<-m.Listening() // closed before any worker starts, so before Ready
	return c
}

// Addr returns the address of the master's first listener, such as
// "127.0.0.1:40123", with the port chosen for port 0.
func (c *Cluster) Addr() string { return c.m.Addrs()[0].String() }

// Addrs returns the bound address of each listener, in the order of
// Options.Listen (or Options.Activated).
func (c *Cluster) Addrs() []net.Addr { return c.m.Addrs() }

// Signal delivers sig to the master as if the process had received it
// (HUP rolling reload, TERM or INT graceful stop, QUIT immediate stop,
// TTIN/TTOU one worker more or fewer, WINCH stop the workers until the
// next HUP). It blocks until the master's loop has taken the signal, and
// returns an error wrapping [ErrStopped] if Run has returned, or an error
// when the loop does not take it by the failure deadline. The test
// process's own signal handling is not involved.
func (c *Cluster) Signal(sig os.Signal) error {
	limit := failDeadline(c.t)
	timer := time.NewTimer(limit)
	defer timer.Stop()
	select {
	case <-c.done:
		// Run may have returned while the loop could still have read: a
		// signal after the end is ErrStopped whichever case won.
		return fmt.Errorf("mastertest: signal %v: %w", sig, ErrStopped)
	default:
	}
	select {
	case c.sigs <- sig:
		return nil
	case <-c.done:
		return fmt.Errorf("mastertest: signal %v: %w", sig, ErrStopped)
	case <-timer.C:
		return fmt.Errorf("mastertest: signal %v: the master did not take it within %v", sig, limit)
	}
}

// WaitLog blocks until the master has logged n lines (n ≥ 1) whose message
// is msg, and returns the nth, decoded from hclog's JSON: "@message",
// "@level", "@module" ("clusterd.master", "clusterd.master.reload", ...),
// "@timestamp" and the line's key/value pairs (numbers are float64). The
// messages a test may rely on are listed in package master's doc.
//
// WaitLog fails the test (t.Fatal) if Run returns, or the failure deadline
// passes, before the nth line; it must be called from the test's
// goroutine. Lines are counted from the master's start, so waiting for the
// 2nd "worker exited" after a reload means two exits in all.
func (c *Cluster) WaitLog(msg string, n int) map[string]any {
	c.t.Helper()
	if n < 1 {
		c.t.Fatalf("mastertest: WaitLog(%q, %d): n must be at least 1", msg, n)
	}
	limit := failDeadline(c.t)
	timer := time.NewTimer(limit)
	defer timer.Stop()
	for {
		line, count, changed := c.logs.find(msg, n)
		if line != nil {
			return line
		}
		select {
		case <-changed:
		case <-c.done:
			// Run has returned, so the log is complete: look once more.
			line, count, _ := c.logs.find(msg, n)
			if line != nil {
				return line
			}
			c.t.Fatalf("mastertest: master stopped (Run = %v) after %d of %d log lines %q", c.runErr, count, n, msg)
		case <-timer.C:
			c.t.Fatalf("mastertest: %d of %d log lines %q within %v", count, n, msg, limit)
		}
	}
}

// Logs returns a copy of every line the master has logged so far, decoded
// as for [Cluster.WaitLog], oldest first.
func (c *Cluster) Logs() []map[string]any { return c.logs.all() }

// Master returns the running master, for its command methods
// ([master.Master.Reload], [master.Master.Scale], [master.Master.Workers],
// [master.Master.Send], ...).
func (c *Cluster) Master() *master.Master { return c.m }

// WaitEvent blocks until the master has emitted n events (n ≥ 1) that
// match accepts (nil accepts all), counted from the master's start, and
// returns the nth. Events are recorded from before the first worker
// starts, so none is missed; [EventIs] builds the common matchers.
//
// WaitEvent fails the test (t.Fatal) if Run returns, or the failure
// deadline passes, before the nth event, or if the master had to drop
// events; it must be called from the test's goroutine.
func (c *Cluster) WaitEvent(n int, match func(master.Event) bool) master.Event {
	c.t.Helper()
	if n < 1 {
		c.t.Fatalf("mastertest: WaitEvent(%d): n must be at least 1", n)
	}
	if match == nil {
		match = func(master.Event) bool { return true }
	}
	limit := failDeadline(c.t)
	timer := time.NewTimer(limit)
	defer timer.Stop()
	for {
		if d := c.events.sub.Dropped(); d > 0 {
			c.t.Fatalf("mastertest: the master dropped %d events", d)
		}
		e, ok, count, changed := c.events.find(n, match)
		if ok {
			return e
		}
		select {
		case <-changed:
		case <-c.events.done:
			// Run has returned and every event is recorded: look once more.
			e, ok, count, _ := c.events.find(n, match)
			if ok {
				return e
			}
			c.t.Fatalf("mastertest: master stopped (Run = %v) after %d of %d matching events", c.runErr, count, n)
		case <-timer.C:
			c.t.Fatalf("mastertest: %d of %d matching events within %v", count, n, limit)
		}
	}
}

// Events returns every event the master has emitted so far, oldest first.
func (c *Cluster) Events() []master.Event { return c.events.all() }

// EventIs returns a matcher for [Cluster.WaitEvent]: events of kind k
// and, when slot is not negative, of that slot.
func EventIs(k master.EventKind, slot int) func(master.Event) bool {
	return func(e master.Event) bool { return e.Kind == k && (slot < 0 || e.Slot == slot) }
}

// Done returns a channel closed once the master's Run has returned.
func (c *Cluster) Done() <-chan struct{} { return c.done }

// Wait blocks until the master's Run returns and returns its result: nil
// after a requested stop, a [*master.IntensityError] when workers
// restarted too often, or another error of Run. Use it after a stop signal
// or when the master is expected to give up by itself. It returns a
// different error, and leaves the master running, when Run has not
// returned by the failure deadline.
func (c *Cluster) Wait() error {
	limit := failDeadline(c.t)
	timer := time.NewTimer(limit)
	defer timer.Stop()
	select {
	case <-c.done:
		c.markCollected()
		return c.runErr
	case <-timer.C:
		return fmt.Errorf("mastertest: master still runs after %v", limit)
	}
}

// Stop stops the master gracefully, as SIGTERM does (each worker gets its
// stop signal and, after Options.KillTimeout, SIGKILL), waits for Run to
// return, and returns Run's result as [Cluster.Wait] does. It is
// idempotent: after Run has returned it just returns the same result.
func (c *Cluster) Stop() error {
	c.cancel()
	return c.Wait()
}

func (c *Cluster) markCollected() {
	c.mu.Lock()
	c.collected = true
	c.mu.Unlock()
}

// cleanup stops the master and checks that Run returned cleanly.
func (c *Cluster) cleanup() {
	c.cancel()
	limit := failDeadline(c.t)
	timer := time.NewTimer(limit)
	defer timer.Stop()
	select {
	case <-c.done:
		<-c.events.done // closed with Run's end
		c.mu.Lock()
		collected := c.collected
		c.mu.Unlock()
		if c.runErr != nil && !collected {
			c.t.Errorf("mastertest: master Run = %v", c.runErr)
		}
	case <-timer.C:
		// The goroutine running Run is left behind; the workers die with
		// the test binary (parent-death signal).
		c.t.Errorf("mastertest: master Run did not return within %v of a graceful stop", limit)
	}
	if c.t.Failed() {
		c.t.Logf("mastertest: master log:%s", c.logReport())
	}
}

// logReport formats the tail of the master's log for a failure message.
func (c *Cluster) logReport() string {
	lines, omitted := c.logs.tail(logTail)
	var b strings.Builder
	if omitted > 0 {
		fmt.Fprintf(&b, "\n\t(%d earlier lines left out)", omitted)
	}
	for _, l := range lines {
		b.WriteString("\n\t")
		b.WriteString(l)
	}
	if len(lines) == 0 {
		b.WriteString("\n\t(master log is empty)")
	}
	return b.String()
}

// failDeadline is how long a wait may take before it fails the test: until
// the test's deadline, less a tenth of the time left (at most 5s) so the
// failure is reported before the test binary's timeout panics.
func failDeadline(t testing.TB) time.Duration {
	td, ok := t.(interface{ Deadline() (time.Time, bool) })
	if !ok {
		return NoDeadlineWait
	}
	dl, ok := td.Deadline()
	if !ok {
		return NoDeadlineWait
	}
	left := time.Until(dl)
	left -= min(left/10, 5*time.Second)
	return max(left, 0)
}
