package master

import (
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
)

// TestLeastConnSpreadsABatch: the connections of one accept batch are
// picked before any is handed out; least-conn counts the earlier picks of
// the batch, so a batch evens the workers out instead of going whole to
// the one that had the fewest connections when it began.
func TestLeastConnSpreadsABatch(t *testing.T) {
	b := newBalancer(BalanceLeastConn, 64, 0, hclog.NewNullLogger())
	busy, idle := b.newTarget(0, 100, nil), b.newTarget(1, 101, nil)
	for _, tg := range []*target{busy, idle} {
		tg.listens.Store(1) // listener 0
	}
	busy.handed.Store(5) // five open, idle none
	b.publish([]*target{busy, idle})
	now := time.Now().UnixNano()
	picks := make([]*target, 9)
	for i := range picks {
		picks[i] = b.pickAfter(0, now, nil, picks[:i])
	}
	got := map[*target]int{}
	for _, p := range picks {
		got[p]++
	}
	// 5 + 2 against 0 + 7: the batch first fills the gap, then alternates.
	if got[busy] != 2 || got[idle] != 7 {
		t.Fatalf("a batch of 9 gave the worker with 5 open %d and the idle one %d; want 2 and 7", got[busy], got[idle])
	}
	// Round-robin ignores the counts.
	b.mode = BalanceRoundRobin
	clear(got)
	for i := range picks {
		picks[i] = b.pickAfter(0, now, nil, picks[:i])
		got[picks[i]]++
	}
	if d := got[busy] - got[idle]; d < -1 || d > 1 {
		t.Fatalf("round-robin gave %d and %d of 9", got[busy], got[idle])
	}
}
