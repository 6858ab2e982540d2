package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/clusterd/clusterd/master"
)

// Prometheus metrics (--metrics ADDR). They are a thin adapter over the
// master's public API: the loop's events, read on a subscriber goroutine
// of their own, and snapshots that never wait for the loop (the worker
// table as the subscriber last fetched it, IPC and per-slot totals,
// /proc). A scrape reads these and nothing else, so it costs the
// supervisor nothing.

// workerStates are the label values of clusterd_workers.
var workerStates = []master.WorkerState{master.WorkerStarting, master.WorkerReady, master.WorkerDraining}

// workerRefresh is how often the subscriber refreshes the worker table
// without an event (a worker that starts draining raises none).
const workerRefresh = 2 * time.Second

type metrics struct {
	m   *master.Master
	reg *prometheus.Registry

	restarts      *prometheus.CounterVec
	reloads       *prometheus.CounterVec
	reloadSeconds *prometheus.HistogramVec
	readySeconds  prometheus.Histogram

	// Used by the subscriber goroutine alone.
	slotRestarts map[int]int    // the restart count of each slot, as last seen
	lastExit     map[int]string // the reason of each slot's last unplanned exit

	mu     sync.Mutex
	states map[master.WorkerState]int // the last worker table, by state
	forks  map[int]time.Time          // fork time by pid, until ready or exit
}

func newMetrics(m *master.Master) *metrics {
	x := &metrics{
		m: m, reg: prometheus.NewRegistry(),
		states: make(map[master.WorkerState]int), forks: make(map[int]time.Time),
		slotRestarts: make(map[int]int), lastExit: make(map[int]string),
		restarts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "clusterd_restarts_total",
			Help: "Workers restarted after an unplanned exit, by reason: exit_error (non-zero status), exit_ok (status 0), signal (killed by a signal it was not sent by the master), failing (killed by the master: not ready in time, broke the protocol).",
		}, []string{"reason"}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "clusterd_reloads_total",
			Help: "Rolling reloads that ended, by outcome: completed, aborted (a new worker failed, the old ones kept serving), canceled (started over, stopped or paused), resumed (after a maintenance stop).",
		}, []string{"outcome"}),
		reloadSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "clusterd_reload_duration_seconds",
			Help:    "Duration of rolling reloads, by outcome.",
			Buckets: prometheus.ExponentialBuckets(0.05, 2, 14), // 50ms .. ~7min
		}, []string{"outcome"}),
		readySeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "clusterd_worker_ready_seconds",
			Help:    "Time from a worker's start to its readiness.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 14), // 5ms .. ~40s
		}),
	}
	for _, r := range []string{"exit_error", "exit_ok", "signal", "failing"} {
		x.restarts.WithLabelValues(r) // present at 0 from the start
	}
	for _, o := range []string{"completed", "aborted", "canceled", "resumed"} {
		x.reloads.WithLabelValues(o)
	}
	x.reg.MustRegister(x.restarts, x.reloads, x.reloadSeconds, x.readySeconds, x,
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewGoCollector())
	return x
}

var (
	workersDesc = prometheus.NewDesc("clusterd_workers", "Live worker processes, by state (a slot being reloaded has two).", []string{"state"}, nil)
	ipcDesc     = prometheus.NewDesc("clusterd_ipc_messages_total", "IPC messages between the master and its workers, by direction.", []string{"direction"}, nil)
	protoDesc   = prometheus.NewDesc("clusterd_ipc_protocol_errors_total", "Worker IPC connections ended by a protocol error.", nil, nil)
	handedDesc  = prometheus.NewDesc("clusterd_handed_off_connections_total",
		"Connections the master accepted and handed to a slot's workers (--balance round-robin, least-conn), by slot.", []string{"slot"}, nil)
	jobsDesc = prometheus.NewDesc("clusterd_jobs_total",
		"Job attempts sent to a slot's workers, by slot and outcome: completed (a result), failed (the worker's error), lost (the worker died, hung or disconnected first; the job is redelivered).",
		[]string{"slot", "outcome"}, nil)
)

// Describe and Collect make metrics the collector of the snapshots.
func (x *metrics) Describe(ch chan<- *prometheus.Desc) {
	ch <- workersDesc
	ch <- ipcDesc
	ch <- protoDesc
	ch <- handedDesc
	ch <- jobsDesc
}

func (x *metrics) Collect(ch chan<- prometheus.Metric) {
	x.mu.Lock()
	for _, s := range workerStates {
		ch <- prometheus.MustNewConstMetric(workersDesc, prometheus.GaugeValue, float64(x.states[s]), string(s))
	}
	x.mu.Unlock()
	st := x.m.IPCStats()
	ch <- prometheus.MustNewConstMetric(ipcDesc, prometheus.CounterValue, float64(st.Sent), "sent")
	ch <- prometheus.MustNewConstMetric(ipcDesc, prometheus.CounterValue, float64(st.Received), "received")
	ch <- prometheus.MustNewConstMetric(protoDesc, prometheus.CounterValue, float64(st.ProtocolErrors))
	for _, s := range x.m.SlotStats() {
		slot := strconv.Itoa(s.Slot)
		ch <- prometheus.MustNewConstMetric(handedDesc, prometheus.CounterValue, float64(s.HandedOff), slot)
		ch <- prometheus.MustNewConstMetric(jobsDesc, prometheus.CounterValue, float64(s.JobsCompleted), slot, "completed")
		ch <- prometheus.MustNewConstMetric(jobsDesc, prometheus.CounterValue, float64(s.JobsFailed), slot, "failed")
		ch <- prometheus.MustNewConstMetric(jobsDesc, prometheus.CounterValue, float64(s.JobsLost), slot, "lost")
	}
}

// watch applies the events of sub until it is closed (Run ended).
func (x *metrics) watch(sub *master.Subscription) {
	t := time.NewTicker(workerRefresh)
	defer t.Stop()
	for {
		select {
		case e, ok := <-sub.C:
			if !ok {
				return
			}
			x.event(e)
			// Refresh the table once a burst of events is read.
			if len(sub.C) == 0 {
				x.refresh()
			}
		case <-t.C:
			x.refresh()
		}
	}
}

// refresh fetches the worker table: the counts by state, and the slots'
// restart counts, which the master keeps itself (a reload's failed new
// worker, or a slot's last worker under --restart never, is not
// restarted). Each restart is counted with the reason of its slot's last
// unplanned exit.
func (x *metrics) refresh() {
	counts := make(map[master.WorkerState]int)
	for _, w := range x.m.Workers() {
		counts[w.State]++
		if w.Replacing {
			continue
		}
		prev, seen := x.slotRestarts[w.Slot]
		if !seen || w.Restarts < prev {
			prev = 0 // a new slot (scaled up again) counts from 0
		}
		if d := w.Restarts - prev; d > 0 {
			reason := x.lastExit[w.Slot]
			if reason == "" {
				reason = "exit_error" // the spawn itself failed: no exit event
			}
			x.restarts.WithLabelValues(reason).Add(float64(d))
		}
		x.slotRestarts[w.Slot] = w.Restarts
	}
	x.mu.Lock()
	x.states = counts
	x.mu.Unlock()
}

func (x *metrics) event(e master.Event) {
	switch e.Kind {
	case master.EventFork:
		x.mu.Lock()
		x.forks[e.PID] = e.Time
		x.mu.Unlock()
	case master.EventReady:
		x.mu.Lock()
		t, ok := x.forks[e.PID]
		delete(x.forks, e.PID)
		x.mu.Unlock()
		if ok {
			x.readySeconds.Observe(e.Time.Sub(t).Seconds())
		}
	case master.EventExit:
		x.mu.Lock()
		delete(x.forks, e.PID)
		x.mu.Unlock()
		if reason := exitReason(e); reason != "" {
			x.lastExit[e.Slot] = reason
		}
	case master.EventReload:
		outcome := reloadOutcome(e)
		// The duration first: a scrape that sees the reload counted sees
		// its duration too.
		if r := e.Reload; r != nil && !r.Finished.IsZero() {
			x.reloadSeconds.WithLabelValues(outcome).Observe(r.Finished.Sub(r.Started).Seconds())
		}
		x.reloads.WithLabelValues(outcome).Inc()
	}
}

// exitReason classifies an unplanned exit for clusterd_restarts_total;
// "" for a worker the master stopped on purpose.
func exitReason(e master.Event) string {
	switch {
	case e.ExitedAfterDisconnect:
		return ""
	case e.Reason != "":
		return "failing"
	case e.Signal != 0:
		return "signal"
	case e.ExitCode != 0:
		return "exit_error"
	}
	return "exit_ok"
}

func reloadOutcome(e master.Event) string {
	var re *master.ReloadError
	switch {
	case e.Err == nil && e.Reload != nil && e.Reload.Resumed:
		return "resumed"
	case e.Err == nil:
		return "completed"
	case errors.As(e.Err, &re):
		return "aborted"
	}
	return "canceled"
}

// serveMetrics binds addr and serves /metrics until stop is called, which
// returns once the server and the subscriber have ended. Bind errors are
// returned at once.
func serveMetrics(addr string, m *master.Master) (stop func(), bound net.Addr, err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("--metrics %s: %w", addr, err)
	}
	x := newMetrics(m)
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(x.reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	sub := m.Subscribe(0)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		x.watch(sub)
	}()
	go func() {
		defer wg.Done()
		_ = srv.Serve(ln) // ends with ErrServerClosed at stop
	}()
	return func() {
		sub.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if srv.Shutdown(ctx) != nil {
			srv.Close() // a scrape that does not finish: cut it
		}
		wg.Wait()
	}, ln.Addr(), nil
}
