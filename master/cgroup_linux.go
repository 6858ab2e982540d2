package master

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The cluster's cgroup: a cgroup v2 directory below the master's own
// cgroup that holds every worker and everything they start. A process
// cannot leave it without write access to another cgroup's cgroup.procs,
// so setsid, double forks and daemonizing helpers stay inside, and
// cgroup.kill (Linux 5.14) kills them all in one write.

// cgroup is one cluster's cgroup directory.
type cgroup struct {
	dir string
	fd  int // the directory (O_RDONLY|O_CLOEXEC), for CLONE_INTO_CGROUP; -1 in the guardian
}

// makeCgroup creates the cluster's cgroup, clusterd-PID below the cgroup v2
// directory of the calling process. It fails where there is no cgroup v2
// hierarchy, where it is read-only or not delegated to this user, or where
// a populated cgroup of that name exists (a previous master with the same
// pid whose leftovers are still running).
func makeCgroup(pid int) (*cgroup, error) {
	mount, root, err := cgroup2Mount()
	if err != nil {
		return nil, err
	}
	own, err := ownCgroup()
	if err != nil {
		return nil, err
	}
	// Inside a cgroup namespace both paths are relative to its root; on a
	// host the mount's root is "/".
	rel := strings.TrimPrefix(own, root)
	dir := filepath.Join(mount, rel, "clusterd-"+strconv.Itoa(pid))
	if err := os.Mkdir(dir, 0o755); err != nil {
		if !errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("create cgroup: %w", err)
		}
		c := &cgroup{dir: dir, fd: -1}
		if populated, perr := c.populated(); perr != nil || populated {
			return nil, fmt.Errorf("create cgroup %s: exists and has processes", dir)
		}
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		os.Remove(dir) // the open error is the one to report
		return nil, fmt.Errorf("open cgroup %s: %w", dir, err)
	}
	c := &cgroup{dir: dir, fd: fd}
	// A cgroup the master could create but not fill (a delegation that
	// stops at mkdir) is reported here, not at the first worker.
	if err := unix.Access(filepath.Join(dir, "cgroup.procs"), unix.W_OK); err != nil {
		c.close()
		os.Remove(dir)
		return nil, fmt.Errorf("cgroup %s: cgroup.procs: %w", dir, err)
	}
	return c, nil
}

// cgroup2Mount finds where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup
// on a unified host, /sys/fs/cgroup/unified on a hybrid one) and the root of
// the hierarchy that mount shows.
func cgroup2Mount() (mount, root string, err error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", "", fmt.Errorf("find cgroup2 mount: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// "36 35 98:0 /root /mnt rw,noatime master:1 - cgroup2 cgroup2 rw"
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		fs, fields := strings.Fields(post), strings.Fields(pre)
		if len(fs) < 1 || fs[0] != "cgroup2" || len(fields) < 5 {
			continue
		}
		return unescapeMount(fields[4]), unescapeMount(fields[3]), nil
	}
	if err := sc.Err(); err != nil {
		return "", "", fmt.Errorf("find cgroup2 mount: %w", err)
	}
	return "", "", errors.New("no cgroup2 hierarchy mounted")
}

// ownCgroup returns the calling process's cgroup v2 path ("0::/path").
func ownCgroup() (string, error) {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", fmt.Errorf("read own cgroup: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			return p, nil
		}
	}
	return "", errors.New("read own cgroup: no cgroup v2 entry in /proc/self/cgroup")
}

// add moves pid into the cgroup (for workers forked without
// CLONE_INTO_CGROUP).
func (c *cgroup) add(pid int) error {
	return c.write("cgroup.procs", strconv.Itoa(pid))
}

func (c *cgroup) write(name, v string) error {
	path := filepath.Join(c.dir, name)
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, werr := f.WriteString(v)
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		return fmt.Errorf("write %s: %w", path, werr)
	}
	return nil
}

// procs lists the cgroup's processes.
func (c *cgroup) procs() ([]int, error) {
	b, err := os.ReadFile(filepath.Join(c.dir, "cgroup.procs"))
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// populated reads "populated" of cgroup.events: whether any process is left
// in the cgroup or below it (zombies are not members).
func (c *cgroup) populated() (bool, error) {
	b, err := os.ReadFile(filepath.Join(c.dir, "cgroup.events"))
	if err != nil {
		return false, err
	}
	for _, line := range bytes.Split(b, []byte("\n")) {
		if v, ok := bytes.CutPrefix(line, []byte("populated ")); ok {
			return string(v) == "1", nil
		}
	}
	return false, fmt.Errorf("%s/cgroup.events: no populated key", c.dir)
}

// signal sends sig to every process of the cgroup. SIGKILL goes through
// cgroup.kill, which the kernel applies to every member and to processes
// forked meanwhile; without it (before Linux 5.14) each listed process is
// killed, again while new ones appear.
func (c *cgroup) signal(sig syscall.Signal) error {
	if sig == syscall.SIGKILL {
		err := c.write("cgroup.kill", "1")
		if err == nil || !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	for range 10 {
		pids, err := c.procs()
		if err != nil {
			return err
		}
		for _, pid := range pids {
			_ = unix.Kill(pid, sig) // ESRCH: it exited meanwhile
		}
		if sig != syscall.SIGKILL || len(pids) == 0 {
			return nil
		}
	}
	return nil
}

// remove deletes the cgroup directory once it is empty, waiting at most
// grace for its last members to exit.
func (c *cgroup) remove(grace time.Duration) error {
	deadline := time.Now().Add(grace)
	for {
		err := unix.Rmdir(c.dir)
		switch {
		case err == nil, errors.Is(err, unix.ENOENT):
			return nil
		case !errors.Is(err, unix.EBUSY) || time.Now().After(deadline):
			return fmt.Errorf("remove cgroup %s: %w", c.dir, os.NewSyscallError("rmdir", err))
		}
		// EBUSY: killed members are still exiting. The kernel would
		// announce the end on cgroup.events; a bounded retry every 5ms is
		// enough for a directory removed once, at the end.
		time.Sleep(5 * time.Millisecond)
	}
}

func (c *cgroup) close() {
	if c.fd >= 0 {
		unix.Close(c.fd)
		c.fd = -1
	}
}
