package master

import "golang.org/x/sys/unix"

// syscallWait says how syscall nr waits on a file, by amd64's numbers.
func syscallWait(nr uint64) waitKind {
	switch nr {
	case unix.SYS_ACCEPT, unix.SYS_ACCEPT4:
		return waitAccept
	case unix.SYS_POLL, unix.SYS_PPOLL:
		return waitPoll
	case unix.SYS_SELECT, unix.SYS_PSELECT6:
		return waitSelect
	}
	return waitNone
}
