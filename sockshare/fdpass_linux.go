package sockshare

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// RecvmsgFlags are the flags to pass to recvmsg(2) when the message may carry
// descriptors: MSG_CMSG_CLOEXEC makes the kernel install every received descriptor
// close-on-exec atomically, so that none leaks into a child started concurrently.
const RecvmsgFlags = unix.MSG_CMSG_CLOEXEC

// scmMaxFD is the most descriptors Linux carries in one message (SCM_MAX_FD in
// include/net/scm.h); sendmsg fails with EINVAL above it.
const scmMaxFD = 253

// RightsControl encodes fds as one SCM_RIGHTS control message, ready to pass as the
// oob argument of sendmsg(2) ([unix.Sendmsg], [net.UnixConn.WriteMsgUnix]). It returns
// nil when fds is empty.
//
// The caller keeps ownership of fds: sendmsg passes the kernel's open file
// descriptions to the peer as new descriptors, and the sender may close its own
// copies as soon as sendmsg has returned. Send the control message together with at
// least one byte of data; on a stream socket the descriptors arrive with the first
// byte of that data.
func RightsControl(fds []int) []byte {
	if len(fds) == 0 {
		return nil
	}
	return unix.UnixRights(fds...)
}

// RightsSpace returns the size of the control buffer that a receiver needs to receive
// up to maxFDs descriptors in one message. Because of alignment the buffer may have
// room for one more descriptor than asked; callers that enforce a limit check the
// count that [ParseRights] returns.
func RightsSpace(maxFDs int) int {
	if maxFDs <= 0 {
		return 0
	}
	return unix.CmsgSpace(maxFDs * 4)
}

// ParseRights returns the descriptors carried by the SCM_RIGHTS messages in oob, the
// control data filled in by recvmsg(2) (oob[:oobn]). Control messages of other types
// are ignored. The caller owns the returned descriptors and must close them.
//
// When oob is malformed, ParseRights closes every descriptor it could find in it and
// returns an error wrapping [ErrBadControl], so that no descriptor leaks. ParseRights
// does not look at recvmsg's flags: use [ParseRecvRights] to also turn MSG_CTRUNC into
// an error.
func ParseRights(oob []byte) ([]int, error) {
	return parseRights(oob, closeFD)
}

// ParseRecvRights is [ParseRights] for the result of one recvmsg(2) call: oob is the
// control data (oob[:oobn]) and flags the returned message flags. When flags has
// MSG_CTRUNC (the control buffer was too small for what the peer sent), it closes
// every descriptor that did arrive and returns an error wrapping
// [ErrControlTruncated]. It is what a receive loop calls after each recvmsg:
//
//	n, oobn, flags, _, err := unix.Recvmsg(fd, buf, oob, sockshare.RecvmsgFlags)
//	...
//	fds, err := sockshare.ParseRecvRights(oob[:oobn], flags)
func ParseRecvRights(oob []byte, flags int) ([]int, error) {
	fds, err := ParseRights(oob)
	if err != nil {
		return nil, err
	}
	if flags&unix.MSG_CTRUNC != 0 {
		closeFDs(fds, closeFD)
		return nil, fmt.Errorf("recvmsg: %d descriptors arrived and were closed: %w", len(fds), ErrControlTruncated)
	}
	return fds, nil
}

// parseRights walks the control messages of oob; closer closes descriptors on the
// error path (tests and fuzzing pass one that closes nothing).
func parseRights(oob []byte, closer func(int)) ([]int, error) {
	var fds []int
	for len(oob) > 0 {
		if len(oob) < unix.CmsgLen(0) {
			// A tail shorter than a header: the kernel never writes one, but its
			// length is not a message either.
			closeFDs(fds, closer)
			return nil, fmt.Errorf("%d trailing bytes shorter than a header: %w", len(oob), ErrBadControl)
		}
		hdr, data, rest, err := unix.ParseOneSocketControlMessage(oob)
		if err != nil {
			closeFDs(fds, closer)
			return nil, fmt.Errorf("control message header: %w", ErrBadControl)
		}
		if hdr.Level == unix.SOL_SOCKET && hdr.Type == unix.SCM_RIGHTS {
			for i := 0; i+4 <= len(data); i += 4 {
				fds = append(fds, int(int32(binary.NativeEndian.Uint32(data[i:i+4]))))
			}
			if len(data)%4 != 0 {
				closeFDs(fds, closer)
				return nil, fmt.Errorf("SCM_RIGHTS payload of %d bytes is not a whole number of descriptors: %w", len(data), ErrBadControl)
			}
		}
		oob = rest
	}
	for _, fd := range fds {
		if fd < 0 {
			closeFDs(fds, closer)
			return nil, fmt.Errorf("negative descriptor %d: %w", fd, ErrBadControl)
		}
	}
	return fds, nil
}

func closeFD(fd int) { _ = unix.Close(fd) } // an fd we were handed and cannot use: nothing to report

func closeFDs(fds []int, closer func(int)) {
	for _, fd := range fds {
		if fd >= 0 {
			closer(fd)
		}
	}
}

// SendFDs sends data with fds attached as one SCM_RIGHTS message over c. data must
// not be empty (the descriptors travel with its first byte). On a stream socket
// SendFDs writes all of data, finishing a partial first write with plain writes.
//
// The caller keeps ownership of fds and may close them once SendFDs returns; the
// peer receives new descriptors for the same open files. SendFDs never changes the
// descriptors' flags (it does not call [os.File.Fd]). It blocks until the message is
// written or c's write deadline passes. Concurrent calls on one stream socket may
// interleave their data when a first write is partial: callers that frame a stream
// serialise their writers.
func SendFDs(c *net.UnixConn, data []byte, fds ...int) error {
	if len(data) == 0 {
		return errors.New("sendfds: data must not be empty")
	}
	n, _, err := c.WriteMsgUnix(data, RightsControl(fds), nil)
	if err != nil {
		return fmt.Errorf("sendfds: %d descriptors: %w", len(fds), err)
	}
	if n < len(data) {
		if _, err := c.Write(data[n:]); err != nil {
			return fmt.Errorf("sendfds: rest of data after %d of %d bytes: %w", n, len(data), err)
		}
	}
	return nil
}

// RecvFDs receives one message from c into data and returns the number of data bytes
// read and the descriptors that came with it, at most maxFDs (0 means none are
// expected). Every descriptor is created close-on-exec by the kernel
// (MSG_CMSG_CLOEXEC); the caller owns the returned files and must close them. Each
// file's name is "fd N" with its descriptor number. Their blocking mode is the one
// the sender's socket had (they share its open file description), and RecvFDs does not
// change it.
//
// A message that carried more descriptors than maxFDs is an error wrapping
// [ErrTooManyFDs] (or [ErrControlTruncated] when the kernel had to drop some); a
// datagram longer than data is an error wrapping [ErrDataTruncated]. On every error
// the descriptors that arrived are closed and no file is returned; n still reports the
// data bytes read. RecvFDs blocks until a message arrives or c's read deadline
// passes; at end of stream it returns 0 and [io.EOF]. It is not safe for concurrent
// use on one connection.
//
// A stream socket has no message boundaries: the descriptors arrive with the read
// that returns the first byte sent with them, and that read may also return bytes
// written before them, or only part of what the sender wrote in one call (read the
// rest with [io.ReadFull]). Framing protocols such as clusterd's ipc package keep
// track of which frame the descriptors belong to.
func RecvFDs(c *net.UnixConn, data []byte, maxFDs int) (n int, fds []*os.File, err error) {
	if maxFDs < 0 {
		return 0, nil, fmt.Errorf("recvfds: negative descriptor limit %d", maxFDs)
	}
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, nil, fmt.Errorf("recvfds: %w", err)
	}
	// One extra slot: when a peer sends more than maxFDs, the kernel delivers what
	// fits and sets MSG_CTRUNC; alignment may also let maxFDs+1 fit without it.
	// No message carries more than scmMaxFD, which bounds the buffer.
	var oobArr [64]byte
	oob := oobArr[:]
	if space := RightsSpace(min(maxFDs, scmMaxFD) + 1); space > len(oob) {
		oob = make([]byte, space)
	} else {
		oob = oob[:space]
	}
	var oobn, flags int
	var opErr error
	err = rc.Read(func(fd uintptr) bool {
		n, oobn, flags, _, opErr = unix.Recvmsg(int(fd), data, oob, RecvmsgFlags)
		return opErr != unix.EAGAIN && opErr != unix.EWOULDBLOCK
	})
	if err != nil {
		return 0, nil, fmt.Errorf("recvfds: %w", err) // closed, or deadline
	}
	if opErr != nil {
		return 0, nil, fmt.Errorf("recvfds: %w", os.NewSyscallError("recvmsg", opErr))
	}
	raw, err := ParseRecvRights(oob[:oobn], flags)
	if err != nil {
		return n, nil, fmt.Errorf("recvfds: %w", err)
	}
	if flags&unix.MSG_TRUNC != 0 {
		closeFDs(raw, closeFD)
		return n, nil, fmt.Errorf("recvfds: %d bytes read, %d descriptors closed: %w", n, len(raw), ErrDataTruncated)
	}
	if len(raw) > maxFDs {
		closeFDs(raw, closeFD)
		return n, nil, fmt.Errorf("recvfds: %d descriptors received, limit %d, all closed: %w", len(raw), maxFDs, ErrTooManyFDs)
	}
	if n == 0 && oobn == 0 && len(data) > 0 && isStream(c) {
		// recvmsg on a stream socket returns 0 only at end of stream.
		return 0, nil, io.EOF
	}
	if len(raw) > 0 {
		fds = make([]*os.File, len(raw))
		for i, fd := range raw {
			fds[i] = os.NewFile(uintptr(fd), "fd "+strconv.Itoa(fd))
		}
	}
	return n, fds, nil
}

// isStream reports whether c is a SOCK_STREAM socket, from the address that package
// net recorded when c was created (no system call). Unknown means stream: the
// caller then reads a zero-byte result as end of stream, as for any stream.
func isStream(c *net.UnixConn) bool {
	switch a := c.LocalAddr().(type) {
	case *net.UnixAddr:
		return a == nil || a.Net == "unix"
	case nil:
		return true
	default:
		return a.Network() == "unix"
	}
}
