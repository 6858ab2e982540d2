//go:build !linux

package master

// acceptQueue has no TCP_INFO to read off Linux (where New fails anyway).
func (cs *clusterSockets) acceptQueue() (queued, limit int, ok bool) { return 0, 0, false }
