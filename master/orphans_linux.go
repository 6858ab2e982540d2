package master

import (
	"bytes"
	"errors"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/clusterd/clusterd/ipc"
	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

// An exited worker's descendants die with it. Its process group gets
// SIGKILL in onExit; what left the group (setsid, a daemonizing helper) is
// found here: among the cluster's processes (memberSet.list, the sweep's
// enumeration), those whose /proc/PID/environ carries the worker's
// CLUSTERD_WORKER_ID and CLUSTERD_WORKER_GEN, which every descendant
// inherits. They get SIGKILL at once, like the group: the worker is gone,
// so there is nobody left for them to finish serving for. The hole: a
// descendant that cleared or rewrote its environment and left the group is
// caught only by the stop's sweep.

const (
	// orphanPasses bounds the looks per batch of exited workers: one more
	// after each look that killed something, for what those had forked
	// meanwhile (and, without a cgroup, for their children, reparented to
	// the master once their parent is gone).
	orphanPasses = 4
	// orphanWait bounds the wait for the killed ones to exit before the
	// next look.
	orphanWait = time.Second
)

// orphanKiller runs the looks off the loop's goroutine, one batch at a
// time: the exits that arrive during a look are handled by the next.
type orphanKiller struct {
	mu      sync.Mutex
	pending []workerKey
	set     memberSet // the latest copy: groups of workers started since count
	running bool
	wg      sync.WaitGroup
	log     hclog.Logger
}

// killDescendants kills, soon and off the calling goroutine, the processes
// of the cluster that descend from the exited worker (slot id, generation
// gen). It never blocks.
func (c *containment) killDescendants(id, gen int) {
	c.orphans.add(workerKey{id, gen}, c.set(), c.log)
}

func (k *orphanKiller) add(key workerKey, set memberSet, log hclog.Logger) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.pending, k.set, k.log = append(k.pending, key), set, log
	if k.running {
		return
	}
	k.running = true
	k.wg.Add(1)
	go k.run()
}

// wait returns once no look is running.
func (k *orphanKiller) wait() { k.wg.Wait() }

func (k *orphanKiller) run() {
	defer k.wg.Done()
	for {
		k.mu.Lock()
		keys, set, log := k.pending, k.set, k.log
		k.pending = nil
		if len(keys) == 0 {
			k.running = false
			k.mu.Unlock()
			return
		}
		k.mu.Unlock()
		killed, err := killOrphans(keys, set)
		for _, key := range keys {
			if n := killed[key]; n > 0 {
				log.Info("killed processes left by exited worker", "worker", key.id, "generation", key.gen, "processes", n)
			}
		}
		if err != nil {
			log.Warn("processes left by exited workers may still run", "error", err)
		}
	}
}

// killOrphans kills the members of set that descend from one of keys and
// counts them by worker. A process it may not signal does not stop it; the
// first such failure is returned.
func killOrphans(keys []workerKey, set memberSet) (map[workerKey]int, error) {
	want := make(map[workerKey]bool, len(keys))
	for _, key := range keys {
		want[key] = true
	}
	killed := make(map[workerKey]int)
	failed := make(map[int]bool) // not tried again in the next pass
	var first error
	for pass := 0; pass < orphanPasses; pass++ {
		var fds []int
		n := 0
		for _, pid := range set.list() {
			if failed[pid] {
				continue
			}
			key, fd, ok, err := killIfDescendant(pid, want)
			if err != nil {
				failed[pid] = true
				if first == nil {
					first = err
				}
				continue
			}
			if ok {
				killed[key]++
				n++
				if fd >= 0 {
					fds = append(fds, fd)
				}
			}
		}
		waitExited(fds, time.Now().Add(orphanWait))
		closeAll(fds)
		if n == 0 {
			break
		}
	}
	return killed, first
}

// killIfDescendant sends SIGKILL to pid when its environment names one of
// want, and returns its pidfd (-1 without pidfds) to wait on. A pidfd is
// opened before the environment is read, so that the signal reaches the
// process that was read, not a later one with the same pid.
func killIfDescendant(pid int, want map[workerKey]bool) (workerKey, int, bool, error) {
	fd, err := unix.PidfdOpen(pid, 0)
	switch {
	case errors.Is(err, unix.ENOSYS):
		fd = -1 // a kernel before 5.3: a pid reused meanwhile is the risk
	case err != nil:
		return workerKey{}, -1, false, nil // gone
	}
	env, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
	key, isWorker := workerOfEnv(env)
	if err != nil || !isWorker || !want[key] {
		if fd >= 0 {
			unix.Close(fd)
		}
		return workerKey{}, -1, false, nil
	}
	if fd >= 0 {
		err = unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0)
	} else {
		err = unix.Kill(pid, unix.SIGKILL)
	}
	if errors.Is(err, unix.ESRCH) {
		err = nil // exited meanwhile
	}
	if err != nil {
		if fd >= 0 {
			unix.Close(fd)
		}
		return key, -1, false, errors.New("kill " + strconv.Itoa(pid) + ": " + err.Error())
	}
	return key, fd, true, nil
}

// workerOfEnv finds CLUSTERD_WORKER_ID and CLUSTERD_WORKER_GEN in an
// environment as /proc/PID/environ holds it (NUL-separated).
func workerOfEnv(env []byte) (workerKey, bool) {
	var key workerKey
	var haveID, haveGen bool
	for kv := range bytes.SplitSeq(env, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte(ipc.EnvWorkerID+"=")); ok {
			n, err := strconv.Atoi(string(v))
			key.id, haveID = n, err == nil
		} else if v, ok := bytes.CutPrefix(kv, []byte(ipc.EnvWorkerGen+"=")); ok {
			n, err := strconv.Atoi(string(v))
			key.gen, haveGen = n, err == nil
		}
	}
	return key, haveID && haveGen
}

// waitExited waits until every pidfd of fds says its process exited, or
// until deadline.
func waitExited(fds []int, deadline time.Time) {
	for _, fd := range fds {
		for {
			ms := int(time.Until(deadline).Milliseconds())
			if ms <= 0 {
				return
			}
			n, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, ms)
			if err == unix.EINTR {
				continue
			}
			if n == 0 && err == nil {
				return // deadline
			}
			break
		}
	}
}

func closeAll(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}
