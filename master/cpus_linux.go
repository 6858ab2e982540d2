package master

import (
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

type osFS struct{}

func (osFS) readFile(name string) ([]byte, error) { return os.ReadFile(name) }

// defaultWorkers is the worker count when Options.Workers is 0: the CPUs of
// the affinity mask, lowered to the cgroup CPU quota, rounded up.
func defaultWorkers() cpuCount {
	affinity := runtime.NumCPU()
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err == nil && set.Count() > 0 {
		affinity = set.Count()
	}
	mountinfo, err1 := os.ReadFile("/proc/self/mountinfo")
	cgroup, err2 := os.ReadFile("/proc/self/cgroup")
	if err1 != nil || err2 != nil {
		return cpuCount{n: affinity, source: "affinity mask"}
	}
	return defaultCPUs(affinity, findCPUCgroups(string(mountinfo), string(cgroup)), osFS{})
}
