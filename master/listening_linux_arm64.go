package master

import "golang.org/x/sys/unix"

// syscallWait says how syscall nr waits on a file, by arm64's numbers
// (which has no poll or select: its C libraries call ppoll and pselect6).
func syscallWait(nr uint64) waitKind {
	switch nr {
	case unix.SYS_ACCEPT, unix.SYS_ACCEPT4:
		return waitAccept
	case unix.SYS_PPOLL:
		return waitPoll
	case unix.SYS_PSELECT6:
		return waitSelect
	}
	return waitNone
}
