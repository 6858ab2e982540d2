package sockshare

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Files returns the sockets passed to this process by socket activation (systemd,
// or a clusterd master) as *os.File, in descriptor order from [ListenFDsStart]; each
// file's Name is the socket's LISTEN_FDNAMES entry. It reads the environment with
// [ParseListenEnv] for [os.Getpid]. When the process was not activated, Files
// returns an empty result and no error.
//
// Files marks every descriptor close-on-exec, so that programs this process starts
// do not inherit them by accident, and leaves their blocking mode alone: the
// returned files wrap the descriptors with [os.NewFile], which neither changes the
// mode nor lets [os.File.Fd] change it later. The caller owns the files (they are the
// inherited descriptors, not dups) and closes them, typically after converting them
// with [Sockets] or [net.FileListener]. When unsetEnv is true, Files removes
// LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES from the environment, whatever the
// outcome, so that children do not see them.
//
// Call Files once: every call wraps the same descriptors, and two *os.File for one
// descriptor close it twice. It fails, wrapping the fcntl error, if a descriptor it
// was promised is not open; it then wraps none of them.
func Files(unsetEnv bool) ([]*os.File, error) {
	n, names, err := activationEnv(unsetEnv)
	if err != nil || n == 0 {
		return nil, err
	}
	// Check and mark every descriptor before wrapping any, so that an error leaves
	// nothing half-owned.
	for i := range n {
		fd := ListenFDsStart + i
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC); err != nil {
			return nil, fmt.Errorf("socket activation: fd %d (%s): %w", fd, names[i], os.NewSyscallError("fcntl F_SETFD", err))
		}
	}
	files := make([]*os.File, n)
	for i := range n {
		files[i] = os.NewFile(uintptr(ListenFDsStart+i), names[i])
	}
	return files, nil
}
