package master

import (
	"bytes"
	"strings"
	"testing"

	"github.com/clusterd/clusterd/sockshare"
	"github.com/vmihailenco/msgpack/v5"
)

// sampleUpgradeState is a state as a two-slot shared-mode master writes it.
func sampleUpgradeState() *upgradeState {
	return &upgradeState{
		Protocol: upgradeProtocol, Version: "1.2.3", Started: 1, Upgrades: 1,
		Gens: map[int]int{0: 1, 1: 3},
		Slots: []upgradeSlot{
			{ID: 0, Worker: &upgradeWorker{PID: 100, Gen: 1, IPC: 5, Stdout: 6, Stderr: 7, Notify: -1}},
			{ID: 1, Restarts: 2, LastExit: "exited with code 1", Worker: &upgradeWorker{PID: 101, Gen: 3, IPC: 8, Stdout: -1, Stderr: -1, Notify: 9}},
		},
		Listeners: upgradeListeners{
			Specs: []sockshare.Spec{{Network: "tcp", Address: "127.0.0.1:8080"}}, Names: []string{"web"},
			PerTCP: []bool{false}, Adopted: []bool{false}, Watched: []bool{true}, Shared: []int{3},
			Slots: map[int][]int{0: {-1}},
		},
		Runtime:  []upgradeRuntime{{Key: "tcp://:9000", Spec: sockshare.Spec{Network: "tcp", Address: ":9000"}, Shared: 4}},
		Guardian: upgradeGuardian{PID: 99, FD: 10},
		FDs:      []int{3, 4, 5, 6, 7, 8, 9, 10},
	}
}

func TestUpgradeStateValidate(t *testing.T) {
	if err := sampleUpgradeState().validate(); err != nil {
		t.Fatalf("sample state: %v", err)
	}
	for _, tc := range []struct {
		name   string
		change func(*upgradeState)
		want   string
	}{
		{"other protocol", func(s *upgradeState) { s.Protocol = upgradeProtocol + 1 }, "state protocol"},
		{"stdin as a descriptor", func(s *upgradeState) { s.FDs = append(s.FDs, 0) }, "invalid or listed twice"},
		{"descriptor twice", func(s *upgradeState) { s.FDs = append(s.FDs, 3) }, "invalid or listed twice"},
		{"unlisted listener", func(s *upgradeState) { s.Listeners.Shared[0] = 42 }, "not in the state's list"},
		{"unlisted worker pipe", func(s *upgradeState) { s.Slots[0].Worker.Stdout = 42 }, "not in the state's list"},
		{"unlisted guardian pipe", func(s *upgradeState) { s.Guardian.FD = 42 }, "guardian"},
		{"short listener fields", func(s *upgradeState) { s.Listeners.Names = nil }, "different lengths"},
		{"slot twice", func(s *upgradeState) { s.Slots[1].ID = 0 }, "listed twice"},
		{"worker without pid", func(s *upgradeState) { s.Slots[1].Worker.PID = 0 }, "worker pid 0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := sampleUpgradeState()
			tc.change(s)
			if err := s.validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("validate: %v, want an error with %q", err, tc.want)
			}
		})
	}
}

func TestUpgradeCheckLine(t *testing.T) {
	b, err := msgpack.Marshal(sampleUpgradeState())
	if err != nil {
		t.Fatal(err)
	}
	line, err := UpgradeCheck(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	if line != upgradeCheckLine(b) || !strings.Contains(line, "protocol=1 state=") {
		t.Fatalf("check line %q, want %q", line, upgradeCheckLine(b))
	}
	// Another state, another line: a binary cannot answer without reading it.
	other := sampleUpgradeState()
	other.Upgrades++
	b2, _ := msgpack.Marshal(other)
	if upgradeCheckLine(b2) == line {
		t.Fatal("two states have the same check line")
	}
	if _, err := UpgradeCheck(strings.NewReader("not msgpack")); err == nil {
		t.Fatal("UpgradeCheck accepted garbage")
	}
}

func FuzzUpgradeState(f *testing.F) {
	b, err := msgpack.Marshal(sampleUpgradeState())
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add([]byte{0x80})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := decodeUpgradeState(b)
		if err != nil {
			return
		}
		// Whatever decodes and validates can be written and read again.
		again, err := msgpack.Marshal(s)
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		if _, err := decodeUpgradeState(again); err != nil {
			t.Fatalf("re-decode of a valid state: %v", err)
		}
	})
}
