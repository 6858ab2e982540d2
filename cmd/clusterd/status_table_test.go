package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/clusterd/clusterd/master"
)

// TestStatusTableMasterLine: the master's line names its in-place upgrades
// once there were any.
func TestStatusTableMasterLine(t *testing.T) {
	now := time.Date(2026, 12, 2, 6, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		upgrades int
		want     string
	}{
		{0, "master: web pid 42, up 2m, version 1.0\n"},
		{1, "master: web pid 42, up 2m, version 1.0, upgraded in place once\n"},
		{3, "master: web pid 42, up 2m, version 1.0, upgraded in place 3 times\n"},
	} {
		var b bytes.Buffer
		st := master.ControlStatusReply{PID: 42, Name: "web", Version: "1.0", Started: now.Add(-2 * time.Minute), Upgrades: tc.upgrades}
		if err := writeStatusTable(&b, st, now); err != nil {
			t.Fatal(err)
		}
		if got := b.String(); !strings.HasSuffix(got, tc.want) {
			t.Errorf("%d upgrades: table ends %q, want %q", tc.upgrades, got[strings.LastIndex(got[:len(got)-1], "\n")+1:], tc.want)
		}
	}
}
