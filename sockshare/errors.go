package sockshare

import (
	"errors"
	"fmt"
	"runtime"
)

// Errors that callers can test for with [errors.Is]. Functions wrap them with the
// subject (address, fd number, variable name) and, where one exists, the system call.
var (
	// ErrControlTruncated reports that the kernel truncated the control message of a
	// received message (MSG_CTRUNC): the receiver's buffer had no room for every
	// descriptor the peer sent. The descriptors that did arrive have been closed.
	ErrControlTruncated = errors.New("sockshare: control message truncated")

	// ErrDataTruncated reports that a datagram was longer than the receive buffer
	// (MSG_TRUNC). The descriptors that arrived with it have been closed.
	ErrDataTruncated = errors.New("sockshare: datagram truncated")

	// ErrTooManyFDs reports that a message carried more descriptors than the caller
	// allowed. Every descriptor of that message has been closed.
	ErrTooManyFDs = errors.New("sockshare: too many file descriptors")

	// ErrBadControl reports a control message that cannot be parsed.
	ErrBadControl = errors.New("sockshare: malformed control message")
)

// errUnsupported is wrapped by every function of the non-Linux builds.
var errUnsupported = fmt.Errorf("sockshare: not implemented on %s: %w", runtime.GOOS, errors.ErrUnsupported)
