//go:build !linux

package master

// recordThreads has no /proc to read off Linux.
func recordThreads(w *worker, why string) {}
