package servers_test

import (
	"bytes"
	"fmt"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/clusterd/clusterd/master"
	"github.com/clusterd/clusterd/master/mastertest"
)

// testFallback is the least fallback delay of --ready listening in tests
// that check how the master sees the server waiting on its listener.
const testFallback = 30 * time.Second

// run is a recipe's cluster as a test drives it.
type run struct {
	t    testing.TB
	c    *mastertest.Cluster
	addr string
	mark string
	out  *outputTail
	// byHeader: answers name the slot and generation, mapped to a pid
	// through the master's "worker started" lines.
	byHeader bool
}

// startRecipe starts a recipe's cluster and returns once every worker is
// ready (by the recipe's --ready). n is the number of workers; extra, if
// not nil, changes the options further (the test's own settings, not the
// recipe's).
func startRecipe(t testing.TB, r recipe, n int, extra func(*master.Options)) *run {
	t.Helper()
	progs := r.find(t)
	port := freePort(t)
	opts, line := options(t, r, n, port, progs)
	dir, err := filepath.Abs(r.dir)
	if err != nil {
		t.Fatal(err)
	}
	opts.Dir = dir
	mark := fmt.Sprintf("%d-%d", os.Getpid(), rand.Uint64())
	opts.Env = append(opts.Env, markEnv+"="+mark)
	if r.env != nil {
		opts.Env = append(opts.Env, r.env(t, port)...)
	}
	if r.waits != "" && r.waits != "fallback" && opts.Ready.Kind == master.ReadyListening {
		// The test checks that the master saw the server waiting, not
		// that it started within the fallback delay: on a busy machine
		// a server may take longer than the recipe's fallback to start.
		opts.Ready.Delay = max(opts.Ready.Delay, testFallback)
		line += fmt.Sprintf(" (the test raises the fallback of --ready listening to %v)", opts.Ready.Delay)
	}
	out := &outputTail{}
	opts.Stdout, opts.Stderr = out, out
	if extra != nil {
		extra(&opts)
	}
	t.Logf("recipe: %s", line)
	rn := &run{t: t, mark: mark, out: out, byHeader: r.byHeader}
	// Registered before Start, so it runs after the master's own cleanup
	// has stopped the cluster: whatever is left then has escaped it.
	t.Cleanup(func() {
		for pid, p := range rn.leftovers() {
			t.Errorf("process of the cluster left after the master stopped, killed: %d %v", pid, p)
			syscall.Kill(pid, syscall.SIGKILL)
		}
		if t.Failed() {
			t.Logf("worker output (last %d bytes):\n%s", outputLimit, out.String())
		}
	})
	rn.c = mastertest.Start(t, opts)
	rn.addr = rn.c.Addr()
	return rn
}

// runRecipe runs the four checks of a recipe: N answering processes, a
// worker killed and replaced, a reload under load, and a clean stop.
func runRecipe(t testing.TB, r recipe) {
	rn := startRecipe(t, r, workers, nil)

	// 1. Every worker serves: answers come from as many distinct
	// processes as there are workers, each of them one of the cluster's.
	seen := rn.answerers(workers, nil)
	t.Logf("answered from %d processes: %v", len(seen), slices.Sorted(maps.Keys(seen)))
	rn.checkBacklog(r.backlog)
	rn.checkReadiness(r.waits)

	// 2. kill -9 a worker: the master restarts its slot, and the new
	// worker serves. Whatever the killed worker had started (gunicorn's
	// arbiter has a child per worker) goes with it.
	victim := lastLine(rn.c.Logs(), "worker ready", func(l map[string]any) bool { return num(l, "worker") == 0 })
	pid := num(victim, "pid")
	if pid <= 0 {
		t.Fatalf("no pid of worker 0 in the master's log (%v)", victim)
	}
	group := rn.processes(func(p proc) bool { return p.pgid == pid })
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill -9 worker 0 (pid %d): %v", pid, err)
	}
	exited := rn.c.WaitLog("worker exited", 1)
	if num(exited, "pid") != pid || exited["signal"] != "SIGKILL" {
		t.Fatalf("first exit: %v, want pid %d killed by SIGKILL", exited, pid)
	}
	ready := rn.c.WaitLog("worker ready", workers+1)
	if num(ready, "worker") != 0 || num(ready, "generation") != 2 {
		t.Fatalf("after kill -9 of worker 0: %v, want worker 0 generation 2 ready", ready)
	}
	rn.gone("the killed worker's processes", group)
	fresh := rn.answerers(1, seen)
	t.Logf("after kill -9 of pid %d (worker 0), pid %v answers", pid, slices.Collect(maps.Keys(fresh)))
	for p := range fresh {
		seen[p] = true
	}

	// 3. A rolling reload under a load that never retries refuses no
	// connection; the new workers serve.
	l := startLoad(t, rn.addr)
	l.waitOK(t, 20)
	before := l.snapshot()
	if err := rn.c.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	rn.c.WaitLog("reload done", 1)
	rn.c.WaitLog("worker exited", 1+workers)
	during := l.snapshot()
	l.waitOK(t, during.ok()+20)
	stats := l.stop()
	t.Logf("reload of %d workers under load: %s", workers, stats.report())
	if n := during.ok() - before.ok(); n == 0 {
		t.Errorf("no request succeeded during the reload: the load did not test it")
	}
	if n := stats.count("refused"); n > 0 {
		t.Errorf("reload refused %d connections, want 0", n)
	}
	mn, mx := readyDuringReload(rn.c.Logs())
	t.Logf("ready workers during the reload: min %d, max %d", mn, mx)
	rn.answerers(workers, seen)

	// 4. SIGTERM: the master drains every worker and returns; no process
	// of the cluster is left.
	all := rn.processes(func(proc) bool { return true })
	if err := rn.c.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := rn.c.Wait(); err != nil {
		t.Errorf("master after SIGTERM: %v, want a clean stop", err)
	}
	if left := rn.leftovers(); len(left) > 0 {
		t.Errorf("after SIGTERM, processes of the cluster are left: %v (it had %v)", left, all)
	}
}

// answerers sends batches of concurrent requests, each on a connection of
// its own, until n processes not in old have answered, and returns them.
// Every answerer must be a process of the cluster.
func (rn *run) answerers(n int, old map[int]bool) map[int]bool {
	rn.t.Helper()
	const batch = 4
	got := map[int]bool{}
	deadline := time.Now().Add(failAfter(rn.t))
	for len(got) < n {
		if time.Now().After(deadline) {
			rn.t.Fatalf("answers came from %v only, want %d processes other than %v", slices.Sorted(maps.Keys(got)), n, slices.Sorted(maps.Keys(old)))
		}
		results := make(chan answer, batch)
		for range batch {
			go func() { results <- get(rn.addr) }()
		}
		for range batch {
			a := <-results
			if a.err != nil {
				rn.t.Fatalf("GET /: %v", a.err)
			}
			pid := rn.pidOf(a)
			if pid == 0 || old[pid] {
				continue
			}
			if !rn.owns(pid) {
				rn.t.Fatalf("answer from pid %d, which is not a process of the cluster (answer %q)", pid, a.body)
			}
			got[pid] = true
		}
	}
	return got
}

// pidOf returns the pid that sent an answer, or fails the test.
func (rn *run) pidOf(a answer) int {
	rn.t.Helper()
	if !rn.byHeader {
		m := pidRE.FindStringSubmatch(a.body)
		if m == nil {
			rn.t.Fatalf("answer %q: want %q", a.body, pidRE)
		}
		pid, _ := strconv.Atoi(m[1])
		return pid
	}
	h := a.header.Get(workerHeader)
	slot, gen, ok := strings.Cut(h, ".")
	if !ok {
		rn.t.Fatalf("answer without %s: SLOT.GENERATION (got %q)", workerHeader, h)
	}
	l := lastLine(rn.c.Logs(), "worker started", func(l map[string]any) bool {
		return strconv.Itoa(num(l, "worker")) == slot && strconv.Itoa(num(l, "generation")) == gen
	})
	if l == nil {
		rn.t.Fatalf("answer from worker %s generation %s, which the master never started", slot, gen)
	}
	return num(l, "pid")
}

// checkReadiness reports how the master found each worker of the first
// generation ready, and how long it took, and checks the how against the
// recipe's waits.
func (rn *run) checkReadiness(want string) {
	rn.t.Helper()
	lines := rn.c.Logs()
	how := map[int]string{}
	for _, l := range lines {
		switch l["@message"] {
		case "worker waits on its listener":
			how[num(l, "pid")], _ = l["how"].(string)
		case "worker not seen waiting on its listener (a select or poll server?): ready after a delay",
			"worker has no inherited listener: ready after a delay",
			"worker not inspectable in /proc: ready after a delay":
			pid := num(l, "pid")
			if how[pid] == "fallback" {
				rn.t.Errorf("pid %d: the master logged its readiness fallback twice", pid)
			}
			how[pid] = "fallback"
		}
	}
	for _, l := range lines {
		if l["@message"] != "worker ready" || num(l, "generation") != 1 {
			continue
		}
		got := how[num(l, "pid")]
		rn.t.Logf("worker %d (pid %d) ready after %v by %q", num(l, "worker"), num(l, "pid"), l["duration"], got)
		if got != want {
			rn.t.Errorf("worker %d (pid %d) found ready by %q, want %q", num(l, "worker"), num(l, "pid"), got, want)
		}
	}
}

// checkBacklog compares the backlog of the shared socket, as ss(8) shows
// it, with what the recipe says the server leaves: want, capped by
// net.core.somaxconn, or the cap itself for 0.
func (rn *run) checkBacklog(want int) {
	rn.t.Helper()
	ss, err := exec.LookPath("ss")
	if err != nil {
		if ciMode() {
			rn.t.Fatalf("ss is not installed: .ci/run installs iproute2 under CI=true (%v)", err)
		}
		rn.t.Logf("listen backlog not checked: ss is not installed (apt-get install iproute2)")
		return
	}
	b, err := os.ReadFile("/proc/sys/net/core/somaxconn")
	if err != nil {
		rn.t.Fatal(err)
	}
	limit, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		rn.t.Fatalf("net.core.somaxconn %q: %v", b, err)
	}
	if want == 0 || want > limit {
		want = limit
	}
	_, port, err := net.SplitHostPort(rn.addr)
	if err != nil {
		rn.t.Fatal(err)
	}
	out, err := exec.Command(ss, "-Hltn", "sport = :"+port).Output()
	if err != nil {
		rn.t.Fatalf("ss -Hltn 'sport = :%s': %v", port, err)
	}
	// State Recv-Q Send-Q Local Peer: for a listener, Send-Q is the backlog.
	f := strings.Fields(string(out))
	if len(f) < 3 {
		rn.t.Fatalf("ss -Hltn 'sport = :%s' = %q, want one listening socket", port, out)
	}
	got, err := strconv.Atoi(f[2])
	if err != nil {
		rn.t.Fatalf("ss -Hltn 'sport = :%s' = %q: %v", port, out, err)
	}
	rn.t.Logf("listen backlog of the shared socket: %d", got)
	if got != want {
		rn.t.Errorf("listen backlog of the shared socket = %d, want %d", got, want)
	}
}

// owns reports whether pid is a live process of the cluster.
func (rn *run) owns(pid int) bool {
	p, ok := readProc(pid)
	return ok && p.mark == rn.mark
}

// processes returns the cluster's live processes that match keep.
func (rn *run) processes(keep func(proc) bool) map[int]proc {
	rn.t.Helper()
	ps, err := markedProcs(rn.mark)
	if err != nil {
		rn.t.Fatal(err)
	}
	for pid, p := range ps {
		if !keep(p) {
			delete(ps, pid)
		}
	}
	return ps
}

// gone waits until none of procs is alive, and fails the test naming the
// survivors at the failure deadline. A process that has just been killed
// is gone once the kernel has torn it down, a moment after the signal.
func (rn *run) gone(what string, procs map[int]proc) {
	rn.t.Helper()
	left := eventually(rn.t, func() map[int]proc {
		alive := map[int]proc{}
		for pid, p := range procs {
			if q, ok := readProc(pid); ok && q.mark == rn.mark && q.state != 'Z' {
				alive[pid] = p
			}
		}
		return alive
	})
	if len(left) > 0 {
		rn.t.Errorf("%s: still alive: %v", what, left)
	}
}

// leftovers waits until no process of the cluster is alive, and returns
// those still alive at the failure deadline (a process just killed leaves
// /proc a moment after its signal).
func (rn *run) leftovers() map[int]proc {
	rn.t.Helper()
	return eventually(rn.t, func() map[int]proc {
		ps, err := markedProcs(rn.mark)
		if err != nil {
			rn.t.Errorf("list the cluster's processes: %v", err)
			return nil
		}
		return ps
	})
}

// readyDuringReload replays the master's log and returns the fewest and
// the most workers that the master counted as serving (ready, not yet told
// to drain) from "reload started" to "reload done".
func readyDuringReload(lines []map[string]any) (lo, hi int) {
	ready := map[int]bool{}
	in := false
	lo = -1
	for _, l := range lines {
		switch l["@message"] {
		case "worker ready":
			ready[num(l, "pid")] = true
		case "draining worker", "worker exited":
			delete(ready, num(l, "pid"))
		case "reload started":
			in = true
		}
		if in {
			if lo < 0 || len(ready) < lo {
				lo = len(ready)
			}
			hi = max(hi, len(ready))
		}
		if l["@message"] == "reload done" {
			break
		}
	}
	return lo, hi
}

// lastLine returns the last log line with message msg that match accepts,
// or nil.
func lastLine(lines []map[string]any, msg string, match func(map[string]any) bool) map[string]any {
	for i := len(lines) - 1; i >= 0; i-- {
		if lines[i]["@message"] == msg && match(lines[i]) {
			return lines[i]
		}
	}
	return nil
}

// num returns a numeric field of a log line (JSON numbers decode as
// float64), or -1.
func num(l map[string]any, k string) int {
	if v, ok := l[k].(float64); ok {
		return int(v)
	}
	return -1
}

// failAfter bounds a wait of the test: until its deadline, less a margin
// for the report, or two minutes without one.
func failAfter(t testing.TB) time.Duration {
	if td, ok := t.(interface{ Deadline() (time.Time, bool) }); ok {
		if dl, ok := td.Deadline(); ok {
			return max(time.Until(dl)*9/10, 0)
		}
	}
	return 2 * time.Minute
}

// eventually polls check until it returns an empty map or the failure
// deadline passes, and returns its last result. It is for conditions with
// no event to wait on, such as a killed process leaving /proc; the poll
// interval is not a delay the test depends on.
func eventually[V any](t testing.TB, check func() map[int]V) map[int]V {
	deadline := time.Now().Add(min(failAfter(t), 10*time.Second))
	for {
		got := check()
		if len(got) == 0 || time.Now().After(deadline) {
			return got
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// outputLimit is how much of the workers' output a failed test prints.
const outputLimit = 16 << 10

// outputTail keeps the last outputLimit bytes of the workers' output.
type outputTail struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (o *outputTail) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.buf.Write(p)
	if extra := o.buf.Len() - outputLimit; extra > 0 {
		o.buf.Next(extra)
	}
	return len(p), nil
}

func (o *outputTail) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.String()
}

// answer is one response to GET /.
type answer struct {
	header http.Header
	body   string
	err    error
}
