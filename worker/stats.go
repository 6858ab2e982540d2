package worker

import (
	"fmt"
	"sync"
	"sync/atomic"
)

// A worker's metrics: named integer values that the session reports to the
// master with every heartbeat (a [ipc.KindStats] message with the latest
// values), which shows them in its worker table. Counters only grow; gauges
// are set. Both are cheap to update from any goroutine: an atomic operation,
// with the registry's lock taken only to create a name.

// Counter is a named value that only grows, such as the number of requests
// served. Get one with [NewCounter]. It is safe for concurrent use.
type Counter struct{ v atomic.Int64 }

// Add adds n, which should not be negative, to the counter.
func (c *Counter) Add(n int64) { c.v.Add(n) }

// Inc adds one to the counter.
func (c *Counter) Inc() { c.v.Add(1) }

// Value returns the counter's current value.
func (c *Counter) Value() int64 { return c.v.Load() }

// Gauge is a named value that is set, such as the number of open
// connections. Get one with [NewGauge]. It is safe for concurrent use.
type Gauge struct{ v atomic.Int64 }

// Set sets the gauge to v.
func (g *Gauge) Set(v int64) { g.v.Store(v) }

// Add adds n (negative to subtract) to the gauge.
func (g *Gauge) Add(n int64) { g.v.Add(n) }

// Value returns the gauge's current value.
func (g *Gauge) Value() int64 { return g.v.Load() }

// NewCounter returns the counter named name, creating it at zero on first
// use: every call with the same name returns the same counter, so a package
// may call it wherever it counts. Names are lowercase snake_case
// ("requests", "cache_misses"): 1 to 64 of a-z, 0-9 and '_', starting with a
// letter. NewCounter panics, naming it, for an invalid name or one that is a
// gauge, as these are mistakes of the program, not of its input.
func NewCounter(name string) *Counter {
	c, err := self().metrics.counter(name)
	if err != nil {
		panic(err)
	}
	return c
}

// NewGauge returns the gauge named name, as [NewCounter] does for counters.
func NewGauge(name string) *Gauge {
	g, err := self().metrics.gauge(name)
	if err != nil {
		panic(err)
	}
	return g
}

// SetGauge sets the gauge named name to v: NewGauge(name).Set(v).
func SetGauge(name string, v int64) { NewGauge(name).Set(v) }

// Stats returns the current value of every counter and gauge, by name: what
// the next heartbeat reports to the master. Outside clusterd the metrics
// work the same and are reported to nobody.
func Stats() map[string]int64 { return self().metrics.snapshot() }

// maxMetricName bounds a metric's name.
const maxMetricName = 64

// metrics is the process's registry of counters and gauges.
type metrics struct {
	mu       sync.Mutex
	counters map[string]*Counter
	gauges   map[string]*Gauge
}

func (m *metrics) counter(name string) (*Counter, error) {
	if err := checkMetricName(name); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.gauges[name]; ok {
		return nil, fmt.Errorf("worker: metric %q is a gauge, not a counter", name)
	}
	c := m.counters[name]
	if c == nil {
		if m.counters == nil {
			m.counters = make(map[string]*Counter)
		}
		c = new(Counter)
		m.counters[name] = c
	}
	return c, nil
}

func (m *metrics) gauge(name string) (*Gauge, error) {
	if err := checkMetricName(name); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.counters[name]; ok {
		return nil, fmt.Errorf("worker: metric %q is a counter, not a gauge", name)
	}
	g := m.gauges[name]
	if g == nil {
		if m.gauges == nil {
			m.gauges = make(map[string]*Gauge)
		}
		g = new(Gauge)
		m.gauges[name] = g
	}
	return g, nil
}

// snapshot returns every metric's value, or nil when there are none.
func (m *metrics) snapshot() map[string]int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.counters)+len(m.gauges) == 0 {
		return nil
	}
	out := make(map[string]int64, len(m.counters)+len(m.gauges))
	for name, c := range m.counters {
		out[name] = c.Value()
	}
	for name, g := range m.gauges {
		out[name] = g.Value()
	}
	return out
}

func checkMetricName(name string) error {
	if name == "" || len(name) > maxMetricName {
		return fmt.Errorf("worker: metric name %q: want 1 to %d characters", name, maxMetricName)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'a' && c <= 'z':
		case (c >= '0' && c <= '9' || c == '_') && i > 0:
		default:
			return fmt.Errorf("worker: metric name %q: want lowercase snake_case (a-z, 0-9, '_', starting with a letter)", name)
		}
	}
	return nil
}
