package master

import (
	"fmt"
	"math"
	"path"
	"strconv"
	"strings"
)

// The default worker count: the CPUs the master may use, as Go's own
// GOMAXPROCS default (Go 1.25+) counts them: the CPU quota of its cgroup
// (v2 cpu.max, v1 cpu.cfs_quota_us / cpu.cfs_period_us, the lowest along
// the path to the root), rounded up, and never more than the CPUs of the
// affinity mask. runtime.NumCPU alone counts the host's cores inside a
// 2-CPU container.

// cpuCount is a worker count and where it came from, for the log.
type cpuCount struct {
	n      int
	source string // "cgroup v2 cpu.max /sys/fs/cgroup/x: 150000 100000", "affinity mask"
}

// cgroupFS reads the cgroup files; tests give a directory of their own.
type cgroupFS interface {
	readFile(name string) ([]byte, error)
}

// cgroupCPU is one cgroup hierarchy that can hold a CPU limit: its mount
// point, the mount's root within the hierarchy, and the process's cgroup
// path in it.
type cgroupCPU struct {
	v2          bool
	mount, root string
	path        string
}

// findCPUCgroups reads /proc/self/mountinfo and /proc/self/cgroup (their
// contents) and returns the hierarchies that may limit the CPU.
func findCPUCgroups(mountinfo, cgroup string) []cgroupCPU {
	paths := map[string]string{} // "" for v2, else "cpu"
	for _, line := range strings.Split(cgroup, "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		if parts[0] == "0" && parts[1] == "" {
			paths[""] = parts[2]
			continue
		}
		for _, c := range strings.Split(parts[1], ",") {
			if c == "cpu" {
				paths["cpu"] = parts[2]
			}
		}
	}
	var out []cgroupCPU
	for _, line := range strings.Split(mountinfo, "\n") {
		// 36 35 98:0 /root /mnt rw,noatime master:1 - cgroup cgroup rw,cpu
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		f, g := strings.Fields(pre), strings.Fields(post)
		if len(f) < 5 || len(g) < 3 {
			continue
		}
		root, mnt := unescapeMount(f[3]), unescapeMount(f[4])
		switch {
		case g[0] == "cgroup2":
			if p, ok := paths[""]; ok {
				out = append(out, cgroupCPU{v2: true, mount: mnt, root: root, path: p})
			}
		case g[0] == "cgroup" && hasOption(g[2], "cpu"):
			if p, ok := paths["cpu"]; ok {
				out = append(out, cgroupCPU{mount: mnt, root: root, path: p})
			}
		}
	}
	return out
}

func hasOption(opts, want string) bool {
	for _, o := range strings.Split(opts, ",") {
		if o == want {
			return true
		}
	}
	return false
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// quota returns the lowest CPU limit (in CPUs) set on cg's cgroup or one
// of its ancestors up to the mount, and where it was read.
func (cg cgroupCPU) quota(fs cgroupFS) (cpus float64, where string, ok bool) {
	rel := cg.path
	if cg.root != "/" {
		// The mount shows only the subtree at root (a container's view).
		r := strings.TrimSuffix(cg.root, "/")
		if rel != r && !strings.HasPrefix(rel, r+"/") {
			return 0, "", false
		}
		rel = strings.TrimPrefix(rel, r)
	}
	rel = path.Clean("/" + rel)
	for {
		dir := path.Join(cg.mount, rel)
		if c, w, found := cg.limitAt(fs, dir); found && (!ok || c < cpus) {
			cpus, where, ok = c, w, true
		}
		if rel == "/" {
			return cpus, where, ok
		}
		rel = path.Dir(rel)
	}
}

// limitAt reads the CPU limit of the cgroup at dir.
func (cg cgroupCPU) limitAt(fs cgroupFS, dir string) (float64, string, bool) {
	if cg.v2 {
		b, err := fs.readFile(path.Join(dir, "cpu.max"))
		if err != nil {
			return 0, "", false
		}
		f := strings.Fields(string(b))
		if len(f) != 2 || f[0] == "max" {
			return 0, "", false
		}
		q, err1 := strconv.ParseFloat(f[0], 64)
		p, err2 := strconv.ParseFloat(f[1], 64)
		if err1 != nil || err2 != nil || q <= 0 || p <= 0 {
			return 0, "", false
		}
		return q / p, fmt.Sprintf("cgroup v2 %s: %s %s", path.Join(dir, "cpu.max"), f[0], f[1]), true
	}
	qb, err1 := fs.readFile(path.Join(dir, "cpu.cfs_quota_us"))
	pb, err2 := fs.readFile(path.Join(dir, "cpu.cfs_period_us"))
	if err1 != nil || err2 != nil {
		return 0, "", false
	}
	q, err1 := strconv.ParseFloat(strings.TrimSpace(string(qb)), 64)
	p, err2 := strconv.ParseFloat(strings.TrimSpace(string(pb)), 64)
	if err1 != nil || err2 != nil || q <= 0 || p <= 0 { // -1: no quota
		return 0, "", false
	}
	return q / p, fmt.Sprintf("cgroup v1 %s: cpu.cfs_quota_us %.0f / cpu.cfs_period_us %.0f", dir, q, p), true
}

// defaultCPUs combines the affinity mask's CPU count with the lowest
// quota of the hierarchies, rounded up, at least 1.
func defaultCPUs(affinity int, cgroups []cgroupCPU, fs cgroupFS) cpuCount {
	best := cpuCount{n: max(affinity, 1), source: "affinity mask"}
	for _, cg := range cgroups {
		cpus, where, ok := cg.quota(fs)
		if !ok {
			continue
		}
		n := max(int(math.Ceil(cpus)), 1)
		if n < best.n {
			best = cpuCount{n: n, source: where}
		}
	}
	return best
}
