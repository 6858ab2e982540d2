package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// target is one way of running a 2-process HTTP server that the comparison
// measures.
type target struct {
	name  string
	short string // for the charts
	// floor marks the bare launcher: ratios are taken against it.
	floor bool
	start func(c config, workers int) (*running, error)
}

// running is a started target.
type running struct {
	addr string
	// sup is the process whose memory and CPU count as the supervisor's
	// (0 for a lone server, which has none).
	sup int
	// parent is the process whose children are the workers.
	parent int
	// clusterd: the workers are only those children that carry
	// CLUSTERD_WORKER_ID (the master's guardian is a child too).
	clusterd bool
	// reload replaces every worker and returns once the last old one is
	// gone; nil when the target has no reload.
	reload func() error
	// restarts says whether a killed worker is replaced.
	restarts bool
	stop     func()
}

func (r *running) workers() ([]int, error) {
	if r.clusterd {
		return clusterWorkerPIDs(r.parent)
	}
	return workerPIDs(r.parent)
}

// compareTargets are the rows of the comparison, in the order they run in
// each round.
func compareTargets() []target {
	return []target{
		{name: "Go server, 1 process", short: "go 1 proc", start: startGoAlone},
		{name: "Go server, 2 processes, bench/launcher (floor)", short: "floor", floor: true, start: startLauncher},
		{name: "clusterd shared + Go server", short: "cd shared", start: clusterdGo("shared")},
		{name: "clusterd reuseport + Go server", short: "cd reuseport", start: clusterdGo("reuseport")},
		{name: "clusterd + examples/hello (library worker)", short: "cd hello", start: clusterdHello},
		{name: "clusterd --balance round-robin + examples/hello", short: "cd rr", start: clusterdBalanced("round-robin")},
		{name: "clusterd --balance least-conn + examples/hello", short: "cd least-conn", start: clusterdBalanced("least-conn")},
		{name: "clusterd + Node server on fd 3", short: "cd node", start: clusterdNode},
		{name: "Node cluster, round-robin", short: "node rr", start: nodeCluster("rr")},
		{name: "Node cluster, SCHED_NONE", short: "node none", start: nodeCluster("none")},
		{name: "PM2 cluster mode", short: "pm2", start: startPM2},
		{name: "gunicorn, sync workers", short: "gunicorn", start: startGunicorn},
	}
}

// benchEnv is the environment of a process the comparison starts: ours,
// which carries the run's mark (CLUSTERBENCH_MARK) by which the sweep finds
// whatever outlived its stop, and bench/compare.sh whatever outlived
// clusterbench, plus extra.
func benchEnv(c config, extra ...string) []string {
	return append(os.Environ(), extra...)
}

func startEnv(c config, env []string, name string, args ...string) (*proc, error) {
	cmd := exec.Command(name, args...)
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return &proc{cmd: cmd}, nil
}

// waitWorkers waits until parent has n children and addr answers.
func waitWorkers(addr string, parent, n int, timeout time.Duration) error {
	if err := waitServing(addr, timeout); err != nil {
		return err
	}
	deadline := time.Now().Add(timeout)
	for {
		pids, _ := workerPIDs(parent)
		if len(pids) == n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("process %d has %d children after %s, want %d", parent, len(pids), timeout, n)
		}
		time.Sleep(5 * time.Millisecond) // polling /proc: no event to wait on
	}
}

func startGoAlone(c config, _ int) (*running, error) {
	addr, err := freePort()
	if err != nil {
		return nil, err
	}
	p, err := startEnv(c, benchEnv(c), filepath.Join(c.bin, "goserver"), "-addr", addr)
	if err != nil {
		return nil, err
	}
	r := &running{addr: addr, stop: func() { p.stop(5 * time.Second) }}
	if err := waitServing(addr, 10*time.Second); err != nil {
		r.stop()
		return nil, err
	}
	return r, nil
}

func startLauncher(c config, workers int) (*running, error) {
	addr, err := freePort()
	if err != nil {
		return nil, err
	}
	p, err := startEnv(c, benchEnv(c), filepath.Join(c.bin, "launcher"), "-addr", addr, "-n", strconv.Itoa(workers),
		"--", filepath.Join(c.bin, "goserver"))
	if err != nil {
		return nil, err
	}
	pid := p.cmd.Process.Pid
	r := &running{addr: addr, sup: pid, parent: pid, stop: func() { p.stop(5 * time.Second) }}
	if err := waitWorkers(addr, pid, workers, 10*time.Second); err != nil {
		r.stop()
		return nil, err
	}
	return r, nil
}

// clusterRunning adapts a clusterd master: reload is a HUP answered by the
// master's "reload done" event.
func clusterRunning(cl *cluster) *running {
	pid := cl.cmd.Process.Pid
	return &running{
		addr: cl.addr, sup: pid, parent: pid, restarts: true, clusterd: true,
		stop: func() { cl.stop(10 * time.Second) },
		reload: func() error {
			if err := cl.cmd.Process.Signal(syscall.SIGHUP); err != nil {
				return err
			}
			_, err := cl.wait("reload done", 60*time.Second)
			return err
		},
	}
}

func clusterdGo(balance string) func(config, int) (*running, error) {
	return func(c config, workers int) (*running, error) {
		cl, err := startClusterCmd(c, workers, []string{"--balance", balance, "--ready", "delay=300ms"},
			[]string{filepath.Join(c.bin, "goserver")})
		if err != nil {
			return nil, err
		}
		return clusterRunning(cl), nil
	}
}

func clusterdHello(c config, workers int) (*running, error) {
	cl, err := startCluster(c, workers)
	if err != nil {
		return nil, err
	}
	return clusterRunning(cl), nil
}

// clusterdBalanced is clusterdHello with the master accepting on the
// --listen socket and handing each connection to a worker over IPC.
func clusterdBalanced(balance string) func(config, int) (*running, error) {
	return func(c config, workers int) (*running, error) {
		cl, err := startCluster(c, workers, "--balance", balance)
		if err != nil {
			return nil, err
		}
		return clusterRunning(cl), nil
	}
}

func clusterdNode(c config, workers int) (*running, error) {
	cl, err := startClusterCmd(c, workers, []string{"--ready", "delay=300ms"},
		[]string{c.node, filepath.Join(c.src, "examples/node/server.js")})
	if err != nil {
		return nil, err
	}
	return clusterRunning(cl), nil
}

// nodeCluster runs bench/node/cluster.js, whose primary prints "all workers
// listening" and, after each HUP, "reload done".
func nodeCluster(policy string) func(config, int) (*running, error) {
	return func(c config, workers int) (*running, error) {
		addr, err := freePort()
		if err != nil {
			return nil, err
		}
		_, port, _ := strings.Cut(addr, ":")
		cmd := exec.Command(c.node, filepath.Join(c.src, "bench/node/cluster.js"))
		cmd.Env = benchEnv(c, "PORT="+port, "WORKERS="+strconv.Itoa(workers), "NODE_CLUSTER_SCHED_POLICY="+policy)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		out, err := cmd.StdoutPipe()
		if err != nil {
			return nil, err
		}
		if err := cmd.Start(); err != nil {
			return nil, err
		}
		p := &proc{cmd: cmd}
		lines := make(chan string, 16)
		go func() {
			defer close(lines)
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				lines <- sc.Text()
			}
		}()
		waitLine := func(want string) error {
			timeout := time.After(60 * time.Second)
			for {
				select {
				case l, ok := <-lines:
					if !ok {
						return fmt.Errorf("node cluster exited while waiting for %q", want)
					}
					if l == want {
						return nil
					}
				case <-timeout:
					return fmt.Errorf("node cluster: no %q within 60s", want)
				}
			}
		}
		pid := cmd.Process.Pid
		r := &running{
			addr: addr, sup: pid, parent: pid, restarts: true,
			stop: func() {
				// The primary alone: it disconnects its workers. SIGTERM to
				// the whole group lets a worker exit before the primary has
				// heard it, and the primary replaces it.
				p.stopLeader(10 * time.Second)
				for range lines { // the pipe is at EOF once the group is gone
				}
			},
			reload: func() error {
				if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
					return err
				}
				return waitLine("reload done")
			},
		}
		if err := waitLine("all workers listening"); err != nil {
			r.stop()
			return nil, err
		}
		if err := waitWorkers(addr, pid, workers, 10*time.Second); err != nil {
			r.stop()
			return nil, err
		}
		return r, nil
	}
}

// pm2 runs the private PM2 with its own PM2_HOME.
func pm2(c config, args ...string) error {
	cmd := exec.Command(c.pm2, args...)
	cmd.Env = benchEnv(c, "PM2_HOME="+c.pm2Home)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("pm2 %s: %w: %s", strings.Join(args, " "), err, lastLines(string(out), 5))
	}
	return nil
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(l[max(0, len(l)-n):], " | ")
}

// pm2God reads the pid of PM2's daemon, which supervises the workers.
func pm2God(c config) (int, error) {
	b, err := os.ReadFile(filepath.Join(c.pm2Home, "pm2.pid"))
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// startPM2 runs bench/node/app.js in PM2's cluster mode; reload is
// `pm2 reload`, which returns once every instance was replaced. Its daemon
// is not our child: stop is `pm2 kill`, then SIGKILL of whatever of it
// remains, by pid.
func startPM2(c config, workers int) (*running, error) {
	if c.pm2 == "" {
		return nil, errors.New("no pm2 (-pm2)")
	}
	addr, err := freePort()
	if err != nil {
		return nil, err
	}
	_, port, _ := strings.Cut(addr, ":")
	const name = "cmp"
	stop := func() {
		god, _ := pm2God(c)
		var pids []int
		if god > 0 {
			pids, _ = workerPIDs(god)
			pids = append(pids, god)
		}
		if err := pm2(c, "kill"); err != nil {
			fmt.Fprintf(os.Stderr, "clusterbench: %v\n", err)
		}
		for _, pid := range pids {
			if !waitExit(pid, 5*time.Second) {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	cmd := exec.Command(c.pm2, "start", filepath.Join(c.src, "bench/node/app.js"), "-i", strconv.Itoa(workers),
		"--name", name, "--interpreter", c.node)
	cmd.Env = benchEnv(c, "PM2_HOME="+c.pm2Home, "PORT="+port)
	if out, err := cmd.CombinedOutput(); err != nil {
		stop()
		return nil, fmt.Errorf("pm2 start: %w: %s", err, lastLines(string(out), 5))
	}
	god, err := pm2God(c)
	if err != nil {
		stop()
		return nil, err
	}
	r := &running{
		addr: addr, sup: god, parent: god, restarts: true, stop: stop,
		reload: func() error { return pm2(c, "reload", name) },
	}
	if err := waitWorkers(addr, god, workers, 30*time.Second); err != nil {
		stop()
		return nil, err
	}
	return r, nil
}

// startGunicorn runs bench/gunicorn/app.py with sync workers; a HUP
// replaces the workers, and the reload is done when none of the old ones is
// left and the new ones are all there.
func startGunicorn(c config, workers int) (*running, error) {
	if c.gunicorn == "" {
		return nil, errors.New("no gunicorn (-gunicorn)")
	}
	addr, err := freePort()
	if err != nil {
		return nil, err
	}
	p, err := startEnv(c, benchEnv(c), c.gunicorn, "-w", strconv.Itoa(workers), "-b", addr,
		"--chdir", filepath.Join(c.src, "bench/gunicorn"), "--log-level", "warning", "app:app")
	if err != nil {
		return nil, err
	}
	pid := p.cmd.Process.Pid
	r := &running{addr: addr, sup: pid, parent: pid, restarts: true, stop: func() { p.stop(10 * time.Second) }}
	r.reload = func() error {
		old, err := workerPIDs(pid)
		if err != nil {
			return err
		}
		if err := syscall.Kill(pid, syscall.SIGHUP); err != nil {
			return err
		}
		deadline := time.Now().Add(60 * time.Second)
		for {
			now, _ := workerPIDs(pid)
			fresh := len(now) == workers
			for _, n := range now {
				if slices.Contains(old, n) {
					fresh = false
				}
			}
			if fresh {
				return nil
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("gunicorn reload: workers %v after 60s, old ones %v", now, old)
			}
			time.Sleep(5 * time.Millisecond) // polling /proc: gunicorn reports nothing
		}
	}
	if err := waitWorkers(addr, pid, workers, 30*time.Second); err != nil {
		r.stop()
		return nil, err
	}
	return r, nil
}

// waitExit waits until pid is gone (or a zombie) and reports whether it
// went within timeout.
func waitExit(pid int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		if !alive(pid) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond) // not our child: no wait(2), poll /proc
	}
}

func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || (s[i+2] != 'Z' && s[i+2] != 'X')
}

// marked lists the live processes whose environment carries this run's
// mark.
func marked(mark string) []int {
	want := []byte("CLUSTERBENCH_MARK=" + mark + "\x00")
	ents, _ := os.ReadDir("/proc")
	var pids []int
	self := os.Getpid()
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		env, err := os.ReadFile("/proc/" + e.Name() + "/environ")
		if err == nil && strings.Contains(string(env), string(want)) && alive(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// sweep kills, by pid, every process of this run still alive, and says so:
// after a target's stop there must be none.
func sweep(c config, after string) int {
	if c.mark == "" {
		return 0
	}
	// A process the stop just SIGKILLed may not be gone yet.
	deadline := time.Now().Add(2 * time.Second)
	var left []int
	for _, pid := range marked(c.mark) {
		if !waitExit(pid, max(time.Until(deadline), time.Millisecond)) {
			left = append(left, pid)
		}
	}
	for _, pid := range left {
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		fmt.Fprintf(os.Stderr, "clusterbench: process %d (%s) outlived %s; killing it\n", pid,
			strings.ReplaceAll(strings.TrimSpace(string(cmdline)), "\x00", " "), after)
		syscall.Kill(pid, syscall.SIGKILL)
	}
	return len(left)
}
