package workertest

import "syscall"

// sysProcAttr puts the worker in its own process group and makes it die
// with the test process.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
