//go:build linux && !amd64 && !arm64

package master

import "golang.org/x/sys/unix"

// syscallWait says how syscall nr waits on a file, by the numbers of this
// architecture; only the syscalls every Linux port has are known.
func syscallWait(nr uint64) waitKind {
	switch nr {
	case unix.SYS_ACCEPT4:
		return waitAccept
	case unix.SYS_PPOLL:
		return waitPoll
	case unix.SYS_PSELECT6:
		return waitSelect
	}
	return waitNone
}
