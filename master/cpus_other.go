//go:build !linux

package master

import "runtime"

// defaultWorkers is runtime.NumCPU off Linux (where New fails anyway).
func defaultWorkers() cpuCount { return cpuCount{n: runtime.NumCPU(), source: "runtime.NumCPU"} }
