//go:build !linux

package sockshare

import (
	"fmt"
	"os"
	"syscall"
)

// Dup returns a close-on-exec duplicate of the descriptor under c. It is
// implemented on Linux only; elsewhere it returns an error wrapping
// [errors.ErrUnsupported].
func Dup(c syscall.Conn, name string) (*os.File, error) {
	return nil, fmt.Errorf("dup %s: %w", name, errUnsupported)
}

// Sockets converts socket files into net.Listener and net.PacketConn values. It is
// implemented on Linux only; elsewhere it returns an error wrapping
// [errors.ErrUnsupported].
func Sockets(files []*os.File) ([]Socket, error) {
	return nil, fmt.Errorf("sockets: %w", errUnsupported)
}
