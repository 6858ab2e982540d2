package sockshare

import (
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// Dup returns a close-on-exec duplicate of the descriptor under c (a
// *net.TCPListener, *net.UnixConn, *os.File, ...) as a new *os.File named name. The
// caller owns the result and closes it; c is unchanged and still owned by its owner.
//
// Dup is the safe way to turn a listener into a file for a child. The duplicate
// shares c's open file description, hence its O_NONBLOCK flag, and Dup changes
// neither: it works through [syscall.RawConn.Control] and wraps the result with
// [os.NewFile], so [os.File.Fd] on it (which exec.Cmd.ExtraFiles calls) leaves the
// mode alone. The *os.File that net's File methods return does not have this
// property: its Fd switches the shared socket to blocking mode, for this process
// and every other holder at once.
func Dup(c syscall.Conn, name string) (*os.File, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("dup %s: %w", name, err)
	}
	nfd := -1
	var opErr error
	err = rc.Control(func(fd uintptr) {
		nfd, opErr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	})
	if err == nil && opErr != nil {
		err = os.NewSyscallError("fcntl F_DUPFD_CLOEXEC", opErr)
	}
	if err != nil {
		return nil, fmt.Errorf("dup %s: %w", name, err)
	}
	return os.NewFile(uintptr(nfd), name), nil
}

// Sockets converts socket files (from [Files], [Listen] or [RecvFDs]) into
// net.Listener and net.PacketConn values, one [Socket] per file in the same order,
// named after the files. The results are dups: the caller closes them, and still
// owns and closes the files, which Sockets does not change (closing a file after
// conversion is usual and does not affect its Socket).
//
// Package net needs its sockets in non-blocking mode, so a socket that was
// inherited in blocking mode leaves Sockets non-blocking, for every process sharing
// it; Sockets never makes a socket blocking.
//
// A file that is not a socket, or a stream socket that is not listening, is an
// error naming the file; on error Sockets closes what it created and returns none.
func Sockets(files []*os.File) ([]Socket, error) {
	out := make([]Socket, 0, len(files))
	for _, f := range files {
		s, err := fileSocket(f)
		if err != nil {
			closeSockets(out)
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

func fileSocket(f *os.File) (Socket, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return Socket{}, fmt.Errorf("socket %s: %w", f.Name(), err)
	}
	var sotype, listening int
	var opErr error
	err = rc.Control(func(fd uintptr) {
		sotype, opErr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TYPE)
		if opErr != nil {
			opErr = os.NewSyscallError("getsockopt SO_TYPE", opErr)
			return
		}
		if sotype == unix.SOCK_STREAM || sotype == unix.SOCK_SEQPACKET {
			listening, opErr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
			if opErr != nil {
				opErr = os.NewSyscallError("getsockopt SO_ACCEPTCONN", opErr)
			}
		}
	})
	if err == nil {
		err = opErr
	}
	if err != nil {
		if errors.Is(err, unix.ENOTSOCK) {
			return Socket{}, fmt.Errorf("socket %s: not a socket: %w", f.Name(), err)
		}
		return Socket{}, fmt.Errorf("socket %s: %w", f.Name(), err)
	}
	if sotype != unix.SOCK_DGRAM && listening == 0 {
		return Socket{}, fmt.Errorf("socket %s: stream socket is not listening", f.Name())
	}
	// Convert a dup made by Dup, not f itself: net.FileListener calls Fd on its
	// argument, which would switch the shared socket to blocking mode if f came
	// from package net.
	d, err := Dup(f, f.Name())
	if err != nil {
		return Socket{}, fmt.Errorf("socket %s: %w", f.Name(), err)
	}
	defer d.Close()
	s := Socket{Name: f.Name()}
	if sotype == unix.SOCK_DGRAM {
		s.PacketConn, err = net.FilePacketConn(d)
	} else {
		s.Listener, err = net.FileListener(d)
	}
	if err != nil {
		return Socket{}, fmt.Errorf("socket %s: %w", f.Name(), err)
	}
	return s, nil
}
