// Command clusterbench drives real load against clusterd and reports the
// figures recorded in docs/BENCHMARKS.md. It is run by bench/run.sh, which
// builds the binaries it needs; see that script for how to run it.
//
// Every scenario starts its own processes on 127.0.0.1 ports chosen by the
// kernel, waits on the master's JSON log events (never on sleeps, except the
// idle window it measures), and kills every process it started before it
// moves on.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type config struct {
	bin       string        // folder holding clusterd and hello
	duration  time.Duration // length of each wrk run
	conns     int           // wrk connections
	threads   int           // wrk threads
	reloads   int           // HUPs per reload run
	crashes   int           // kill -9 rounds for crash-to-ready
	big       int           // workers of the large RSS run
	idle      time.Duration // idle window for the CPU measurement
	window    time.Duration // window of the sampling CPU measurement
	step      time.Duration // autoscale load step
	scenarios string

	// compare
	src         string // repository root, for the scripts of the Node and Python targets
	node        string
	pm2         string
	pm2Home     string
	gunicorn    string
	rounds      int
	cmpReloads  int
	reloadConns int
	kills       int
	only        string // comma-separated short names of the targets to run
	out         string // JSON results
	mark        string // CLUSTERBENCH_MARK of every process started

	soakFor time.Duration

	// charts
	in        string // JSON results to draw
	chartsDir string
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == serialWorkerArg {
		os.Exit(serialWorker(os.Args[2:]))
	}
	var c config
	flag.StringVar(&c.bin, "bin", "bench/bin", "folder with the clusterd and hello binaries")
	flag.DurationVar(&c.duration, "d", 10*time.Second, "length of each throughput run")
	flag.IntVar(&c.conns, "c", 64, "wrk connections")
	flag.IntVar(&c.threads, "t", 2, "wrk threads")
	flag.IntVar(&c.reloads, "reloads", 20, "HUPs in each reload-under-load run")
	flag.IntVar(&c.crashes, "crashes", 30, "kill -9 rounds for the crash-to-ready time")
	flag.IntVar(&c.big, "big", 256, "workers in the large master-RSS run")
	flag.DurationVar(&c.idle, "idle", 10*time.Second, "idle window for the master CPU measurement")
	flag.StringVar(&c.scenarios, "run", "throughput,reload,crash,rss,idle,sampling,autoscale", "comma-separated scenarios (compare is run by bench/compare.sh)")
	flag.StringVar(&c.src, "src", ".", "compare: the repository root")
	flag.StringVar(&c.node, "node", "node", "compare: the node binary")
	flag.StringVar(&c.pm2, "pm2", "", "compare: the pm2 binary (empty: no PM2 target)")
	flag.StringVar(&c.pm2Home, "pm2-home", "bench/.pm2-home", "compare: PM2_HOME of the private PM2")
	flag.StringVar(&c.gunicorn, "gunicorn", "gunicorn", "compare: the gunicorn binary")
	flag.IntVar(&c.rounds, "rounds", 3, "compare: rounds, every target once per round")
	flag.IntVar(&c.cmpReloads, "cmp-reloads", 10, "compare: rolling reloads under load per target and round")
	flag.IntVar(&c.reloadConns, "reload-conns", 8, "compare: connections of each load client (keep-alive, close) during the reloads")
	flag.IntVar(&c.kills, "kills", 2, "compare: kill -9 of a worker per target and round")
	flag.StringVar(&c.only, "only", "", "compare: comma-separated short names of the targets to run (default all)")
	flag.StringVar(&c.out, "out", "bench/results/compare.json", "compare: where the results go")
	flag.DurationVar(&c.soakFor, "soak", 10*time.Minute, "soak: how long it runs (bench/soak.sh)")
	flag.StringVar(&c.in, "in", "bench/results/compare.json", "charts: the results of a compare run")
	flag.StringVar(&c.chartsDir, "charts-dir", "docs", "charts: where the PNG charts go (the table goes to stdout)")
	flag.DurationVar(&c.window, "window", 30*time.Second, "window of the sampling CPU measurement")
	flag.DurationVar(&c.step, "step", 10*time.Second, "length of the autoscale load step")
	flag.Parse()
	if c.scenarios == "charts" {
		// Drawing needs none of the binaries.
		if err := charts(c.in, c.chartsDir, os.Stdout); err != nil {
			fmt.Fprintf(os.Stderr, "clusterbench: charts: %v\n", err)
			os.Exit(1)
		}
		return
	}
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "clusterbench: unexpected arguments %q\n", flag.Args())
		os.Exit(2)
	}
	if err := run(c); err != nil {
		fmt.Fprintf(os.Stderr, "clusterbench: %v\n", err)
		os.Exit(1)
	}
}

func run(c config) error {
	// Every process started from here on inherits the mark, by which the
	// sweep (and bench/compare.sh's trap) finds what outlived its stop.
	c.mark = os.Getenv("CLUSTERBENCH_MARK")
	if c.mark == "" {
		c.mark = fmt.Sprintf("%d-%d", os.Getpid(), time.Now().UnixNano())
		os.Setenv("CLUSTERBENCH_MARK", c.mark)
	}
	if _, err := exec.LookPath("wrk"); err != nil {
		return errors.New("wrk not found on PATH (bench/run.sh installs it from Debian's packages)")
	}
	for _, name := range []string{"clusterd", "hello"} {
		if _, err := os.Stat(filepath.Join(c.bin, name)); err != nil {
			return fmt.Errorf("binary %s: %w (bench/run.sh builds it)", name, err)
		}
	}
	fmt.Printf("# clusterbench %s, %d CPUs, kernel %s\n", time.Now().UTC().Format(time.RFC3339), runtime.NumCPU(), kernel())
	for _, s := range strings.Split(c.scenarios, ",") {
		var err error
		switch strings.TrimSpace(s) {
		case "throughput":
			err = throughput(c)
		case "reload":
			err = reloadUnderLoad(c)
		case "crash":
			err = crashToReady(c)
		case "rss":
			err = masterRSS(c)
		case "idle":
			err = idleCPU(c)
		case "sampling":
			err = samplingCPU(c)
		case "autoscale":
			err = autoscaleReaction(c)
		case "compare":
			err = compare(c)
		case "soak":
			err = soak(c)
		default:
			err = fmt.Errorf("unknown scenario %q", s)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", s, err)
		}
	}
	return nil
}

// freePort asks the kernel for a free loopback port. The port is released
// before the server under test binds it, so a collision is possible but
// rare; a failed bind then shows as a clear error.
func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// proc is a started process in its own process group that dies with us.
type proc struct {
	cmd *exec.Cmd
}

func start(name string, args []string, stdout, stderr *os.File) (*proc, error) {
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return &proc{cmd: cmd}, nil
}

// stop sends SIGTERM to the group, then SIGKILL after grace, and waits.
func (p *proc) stop(grace time.Duration) { p.stopWith(-p.cmd.Process.Pid, grace) }

// stopLeader is stop with the SIGTERM sent to the group's leader alone.
func (p *proc) stopLeader(grace time.Duration) { p.stopWith(p.cmd.Process.Pid, grace) }

func (p *proc) stopWith(target int, grace time.Duration) {
	pid := p.cmd.Process.Pid
	_ = syscall.Kill(target, syscall.SIGTERM)
	done := make(chan struct{})
	go func() { p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(grace):
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		<-done
	}
	_ = syscall.Kill(-pid, syscall.SIGKILL) // stragglers of the group
}

// event is one JSON log line of the master.
type event struct {
	At      time.Time // when clusterbench read it
	Message string
	Fields  map[string]any
}

func (e event) int(key string) int {
	switch v := e.Fields[key].(type) {
	case float64:
		return int(v)
	case string:
		n, _ := strconv.Atoi(v)
		return n
	}
	return -1
}

// cluster is a running clusterd master with its log as a channel of events.
type cluster struct {
	*proc
	events chan event
	addr   string
}

// startCluster runs examples/hello under clusterd with workers workers,
// ready over IPC; extra flags go to `clusterd run`.
func startCluster(c config, workers int, extra ...string) (*cluster, error) {
	flags := append([]string{"--ready", "ipc"}, extra...)
	return startClusterCmd(c, workers, flags, []string{filepath.Join(c.bin, "hello")})
}

// startClusterCmd runs command under clusterd with workers workers and the
// given flags of `clusterd run`, and waits until all workers are ready.
func startClusterCmd(c config, workers int, flags, command []string) (*cluster, error) {
	addr, err := freePort()
	if err != nil {
		return nil, err
	}
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	args := append([]string{"run", "--listen", "tcp://" + addr, "-w", strconv.Itoa(workers),
		"--log-json", "--output", "raw", "--max-restarts", "-1"}, flags...)
	args = append(args, "--")
	args = append(args, command...)
	devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		return nil, err
	}
	p, err := start(filepath.Join(c.bin, "clusterd"), args, devnull, w)
	devnull.Close()
	w.Close()
	if err != nil {
		r.Close()
		return nil, err
	}
	cl := &cluster{proc: p, events: make(chan event, 4096), addr: addr}
	go func() {
		defer close(cl.events)
		defer r.Close()
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Bytes()
			if len(line) == 0 || line[0] != '{' {
				continue // a worker's own output
			}
			var m map[string]any
			if json.Unmarshal(line, &m) != nil {
				continue
			}
			msg, _ := m["@message"].(string)
			cl.events <- event{At: time.Now(), Message: msg, Fields: m}
		}
	}()
	if _, err := cl.wait("all workers ready", 2*time.Minute); err != nil {
		cl.stop(5 * time.Second)
		return nil, err
	}
	return cl, nil
}

// wait returns the next event with the given message, failing on a master
// error or exit.
func (cl *cluster) wait(msg string, timeout time.Duration) (event, error) {
	deadline := time.After(timeout)
	for {
		select {
		case e, ok := <-cl.events:
			if !ok {
				return event{}, fmt.Errorf("master exited while waiting for %q", msg)
			}
			if e.Message == msg {
				return e, nil
			}
			if lvl, _ := e.Fields["@level"].(string); lvl == "error" {
				return event{}, fmt.Errorf("master error while waiting for %q: %s %v", msg, e.Message, e.Fields["error"])
			}
		case <-deadline:
			return event{}, fmt.Errorf("no %q within %s", msg, timeout)
		}
	}
}

// wrkResult is what one wrk run reported.
type wrkResult struct {
	rps                        float64
	requests                   int
	p50, p99                   time.Duration
	connErr, readErr, writeErr int
	timeoutErr, non2xx         int
}

func (r wrkResult) errors() int {
	return r.connErr + r.readErr + r.writeErr + r.timeoutErr + r.non2xx
}

var (
	reRPS      = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	reRequests = regexp.MustCompile(`(\d+) requests in`)
	reSocket   = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
	reNon2xx   = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
	reLatency  = regexp.MustCompile(`(?m)^\s+(50|99)%\s+([0-9.]+)(us|ms|s)\s*$`)
)

func runWrk(ctx context.Context, c config, addr string, d time.Duration, closeConn bool) (wrkResult, error) {
	args := []string{"-t", strconv.Itoa(c.threads), "-c", strconv.Itoa(c.conns), "-d", d.String(), "--latency", "--timeout", "5s"}
	if closeConn {
		args = append(args, "-H", "Connection: close")
	}
	args = append(args, "http://"+addr+"/")
	out, err := exec.CommandContext(ctx, "wrk", args...).CombinedOutput()
	if err != nil {
		return wrkResult{}, fmt.Errorf("wrk: %w: %s", err, out)
	}
	return parseWrk(string(out))
}

func parseWrk(out string) (wrkResult, error) {
	var r wrkResult
	m := reRPS.FindStringSubmatch(out)
	if m == nil {
		return r, fmt.Errorf("wrk output without Requests/sec: %s", out)
	}
	r.rps, _ = strconv.ParseFloat(m[1], 64)
	if m := reRequests.FindStringSubmatch(out); m != nil {
		r.requests, _ = strconv.Atoi(m[1])
	}
	if m := reSocket.FindStringSubmatch(out); m != nil {
		r.connErr, _ = strconv.Atoi(m[1])
		r.readErr, _ = strconv.Atoi(m[2])
		r.writeErr, _ = strconv.Atoi(m[3])
		r.timeoutErr, _ = strconv.Atoi(m[4])
	}
	if m := reNon2xx.FindStringSubmatch(out); m != nil {
		r.non2xx, _ = strconv.Atoi(m[1])
	}
	for _, m := range reLatency.FindAllStringSubmatch(out, -1) {
		v, _ := strconv.ParseFloat(m[2], 64)
		unit := map[string]time.Duration{"us": time.Microsecond, "ms": time.Millisecond, "s": time.Second}[m[3]]
		d := time.Duration(v * float64(unit))
		if m[1] == "50" {
			r.p50 = d
		} else {
			r.p99 = d
		}
	}
	return r, nil
}

// throughput compares hello under clusterd (2 workers) with hello run
// directly as one process and as two SO_REUSEPORT processes, interleaved
// three times so that the machine's noise hits all three alike.
func throughput(c config) error {
	fmt.Printf("\n## throughput: wrk -t%d -c%d -d%s, keep-alive\n", c.threads, c.conns, c.duration)
	type setup struct {
		name  string
		start func() (addr string, stop func(), err error)
	}
	direct := func(n int) func() (string, func(), error) {
		return func() (string, func(), error) {
			addr, err := freePort()
			if err != nil {
				return "", nil, err
			}
			var ps []*proc
			stop := func() {
				for _, p := range ps {
					p.stop(5 * time.Second)
				}
			}
			args := []string{"-addr", addr}
			if n > 1 {
				args = append(args, "-reuseport")
			}
			for i := 0; i < n; i++ {
				p, err := start(filepath.Join(c.bin, "hello"), args, nil, nil)
				if err != nil {
					stop()
					return "", nil, err
				}
				ps = append(ps, p)
			}
			if err := waitServing(addr, 10*time.Second); err != nil {
				stop()
				return "", nil, err
			}
			return addr, stop, nil
		}
	}
	underClusterd := func(extra ...string) func() (string, func(), error) {
		return func() (string, func(), error) {
			cl, err := startCluster(c, 2, extra...)
			if err != nil {
				return "", nil, err
			}
			return cl.addr, func() { cl.stop(10 * time.Second) }, nil
		}
	}
	setups := []setup{
		{"hello, 1 process", direct(1)},
		{"hello, 2 processes (SO_REUSEPORT)", direct(2)},
		{"clusterd -w 2 (shared socket)", underClusterd()},
		{"clusterd -w 2 --balance reuseport", underClusterd("--balance", "reuseport")},
	}
	const rounds = 3
	rps := make([][]float64, len(setups))
	for round := 0; round < rounds; round++ {
		for i, s := range setups {
			addr, stop, err := s.start()
			if err != nil {
				return fmt.Errorf("%s: %w", s.name, err)
			}
			r, err := runWrk(context.Background(), c, addr, c.duration, false)
			stop()
			if err != nil {
				return fmt.Errorf("%s: %w", s.name, err)
			}
			if r.errors() > 0 {
				fmt.Printf("  %s: %d errors\n", s.name, r.errors())
			}
			rps[i] = append(rps[i], r.rps)
			fmt.Printf("  round %d  %-36s %10.0f req/s  p50 %-8s p99 %s\n", round+1, s.name, r.rps, r.p50, r.p99)
		}
	}
	fmt.Println("| setup | req/s (median of 3) |")
	fmt.Println("|---|---|")
	med := make([]float64, len(setups))
	for i, s := range setups {
		med[i] = median(rps[i])
		fmt.Printf("| %s | %.0f |\n", s.name, med[i])
	}
	for _, i := range []int{2, 3} {
		fmt.Printf("ratio %s / 2 processes: %.3f (per round:", setups[i].name, med[i]/med[1])
		for r := 0; r < rounds; r++ {
			fmt.Printf(" %.3f", rps[i][r]/rps[1][r])
		}
		fmt.Println(")")
	}
	return nil
}

// waitServing polls until addr accepts a connection: the direct runs have
// no readiness signal of their own.
func waitServing(addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			conn.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not serving after %s: %w", addr, timeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// reloadUnderLoad sends c.reloads HUPs while wrk keeps c.conns connections
// busy, once with keep-alive and once with a new connection per request,
// and compares p99 latency with a steady-state run of the same length.
func reloadUnderLoad(c config) error {
	for _, closeConn := range []bool{false, true} {
		if err := reloadRun(c, closeConn); err != nil {
			return err
		}
	}
	return nil
}

// reloadRun is one reload-under-load run; every process it starts (the
// cluster and wrk) is gone when it returns, on every path.
func reloadRun(c config, closeConn bool) error {
	mode := "keep-alive"
	if closeConn {
		mode = "new connection per request"
	}
	cl, err := startCluster(c, 2)
	if err != nil {
		return err
	}
	defer cl.stop(10 * time.Second)
	steady, err := runWrk(context.Background(), c, cl.addr, c.duration, closeConn)
	if err != nil {
		return err
	}
	// One reload of two workers takes well under a second; give each
	// HUP a one-second slot and let wrk run past the last one.
	d := time.Duration(c.reloads+2) * time.Second
	ctx, cancel := context.WithCancel(context.Background())
	type res struct {
		r   wrkResult
		err error
	}
	done := make(chan res, 1)
	go func() {
		r, err := runWrk(ctx, c, cl.addr, d, closeConn)
		done <- res{r, err}
	}()
	collected := false
	defer func() { // kills and waits for wrk if a reload fails
		cancel()
		if !collected {
			<-done
		}
	}()
	var reloadTimes []time.Duration
	time.Sleep(time.Second) // pacing: let wrk open its connections first
	for i := 0; i < c.reloads; i++ {
		t0 := time.Now()
		if err := cl.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			return err
		}
		e, err := cl.wait("reload done", 30*time.Second)
		if err != nil {
			return err
		}
		reloadTimes = append(reloadTimes, e.At.Sub(t0))
		if rest := time.Second - time.Since(t0); rest > 0 {
			time.Sleep(rest) // pacing: one HUP per second
		}
	}
	out := <-done
	collected = true
	if out.err != nil {
		return out.err
	}
	r := out.r
	fmt.Printf("\n## reload under load: %d HUPs, wrk -t%d -c%d -d%s, %s\n", c.reloads, c.threads, c.conns, d, mode)
	fmt.Printf("requests %d, failed %d (connect %d, read %d, write %d, timeout %d, non-2xx %d)\n",
		r.requests, r.errors(), r.connErr, r.readErr, r.writeErr, r.timeoutErr, r.non2xx)
	fmt.Printf("steady state: %.0f req/s, p50 %s, p99 %s (failed %d)\n", steady.rps, steady.p50, steady.p99, steady.errors())
	fmt.Printf("during reloads: %.0f req/s, p50 %s, p99 %s\n", r.rps, r.p50, r.p99)
	fmt.Printf("reload duration (HUP to \"reload done\"): median %s, max %s\n", medianDur(reloadTimes), maxDur(reloadTimes))
	return nil
}

// crashToReady kills a worker with SIGKILL and measures the time until its
// replacement reports ready over IPC.
func crashToReady(c config) error {
	const minUptime = time.Second // master.DefaultMinUptime
	cl, err := startCluster(c, 2)
	if err != nil {
		return err
	}
	defer cl.stop(10 * time.Second)
	pids, err := clusterWorkerPIDs(cl.cmd.Process.Pid)
	if err != nil {
		return err
	}
	var times []time.Duration
	for i := 0; i < c.crashes; i++ {
		// A worker that crashes within --min-uptime (default 1s) of its
		// start is restarted after a backoff; one that has been up longer
		// is replaced at once. Measure the latter, the case of a serving
		// worker that crashes: pace the kills past the min-uptime.
		time.Sleep(minUptime + 100*time.Millisecond)
		victim := pids[i%len(pids)]
		t0 := time.Now()
		if err := syscall.Kill(victim, syscall.SIGKILL); err != nil {
			return fmt.Errorf("kill %d: %w", victim, err)
		}
		e, err := cl.wait("worker ready", 30*time.Second)
		if err != nil {
			return err
		}
		times = append(times, e.At.Sub(t0))
		pids[i%len(pids)] = e.int("pid")
	}
	sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
	fmt.Printf("\n## crash-to-ready: %d × kill -9 of a worker, time until the replacement said ready (read from the master's log)\n", c.crashes)
	fmt.Printf("median %s, p90 %s, min %s, max %s\n", times[len(times)/2], times[len(times)*9/10], times[0], times[len(times)-1])
	return nil
}

// clusterWorkerPIDs lists a clusterd master's workers: those of its
// children that carry CLUSTERD_WORKER_ID, which the master's guardian
// process (also its child) does not.
func clusterWorkerPIDs(master int) ([]int, error) {
	kids, err := workerPIDs(master)
	if err != nil {
		return nil, err
	}
	key := []byte("CLUSTERD_WORKER_ID=")
	var pids []int
	for _, pid := range kids {
		env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		if err == nil && (bytes.HasPrefix(env, key) || bytes.Contains(env, append([]byte{0}, key...))) {
			pids = append(pids, pid)
		}
	}
	if len(pids) == 0 {
		return nil, fmt.Errorf("master %d has no worker among its children %v", master, kids)
	}
	return pids, nil
}

// workerPIDs lists the master's children: the children of each of its
// threads, since the kernel files a child under the thread that forked it.
func workerPIDs(master int) ([]int, error) {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", master))
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, t := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", master, t.Name()))
		if err != nil {
			continue // the thread ended meanwhile
		}
		for _, f := range strings.Fields(string(b)) {
			n, _ := strconv.Atoi(f)
			pids = append(pids, n)
		}
	}
	if len(pids) == 0 {
		return nil, errors.New("master has no children")
	}
	return pids, nil
}

// masterRSS reads VmRSS and VmHWM of the master with 2 and with c.big
// workers, once all of them are ready.
func masterRSS(c config) error {
	fmt.Printf("\n## master memory once all workers are ready\n")
	fmt.Println("| workers | master VmRSS | master VmHWM |")
	fmt.Println("|---|---|---|")
	for _, n := range []int{2, c.big} {
		cl, err := startCluster(c, n, "--ready-timeout", "2m")
		if err != nil {
			return err
		}
		rss, hwm, err := procMem(cl.cmd.Process.Pid)
		cl.stop(30 * time.Second)
		if err != nil {
			return err
		}
		fmt.Printf("| %d | %.1f MiB | %.1f MiB |\n", n, float64(rss)/1024, float64(hwm)/1024)
	}
	return nil
}

func procMem(pid int) (rssKiB, hwmKiB int, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "VmRSS:":
			rssKiB, _ = strconv.Atoi(f[1])
		case "VmHWM:":
			hwmKiB, _ = strconv.Atoi(f[1])
		}
	}
	return rssKiB, hwmKiB, nil
}

// idleCPU measures the master's CPU time and context switches (its
// wakeups) over an idle window with 2 ready workers and no traffic.
func idleCPU(c config) error {
	cl, err := startCluster(c, 2)
	if err != nil {
		return err
	}
	defer cl.stop(10 * time.Second)
	pid := cl.cmd.Process.Pid
	cpu0, sw0, err := procCPU(pid)
	if err != nil {
		return err
	}
	time.Sleep(c.idle) // the window being measured, not a synchronisation
	cpu1, sw1, err := procCPU(pid)
	if err != nil {
		return err
	}
	fmt.Printf("\n## master while idle: 2 ready workers, no traffic, %s window\n", c.idle)
	fmt.Printf("cpu time %s, context switches %d (%.1f/s), summed over all master threads\n",
		cpu1-cpu0, sw1-sw0, float64(sw1-sw0)/c.idle.Seconds())
	return nil
}

// procCPU returns utime+stime of a process and the context switches of all
// its threads.
func procCPU(pid int) (time.Duration, int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.Atoi(f[11])
	st, _ := strconv.Atoi(f[12])
	cpu := time.Duration(ut+st) * (time.Second / 100) // USER_HZ is 100 on Linux
	switches := 0
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, t := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", pid, t.Name()))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasSuffix(strings.SplitN(line, ":", 2)[0], "ctxt_switches") {
				n, _ := strconv.Atoi(strings.TrimSpace(strings.SplitN(line, ":", 2)[1]))
				switches += n
			}
		}
	}
	return cpu, switches, nil
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}

func medianDur(v []time.Duration) time.Duration {
	s := append([]time.Duration(nil), v...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

func maxDur(v []time.Duration) time.Duration {
	var m time.Duration
	for _, d := range v {
		m = max(m, d)
	}
	return m
}

func kernel() string {
	b, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return strings.TrimSpace(string(b))
}
