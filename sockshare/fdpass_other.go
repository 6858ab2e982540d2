//go:build !linux

package sockshare

import (
	"fmt"
	"net"
	"os"
)

// RecvmsgFlags are the flags to pass to recvmsg(2) when the message may carry
// descriptors. Descriptor passing is implemented on Linux only; elsewhere it is 0.
const RecvmsgFlags = 0

// RightsControl encodes fds as one SCM_RIGHTS control message. Descriptor passing is
// implemented on Linux only; elsewhere it returns nil.
func RightsControl(fds []int) []byte { return nil }

// RightsSpace returns the size of the control buffer needed to receive maxFDs
// descriptors. Descriptor passing is implemented on Linux only; elsewhere it returns 0.
func RightsSpace(maxFDs int) int { return 0 }

// ParseRights returns the descriptors carried by SCM_RIGHTS messages in oob.
// It is implemented on Linux only; elsewhere it returns an error wrapping
// [errors.ErrUnsupported].
func ParseRights(oob []byte) ([]int, error) {
	return nil, fmt.Errorf("parse SCM_RIGHTS: %w", errUnsupported)
}

// ParseRecvRights is [ParseRights] that also checks recvmsg's flags. It is implemented
// on Linux only; elsewhere it returns an error wrapping [errors.ErrUnsupported].
func ParseRecvRights(oob []byte, flags int) ([]int, error) {
	return nil, fmt.Errorf("parse SCM_RIGHTS: %w", errUnsupported)
}

// SendFDs sends data with fds attached over c. It is implemented on Linux only;
// elsewhere it returns an error wrapping [errors.ErrUnsupported].
func SendFDs(c *net.UnixConn, data []byte, fds ...int) error {
	return fmt.Errorf("sendfds: %w", errUnsupported)
}

// RecvFDs receives one message and its descriptors from c. It is implemented on
// Linux only; elsewhere it returns an error wrapping [errors.ErrUnsupported].
func RecvFDs(c *net.UnixConn, data []byte, maxFDs int) (n int, fds []*os.File, err error) {
	return 0, nil, fmt.Errorf("recvfds: %w", errUnsupported)
}
