package master

import (
	"sync"

	"github.com/clusterd/clusterd/ipc"
)

// IPCStats are running totals of the master's IPC with its workers, since
// Run started ([Master.IPCStats]).
type IPCStats struct {
	// Sent and Received count the messages to and from workers.
	Sent, Received uint64
	// ProtocolErrors counts the workers whose connection ended because
	// they broke the protocol.
	ProtocolErrors uint64
}

// ipcTotals keeps IPCStats: the connections that still run are summed when
// asked, the ended ones were added when they ended. Its mutex guards only
// these counters, never supervisor state.
type ipcTotals struct {
	mu    sync.Mutex
	live  map[*ipc.Conn]struct{}
	ended IPCStats
}

func (t *ipcTotals) add(c *ipc.Conn) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.live == nil {
		t.live = make(map[*ipc.Conn]struct{})
	}
	t.live[c] = struct{}{}
}

// end moves c's totals from the live set to the ended ones.
func (t *ipcTotals) end(c *ipc.Conn) {
	n := c.Counters()
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.live[c]; !ok {
		return
	}
	delete(t.live, c)
	t.ended.Sent += n.Sent
	t.ended.Received += n.Received
}

func (t *ipcTotals) protocolError() {
	t.mu.Lock()
	t.ended.ProtocolErrors++
	t.mu.Unlock()
}

func (t *ipcTotals) snapshot() IPCStats {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.ended
	for c := range t.live {
		n := c.Counters()
		s.Sent += n.Sent
		s.Received += n.Received
	}
	return s
}

// IPCStats returns the totals of the master's IPC with its workers. It
// never waits for the loop, so a metrics scrape costs the supervisor
// nothing. Safe for concurrent use, at any time.
func (m *Master) IPCStats() IPCStats { return m.ipc.snapshot() }
