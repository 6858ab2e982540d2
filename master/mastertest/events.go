package mastertest

import (
	"sync"

	"github.com/clusterd/clusterd/master"
)

// eventLog records every event of the master, from before its first worker
// starts: one goroutine moves them from the master's subscription into a
// list that [Cluster.WaitEvent] searches, so the subscription's buffer
// never fills while the test is busy elsewhere.
type eventLog struct {
	sub  *master.Subscription
	done chan struct{} // closed when the subscription has ended

	mu      sync.Mutex
	events  []master.Event
	changed chan struct{} // closed and replaced after each event
}

// eventBuffer is the subscription's buffer: what the recorder may fall
// behind by before the master drops events.
const eventBuffer = 1 << 16

func newEventLog(m *master.Master) *eventLog {
	l := &eventLog{sub: m.Subscribe(eventBuffer), done: make(chan struct{}), changed: make(chan struct{})}
	go l.record()
	return l
}

func (l *eventLog) record() {
	defer close(l.done)
	for e := range l.sub.C {
		l.mu.Lock()
		l.events = append(l.events, e)
		close(l.changed)
		l.changed = make(chan struct{})
		l.mu.Unlock()
	}
}

// find returns the nth (from 1) event that match accepts, with the count
// so far and a channel closed at the next event.
func (l *eventLog) find(n int, match func(master.Event) bool) (e master.Event, found bool, count int, changed <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, ev := range l.events {
		if match(ev) {
			count++
			if count == n {
				return ev, true, count, l.changed
			}
		}
	}
	return master.Event{}, false, count, l.changed
}

func (l *eventLog) all() []master.Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]master.Event(nil), l.events...)
}
