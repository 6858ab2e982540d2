package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"
)

// soakSample is the master's state at one moment of the soak.
type soakSample struct {
	At                 time.Duration
	RSSKiB, PSSKiB     int
	FDs, Threads       int
	Reloads, Kills, OK int64
}

// soak runs examples/hello under clusterd (2 workers) for c.soakFor while
// two clients (keep-alive and Connection: close, never retrying) keep it
// busy, with a rolling reload every 5 s and a kill -9 of a random worker
// every 20 s, and samples the master every 30 s. Failed requests are laid
// at the door of a kill when the connection was last answered by the
// killed worker, or, on a connection without an answer yet, when the
// failure came within a second of a kill; every other failure is the
// master's.
func soak(c config) error {
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer cancel()
	cl, err := startCluster(c, 2)
	if err != nil {
		return err
	}
	defer cl.stop(10 * time.Second)
	pid := cl.cmd.Process.Pid
	fmt.Printf("\n## soak: %s, examples/hello under clusterd -w 2; reload every 5s, kill -9 of a random worker every 20s, %d keep-alive + %d close connections\n",
		c.soakFor, c.reloadConns, c.reloadConns)
	fmt.Printf("load average at start: %s\n", loadAvg())
	keep := startLoadClient(cl.addr, c.reloadConns, true, false)
	closing := startLoadClient(cl.addr, c.reloadConns, false, false)
	start := keep.start

	var samples []soakSample
	var reloads, kills int64
	var killed []int
	var killAt []time.Duration
	sample := func() {
		rss, pss := rssPSS(pid)
		s := soakSample{At: time.Since(start).Round(time.Second), RSSKiB: rss, PSSKiB: pss,
			FDs: countEntries(fmt.Sprintf("/proc/%d/fd", pid)), Threads: countEntries(fmt.Sprintf("/proc/%d/task", pid)),
			Reloads: reloads, Kills: kills, OK: keep.ok.Load() + closing.ok.Load()}
		samples = append(samples, s)
		fmt.Printf("  %6s  RSS %6d KiB  PSS %6d KiB  fds %3d  threads %2d  reloads %3d  kills %2d  requests ok %d\n",
			s.At, s.RSSKiB, s.PSSKiB, s.FDs, s.Threads, s.Reloads, s.Kills, s.OK)
	}
	sample()
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 2))
	reloadT, killT, sampleT := time.NewTicker(5*time.Second), time.NewTicker(20*time.Second), time.NewTicker(30*time.Second)
	defer reloadT.Stop()
	defer killT.Stop()
	defer sampleT.Stop()
	end := time.After(c.soakFor)
	var runErr error
loop:
	for {
		select {
		case <-ctx.Done():
			runErr = ctx.Err()
			break loop
		case <-end:
			break loop
		case <-sampleT.C:
			sample()
		case <-reloadT.C:
			if err := cl.cmd.Process.Signal(syscall.SIGHUP); err != nil {
				runErr = err
				break loop
			}
			if _, err := cl.wait("reload done", time.Minute); err != nil {
				runErr = err
				break loop
			}
			reloads++
		case <-killT.C:
			pids, err := clusterWorkerPIDs(pid)
			if err != nil {
				runErr = err
				break loop
			}
			victim := pids[rng.IntN(len(pids))]
			killAt = append(killAt, time.Since(start))
			if err := syscall.Kill(victim, syscall.SIGKILL); err != nil {
				runErr = fmt.Errorf("kill %d: %w", victim, err)
				break loop
			}
			killed = append(killed, victim)
			kills++
		}
	}
	k, cls := keep.halt(2*time.Second), closing.halt(2*time.Second)
	sample()
	var byKill, other failCounts
	for _, f := range append(k.failLog, cls.failLog...) {
		near := slices.ContainsFunc(killAt, func(at time.Duration) bool { return f.At >= at && f.At-at < time.Second })
		if slices.Contains(killed, f.PID) || (f.PID == 0 && near) {
			byKill[f.Class]++
		} else {
			other[f.Class]++
		}
	}
	first, last := samples[0], samples[len(samples)-1]
	fmt.Printf("requests ok %d; failed on a killed worker's connections: %d (%s); other failures: %d (%s); CLOSE-WAIT at the end %d\n",
		k.ok+cls.ok, byKill.total(), byKill, other.total(), other, k.closeWait+cls.closeWait)
	fmt.Printf("master: RSS %d → %d KiB (max %d), PSS %d → %d KiB, fds %d → %d, threads %d → %d; goroutines: not exposed by the master, not sampled\n",
		first.RSSKiB, last.RSSKiB, maxOf(samples, func(s soakSample) int { return s.RSSKiB }), first.PSSKiB, last.PSSKiB,
		first.FDs, last.FDs, first.Threads, last.Threads)
	fmt.Printf("load average at end: %s\n", loadAvg())
	if len(k.first)+len(cls.first) > 0 {
		fmt.Printf("first errors: %s\n", strings.Join(append(k.first, cls.first...), "; "))
	}
	if runErr != nil {
		return runErr
	}
	if other.total() > 0 {
		return fmt.Errorf("%d requests failed that no kill explains", other.total())
	}
	return nil
}

func maxOf(s []soakSample, f func(soakSample) int) int {
	m := 0
	for _, v := range s {
		m = max(m, f(v))
	}
	return m
}

func countEntries(dir string) int {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return -1
	}
	return len(ents)
}
