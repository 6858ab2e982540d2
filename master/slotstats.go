package master

import (
	"slices"
	"sync"
	"sync/atomic"
)

// SlotStats are running totals of the work one slot's workers were given,
// all its incarnations together, since Run started ([Master.SlotStats]).
type SlotStats struct {
	Slot int
	// HandedOff counts the connections the master handed to the slot's
	// workers under --balance round-robin and least-conn (0 in the other
	// modes, where workers accept themselves). A connection a worker gave
	// back and the master handed again is counted again.
	HandedOff uint64
	// JobsCompleted, JobsFailed and JobsLost count the jobs sent to the
	// slot's workers ([Master.Dispatch], a worker's Submit) by how their
	// attempt ended: answered with a result, answered with an error, or
	// lost with the worker (it died, hung or disconnected first; the job
	// is redelivered). A job its caller gave up on is not counted.
	JobsCompleted, JobsFailed, JobsLost uint64
}

// slotTotals keeps SlotStats. The data path adds to a slot's atomic
// counters; the mutex guards only the map, taken when a worker's session
// starts and when a snapshot is read, never by the loop.
type slotTotals struct {
	mu     sync.Mutex
	bySlot map[int]*slotCounts
}

// slotCounts are one slot's counters. A nil *slotCounts counts nothing,
// for targets made without one (tests).
type slotCounts struct {
	handedOff atomic.Uint64
	jobs      [jobOutcomes]atomic.Uint64
}

// jobOutcome is how one attempt of a job on a worker ended.
type jobOutcome int

const (
	jobCompleted jobOutcome = iota
	jobFailed
	jobLost
	jobOutcomes // the count
)

// slot returns the counters of slot id, making them on first use; nil
// for a nil t.
func (t *slotTotals) slot(id int) *slotCounts {
	if t == nil {
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.bySlot == nil {
		t.bySlot = make(map[int]*slotCounts)
	}
	c := t.bySlot[id]
	if c == nil {
		c = new(slotCounts)
		t.bySlot[id] = c
	}
	return c
}

func (c *slotCounts) handed(n int) {
	if c != nil {
		c.handedOff.Add(uint64(n))
	}
}

func (c *slotCounts) job(o jobOutcome) {
	if c != nil {
		c.jobs[o].Add(1)
	}
}

func (t *slotTotals) snapshot() []SlotStats {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]SlotStats, 0, len(t.bySlot))
	for id, c := range t.bySlot {
		out = append(out, SlotStats{
			Slot: id, HandedOff: c.handedOff.Load(),
			JobsCompleted: c.jobs[jobCompleted].Load(), JobsFailed: c.jobs[jobFailed].Load(), JobsLost: c.jobs[jobLost].Load(),
		})
	}
	slices.SortFunc(out, func(a, b SlotStats) int { return a.Slot - b.Slot })
	return out
}

// SlotStats returns the totals of every slot whose workers have said their
// IPC hello, by slot number; a slot removed by scaling down keeps its
// entry. It never waits for the loop, so a metrics scrape costs the
// supervisor nothing. Safe for concurrent use, at any time.
func (m *Master) SlotStats() []SlotStats { return m.slots.snapshot() }
