package main

import (
	"bufio"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// scrape returns the samples of a /metrics page by their name and labels
// as written ("clusterd_workers{state=\"ready\"}").
func scrape(t *testing.T, url string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	samples := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		samples[line[:i]] = v
	}
	return samples
}

// eventually polls the metrics until cond holds on them, up to the test's
// failure deadline: the subscriber applies events on its own goroutine.
func eventually(t *testing.T, url, what string, cond func(map[string]float64) bool) map[string]float64 {
	t.Helper()
	deadline := time.Now().Add(failAfter(t))
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		s := scrape(t, url)
		if cond(s) {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics never showed %s; last scrape: %v", what, s)
		}
		<-tick.C
	}
}

func TestMetrics(t *testing.T) {
	t.Parallel()
	c := startCluster(t, clusterConfig{flags: []string{listenAny, "-w", "2", "--ready", "ipc", "--metrics", "127.0.0.1:0"}})
	_, e := c.waitLog(0, "metrics listening")
	url := "http://" + e.str("addr") + "/metrics"
	c.waitStarted()

	s := eventually(t, url, "2 ready workers", func(s map[string]float64) bool {
		return s[`clusterd_workers{state="ready"}`] == 2
	})
	for name, min := range map[string]float64{
		`clusterd_workers{state="starting"}`:                0,
		`clusterd_restarts_total{reason="signal"}`:          0,
		`clusterd_reloads_total{outcome="completed"}`:       0,
		`clusterd_ipc_messages_total{direction="received"}`: 1,
		`clusterd_ipc_messages_total{direction="sent"}`:     1,
		`clusterd_ipc_protocol_errors_total`:                0,
		`clusterd_worker_ready_seconds_count`:               2,
		`process_open_fds`:                                  1,
		`process_resident_memory_bytes`:                     1,
		`go_goroutines`:                                     1,
	} {
		v, ok := s[name]
		if !ok || v < min {
			t.Errorf("metric %s = %v (present %v), want at least %v", name, v, ok, min)
		}
	}

	// A worker killed from outside is restarted: counted by reason.
	if code, _, errs := c.ctl("signal", "KILL", "--slot", "0"); code != 0 {
		t.Fatalf("signal: exit %d: %s", code, errs)
	}
	eventually(t, url, "a restart by signal", func(s map[string]float64) bool {
		return s[`clusterd_restarts_total{reason="signal"}`] == 1 && s[`clusterd_workers{state="ready"}`] == 2
	})

	if code, _, errs := c.ctl("reload", "--wait"); code != 0 {
		t.Fatalf("reload --wait: exit %d: %s", code, errs)
	}
	s = eventually(t, url, "a completed reload", func(s map[string]float64) bool {
		return s[`clusterd_reloads_total{outcome="completed"}`] == 1
	})
	if n := s[`clusterd_reload_duration_seconds_count{outcome="completed"}`]; n != 1 {
		t.Errorf("reload duration count %v, want 1", n)
	}
	if n := s[`clusterd_restarts_total{reason="signal"}`]; n != 1 {
		t.Errorf("restarts by signal after a reload: %v, want still 1 (a reload is no restart)", n)
	}
}
