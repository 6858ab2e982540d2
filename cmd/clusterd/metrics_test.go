package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/clusterd/clusterd/worker"
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

func init() { helpers["jobs"] = jobsHelper }

// jobsHelper serves HTTP on worker.Listeners (balanced listeners under
// --balance round-robin) and does jobs: a job "fail" is answered with an
// error, any other with "done". GET / answers "worker=W"; GET
// /submit?job=J submits job J, which the master gives another worker, and
// answers "result=R" or "error=E".
func jobsHelper(args []string) int {
	id, _ := worker.ID()
	worker.DrainOnSignal(syscall.SIGTERM)
	worker.HandleJobs(func(ctx context.Context, job worker.Job) (any, error) {
		var s string
		if err := job.Decode(&s); err != nil {
			return nil, err
		}
		if s == "fail" {
			return nil, errors.New("job failed on purpose")
		}
		return "done", nil
	})
	lns, err := worker.Listeners()
	if err != nil || len(lns) == 0 {
		fmt.Fprintf(os.Stderr, "jobs helper: listeners %d, %v\n", len(lns), err)
		return 1
	}
	if err := worker.Ready(); err != nil {
		fmt.Fprintf(os.Stderr, "jobs helper: %v\n", err)
		return 1
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "worker=%d\n", id)
	})
	mux.HandleFunc("/submit", func(w http.ResponseWriter, r *http.Request) {
		m, err := worker.Submit(r.Context(), r.URL.Query().Get("job"))
		var res string
		if err == nil {
			err = m.Decode(&res)
		}
		if err != nil {
			fmt.Fprintf(w, "error=%v\n", err)
			return
		}
		fmt.Fprintf(w, "result=%s\n", res)
	})
	if err := worker.ServeHTTP(context.Background(), &http.Server{Handler: mux}, lns...); err != nil {
		fmt.Fprintf(os.Stderr, "jobs helper: %v\n", err)
		return 1
	}
	return 0
}

// sumSamples adds up the samples of metric name whose labels include
// every one of labels (`outcome="lost"`), and counts them.
func sumSamples(s map[string]float64, name string, labels ...string) (sum float64, n int) {
	for k, v := range s {
		rest, ok := strings.CutPrefix(k, name+"{")
		if !ok {
			continue
		}
		all := true
		for _, l := range labels {
			all = all && strings.Contains(rest, l)
		}
		if all {
			sum += v
			n++
		}
	}
	return sum, n
}

func TestMetricsHandOffsAndJobs(t *testing.T) {
	t.Parallel()
	c := startCluster(t, clusterConfig{
		flags:  []string{listenAny, "-w", "2", "--ready", "ipc", "--balance", "round-robin", "--metrics", "127.0.0.1:0"},
		helper: "jobs",
	})
	_, e := c.waitLog(0, "metrics listening")
	url := "http://" + e.str("addr") + "/metrics"
	addr, _ := c.waitStarted()

	const plain = 20
	for range plain {
		get(t, "http://"+addr+"/")
	}
	jobs := []string{"ok", "ok", "ok", "fail"}
	for _, job := range jobs {
		body := get(t, "http://"+addr+"/submit?job="+job)
		if want := map[bool]string{true: "error=", false: "result=done"}[job == "fail"]; !strings.HasPrefix(body, want) {
			t.Errorf("submit %s: %q, want it to start %q", job, body, want)
		}
	}
	// Every request came on a new connection, which the master handed to
	// one worker; round-robin gave each worker some. The counters are
	// read at the scrape, not applied from events: no wait.
	s := scrape(t, url)
	total := plain + len(jobs)
	if sum, n := sumSamples(s, "clusterd_handed_off_connections_total"); sum != float64(total) || n != 2 {
		t.Errorf("handed-off connections: %v over %d slots, want %d over 2", sum, n, total)
	}
	for _, slot := range []string{"0", "1"} {
		if v := s[`clusterd_handed_off_connections_total{slot="`+slot+`"}`]; v == 0 {
			t.Errorf("slot %s was handed no connection; samples %v", slot, s)
		}
	}
	for outcome, want := range map[string]float64{"completed": 3, "failed": 1, "lost": 0} {
		if sum, n := sumSamples(s, "clusterd_jobs_total", `outcome="`+outcome+`"`); sum != want || n != 2 {
			t.Errorf("jobs %s: %v over %d slots, want %v over 2", outcome, sum, n, want)
		}
	}
	c.signal(syscall.SIGTERM)
	if code, last := c.wait(); code != 0 {
		t.Errorf("clusterd after TERM exited %d (%s), want 0", code, last)
	}
}
