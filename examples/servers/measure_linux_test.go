package servers_test

import (
	"bufio"
	"net"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/clusterd/clusterd/master"
)

// recipeNamed returns the recipe of that name.
func recipeNamed(t testing.TB, name string) recipe {
	t.Helper()
	for _, r := range recipes {
		if r.name == name {
			return r
		}
	}
	t.Fatalf("no recipe %q", name)
	return recipe{}
}

// TestNodeReloadKeepsWorkersReady reloads four Node.js workers started with
// the default readiness (no --ready) under load, and measures how many
// workers serve at each step: from the master's log, the workers it counted
// ready and not yet draining; from /proc, sampled while the reload runs,
// the processes that have the shared socket in their epoll set (libuv
// removes it when server.close() is called). A reload of batch 1 must keep
// at least N-1 of N by both counts.
func TestNodeReloadKeepsWorkersReady(t *testing.T) {
	const n = 4
	r := recipeNamed(t, "node-http")
	r.flags = nil
	rn := startRecipe(t, r, n, nil)
	first := lastLine(rn.c.Logs(), "worker ready", func(map[string]any) bool { return true })
	ino, err := socketInode(num(first, "pid"), 3)
	if err != nil {
		t.Fatalf("the shared socket of pid %d: %v", num(first, "pid"), err)
	}
	l := startLoad(t, rn.addr)
	l.waitOK(t, 20)

	// The sampler counts, until told to stop, the cluster's processes
	// that wait on the socket in epoll.
	stopSampling := make(chan struct{})
	type sampled struct{ samples, least int }
	result := make(chan sampled, 1)
	go func() {
		s := sampled{least: -1}
		for {
			select {
			case <-stopSampling:
				result <- s
				return
			default:
			}
			ps, err := markedProcs(rn.mark)
			if err != nil {
				result <- sampled{samples: -1}
				return
			}
			c := 0
			for pid := range ps {
				if inEpoll(pid, ino) {
					c++
				}
			}
			s.samples++
			if s.least < 0 || c < s.least {
				s.least = c
			}
		}
	}()
	if err := rn.c.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	rn.c.WaitLog("reload done", 1)
	rn.c.WaitLog("worker exited", n)
	close(stopSampling)
	seen := <-result
	stats := l.stop()
	mn, mx := readyDuringReload(rn.c.Logs())
	t.Logf("reload of %d node workers, default readiness: ready workers min %d, max %d; in epoll (%d samples of /proc) min %d; load %s",
		n, mn, mx, seen.samples, seen.least, stats.report())
	if mn < n-1 {
		t.Errorf("during the reload the master counted %d workers serving, want at least %d", mn, n-1)
	}
	switch {
	case seen.samples < 0:
		t.Errorf("sampling /proc failed")
	case seen.samples == 0:
		t.Errorf("the reload ended before /proc was sampled once")
	case seen.least < n-1:
		t.Errorf("during the reload %d workers had the socket in epoll, want at least %d", seen.least, n-1)
	}
	if c := stats.count("refused"); c > 0 {
		t.Errorf("reload refused %d connections, want 0", c)
	}
}

// BenchmarkUvicornKeepAlive measures the latency of requests one after
// another on one keep-alive connection to a uvicorn worker, and reports
// its median and 90th percentile. Uvicorn leaves Nagle's algorithm on the
// sockets it accepts from --fd, and an accepted socket inherits
// TCP_NODELAY from its listener: "nodelay" is clusterd's default listener,
// "delay" one made with --tcp-nodelay=false, as clusterd made them before.
//
//	go test -run '^$' -bench UvicornKeepAlive -benchtime 200x ./examples/servers/
func BenchmarkUvicornKeepAlive(b *testing.B) {
	for _, tc := range []struct {
		name  string
		delay bool
	}{{"nodelay", false}, {"delay", true}} {
		b.Run(tc.name, func(b *testing.B) {
			rn := startRecipe(b, recipeNamed(b, "uvicorn"), 1, func(o *master.Options) {
				o.ListenOptions.TCPDelay = tc.delay
			})
			conn, err := net.Dial("tcp", rn.addr)
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close()
			br := bufio.NewReader(conn)
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for range b.N {
				start := time.Now()
				a, closed := roundTrip(conn, br, false)
				if a.err != nil {
					b.Fatalf("request %d: %v", len(lat)+1, a.err)
				}
				if closed {
					b.Fatalf("request %d: uvicorn closed the keep-alive connection", len(lat)+1)
				}
				lat = append(lat, time.Since(start))
			}
			b.StopTimer()
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2])/float64(time.Millisecond), "ms-median")
			b.ReportMetric(float64(lat[len(lat)*9/10])/float64(time.Millisecond), "ms-p90")
		})
	}
}

// BenchmarkLighttpdReload measures what a rolling reload of two lighttpd
// workers costs a load that never retries, with the recipe's stop signal
// (INT: lighttpd finishes its connections) and with TERM (lighttpd closes
// them at once). It reports the failed requests per reload, by load mode:
//
//	go test -run '^$' -bench LighttpdReload -benchtime 5x ./examples/servers/
func BenchmarkLighttpdReload(b *testing.B) {
	for _, sig := range []string{"INT", "TERM"} {
		b.Run(sig, func(b *testing.B) {
			r := recipeNamed(b, "lighttpd")
			r.flags = []string{"--ready", "delay=1s", "--stop-signal", sig}
			rn := startRecipe(b, r, workers, nil)
			l := startLoad(b, rn.addr)
			l.waitOK(b, 20)
			before := l.snapshot()
			b.ResetTimer()
			for i := range b.N {
				if err := rn.c.Signal(syscall.SIGHUP); err != nil {
					b.Fatal(err)
				}
				rn.c.WaitLog("reload done", i+1)
				rn.c.WaitLog("worker exited", (i+1)*workers)
			}
			b.StopTimer()
			stats := l.stop()
			b.Logf("%d reloads with --stop-signal %s: %s", b.N, sig, stats.report())
			for _, mode := range []string{modeClose, modeKeepAlive} {
				failed := stats.failed(mode) - before.failed(mode)
				b.ReportMetric(float64(failed)/float64(b.N), "failed-"+mode+"/reload")
			}
		})
	}
}
