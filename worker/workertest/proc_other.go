//go:build !linux

package workertest

import "syscall"

// sysProcAttr puts the worker in its own process group. Outside Linux there
// is no parent-death signal: cleanup ends the worker.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
