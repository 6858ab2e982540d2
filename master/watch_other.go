//go:build !linux

package master

import (
	"errors"
	"net"
	"os"
)

// The listener watch (watch_linux.go) runs on Linux only; listen.go, which
// compiles everywhere, refers to these. Off Linux New fails first, so none
// of them is ever called.

// errNotSocket is a path that holds something other than a socket.
var errNotSocket = errors.New("not a socket")

// watchable reports whether check should watch the listener f bound to a:
// never off Linux.
func watchable(f *os.File, a net.Addr) bool { return false }

// fileID returns the device and inode of the file at path; off Linux it
// returns an error wrapping [errors.ErrUnsupported].
func fileID(path string) (dev, ino uint64, err error) {
	return 0, 0, &os.PathError{Op: "lstat", Path: path, Err: errUnsupported}
}
