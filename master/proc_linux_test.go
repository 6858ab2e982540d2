package master

import (
	"os"
	"os/exec"
	"syscall"
	"testing"
)

func TestParseStat(t *testing.T) {
	// A command name with spaces and a ')' of its own.
	line := "4242 (my (odd) srv) S 1 4200 4200 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 4 0 123 104857600 2560 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n"
	pgid, pages, ok := parseStat([]byte(line))
	if !ok || pgid != 4200 || pages != 2560 {
		t.Errorf("parseStat = %d, %d, %v, want 4200, 2560, true", pgid, pages, ok)
	}
	for _, bad := range []string{"", "1 (x", "1 (x) S 1 2", "1 (x) S 1 nope 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23"} {
		if _, _, ok := parseStat([]byte(bad)); ok {
			t.Errorf("parseStat(%q) ok, want not", bad)
		}
	}
}

func TestMemorySamplerSeesOwnGroup(t *testing.T) {
	ms := newMemorySampler()
	pgid, _, ok := ms.readStat(os.Getpid())
	if !ok {
		t.Fatal("read /proc/self/stat")
	}
	for i := range 2 { // the second pass works from the cache
		rss, err := ms.sample([]int{pgid})
		if err != nil {
			t.Fatal(err)
		}
		if rss[pgid] == 0 || len(rss) != 1 {
			t.Errorf("sample %d = %v, want this process's group %d only, with memory", i, rss, pgid)
		}
	}
	if len(ms.groups) < 2 {
		t.Errorf("sampler remembers %d pids, want every pid in /proc", len(ms.groups))
	}
}

func TestParseVMStat(t *testing.T) {
	b := []byte("nr_free_pages 100\noom_kill_extra 9\noom_kill 3\npgfault 7\n")
	if n, ok := parseVMStat(b, "oom_kill"); !ok || n != 3 {
		t.Errorf("parseVMStat oom_kill = %d, %v, want 3, true", n, ok)
	}
	if _, ok := parseVMStat(b, "missing"); ok {
		t.Error("parseVMStat(missing) ok, want not")
	}
	if _, ok := oomKillCount(); !ok {
		t.Log("this kernel has no oom_kill in /proc/vmstat (before 4.13)")
	}
}

// BenchmarkMemorySample: one sample of 64 worker-like process groups (a
// sleep each, in a group of its own), among whatever else runs on the
// machine. At Options.SampleInterval 1s, ns/op is the master's cost per
// second.
func BenchmarkMemorySample(b *testing.B) {
	var pgids []int
	for range 64 {
		cmd := exec.Command("sleep", "600")
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		})
		pgids = append(pgids, cmd.Process.Pid)
	}
	ms := newMemorySampler()
	rss, err := ms.sample(pgids)
	if err != nil || len(rss) != len(pgids) {
		b.Fatalf("first sample: %d groups, %v; want %d", len(rss), err, len(pgids))
	}
	for b.Loop() {
		if _, err := ms.sample(pgids); err != nil {
			b.Fatal(err)
		}
	}
}
