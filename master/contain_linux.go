package master

import (
	"bytes"
	"errors"
	"os"
	"strconv"
	"strings"
	"syscall"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

// Containment: which processes belong to the cluster, and how they are
// found and stopped once the workers are gone. Each worker has its own
// process group (killed when the worker exits). What leaves the group
// (setsid, a daemonizing helper) is found, in the order of reliability:
//
//   - in the cluster's cgroup (Options.Contain, where one can be made), which
//     no process leaves without write access to another cgroup;
//   - among the master's own children, when it is a child subreaper: an
//     escaped process whose parent died is reparented to the master.
//
// The guardian (guardian_linux.go) uses the same facts when the master
// dies. The hole, without a cgroup: a process that left its worker's
// process group while its parent is still alive is nobody's child the
// master can see; if the master is killed then, the parent dies, the
// process is reparented to init and nothing kills it.

// containment is the cluster's membership. It is used from the loop's
// goroutine only (started, members, signal), except for the guardian,
// which locks its own state.
type containment struct {
	cg        *cgroup      // nil: no cgroup
	g         *guardian    // nil: no guardian
	subreaper bool         // orphans are reparented to the master
	intoCG    bool         // fork workers straight into cg (CLONE_INTO_CGROUP)
	groups    map[int]bool // process groups of workers, while they may have members
	log       hclog.Logger
}

// newContainment sets up what Options.Contain asks for: the cgroup where
// one can be made (a failure is logged, not fatal) and the guardian (a
// failure to start it is). It logs the mechanism in force in one line.
func newContainment(cfg *config, r *reaper, log hclog.Logger) (*containment, error) {
	c := &containment{subreaper: r.all, groups: make(map[int]bool), log: log}
	if !cfg.Contain {
		log.Info("containment", "mechanism", "process groups", "subreaper", c.subreaper)
		return c, nil
	}
	cg, cgErr := makeCgroup(os.Getpid())
	if cgErr == nil {
		c.cg, c.intoCG = cg, true
	}
	g, err := startGuardian(cfg.guardian, cg, r, log.Named("guardian"))
	if err != nil {
		c.close()
		return nil, err
	}
	c.g = g
	if cg == nil {
		// Without a cgroup the guardian learns of orphans as they come.
		r.notifyReaped(g.reaped)
		log.Info("containment", "mechanism", "guardian and process groups", "guardian", g.pid,
			"subreaper", c.subreaper, "cgroup_error", cgErr.Error())
		return c, nil
	}
	log.Info("containment", "mechanism", "cgroup and guardian", "cgroup", cg.dir, "guardian", g.pid)
	return c, nil
}

// forkAttr puts the worker about to be forked into the cluster's cgroup.
func (c *containment) forkAttr(sys *syscall.SysProcAttr) {
	if c.cg != nil && c.intoCG {
		sys.UseCgroupFD, sys.CgroupFD = true, c.cg.fd
	} else {
		sys.UseCgroupFD, sys.CgroupFD = false, 0
	}
}

// forkFailed reports whether a fork that failed with err should be tried
// again without CLONE_INTO_CGROUP (a kernel before 5.7 has no clone3 with
// it); workers are then moved into the cgroup after the fork.
func (c *containment) forkFailed(err error) bool {
	if !c.intoCG || !(errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EOPNOTSUPP)) {
		return false
	}
	c.intoCG = false
	c.log.Debug("fork into cgroup unsupported; moving workers after the fork", "error", err)
	return true
}

// started records a new worker (a process group of its own).
func (c *containment) started(pid int) {
	if c.cg != nil && !c.intoCG {
		// A child it forks before this write stays outside: the hole of
		// kernels without CLONE_INTO_CGROUP.
		if err := c.cg.add(pid); err != nil {
			c.log.Warn("worker not moved into the cluster's cgroup", "pid", pid, "error", err)
		}
	}
	for pgid := range c.groups {
		if unix.Kill(-pgid, 0) == unix.ESRCH {
			delete(c.groups, pgid)
			if c.g != nil {
				c.g.ungroup(pgid)
			}
		}
	}
	c.groups[pid] = true
	if c.g != nil {
		c.g.group(pid)
	}
}

// members lists the live processes of the cluster: the cgroup's, the
// master's children (as a subreaper, they are orphans of the cluster) and
// the members of the workers' process groups. Zombies do not count: they
// hold no fds. The guardian is not a member.
func (c *containment) members() []int {
	seen := make(map[int]bool)
	if c.cg != nil {
		pids, _ := c.cg.procs() // a cgroup read fails only if it is gone
		for _, pid := range pids {
			seen[pid] = true
		}
	}
	if c.subreaper {
		for _, pid := range ownChildren() {
			seen[pid] = true
		}
	}
	if c.g != nil {
		delete(seen, c.g.pid)
	}
	live := false
	for pgid := range c.groups {
		if unix.Kill(-pgid, 0) == unix.ESRCH {
			delete(c.groups, pgid)
		} else {
			live = true
		}
	}
	var pids []int
	if live {
		// Members of a process group are found only by looking at every
		// process; this runs once the workers are gone, not on a hot path.
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			pid, err := strconv.Atoi(e.Name())
			if err != nil || seen[pid] {
				continue
			}
			if st, ok := readProcStat(pid); ok && c.groups[st.pgrp] && st.state != 'Z' {
				pids = append(pids, pid)
			}
		}
	}
	for pid := range seen {
		if st, ok := readProcStat(pid); ok && st.state != 'Z' {
			pids = append(pids, pid)
		}
	}
	return pids
}

// signal sends sig to every process of the cluster.
func (c *containment) signal(sig syscall.Signal) {
	if c.cg != nil {
		if err := c.cg.signal(sig); err != nil {
			c.log.Debug("signal cgroup", "signal", signalName(sig), "error", err)
		}
	}
	for pgid := range c.groups {
		_ = unix.Kill(-pgid, sig) // ESRCH: empty by now
	}
	for _, pid := range c.members() {
		_ = unix.Kill(pid, sig) // ESRCH: exited meanwhile
	}
}

// close releases the cgroup (empty once the loop has ended: every stop
// waits for its members) and ends the guardian.
func (c *containment) close() {
	if c.cg != nil {
		if err := c.cg.remove(guardianGrace); err != nil {
			c.log.Warn("cluster cgroup left behind", "error", err)
		}
		c.cg.close()
	}
	if c.g != nil {
		c.g.close()
	}
}

// procStat is what the master reads of /proc/PID/stat.
type procStat struct {
	state byte
	pgrp  int
	start uint64 // start time in clock ticks after boot: with the pid, a process's identity
}

// readProcStat reads /proc/PID/stat; ok is false when pid is gone.
func readProcStat(pid int) (procStat, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, false
	}
	// "pid (comm) state ppid pgrp ... starttime ...": comm may hold spaces
	// and parens, so fields count from the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 || len(f[0]) != 1 {
		return procStat{}, false
	}
	pgrp, _ := strconv.Atoi(f[2])
	start, _ := strconv.ParseUint(f[19], 10, 64)
	return procStat{state: f[0][0], pgrp: pgrp, start: start}, true
}

// ownChildren lists the calling process's children (of every thread).
func ownChildren() []int {
	var pids []int
	tasks, _ := os.ReadDir("/proc/self/task")
	for _, task := range tasks {
		b, err := os.ReadFile("/proc/self/task/" + task.Name() + "/children")
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}
