//go:build !linux

package sockshare

import (
	"fmt"
	"net"
	"os"
)

// Listen creates, binds and listens on a socket for spec. It is implemented on Linux
// only; elsewhere it returns an error wrapping [errors.ErrUnsupported].
func Listen(spec Spec, opts ListenOptions) (*os.File, error) {
	return nil, fmt.Errorf("listen %s: %w", spec, errUnsupported)
}

// Addr reports the address a socket file is bound to. It is implemented on Linux
// only; elsewhere it returns an error wrapping [errors.ErrUnsupported].
func Addr(f *os.File) (net.Addr, error) {
	return nil, fmt.Errorf("address of %s: %w", f.Name(), errUnsupported)
}
