//go:build !linux

package ipc

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"time"
)

// errUnsupported is wrapped by the socket functions of non-Linux builds: the
// package compiles everywhere (worker links it), but connections exist on Linux
// only.
var errUnsupported = fmt.Errorf("ipc: not implemented on %s: %w", runtime.GOOS, errors.ErrUnsupported)

// socket is the Conn's socket; on this system none can be made.
type socket struct{}

func newSocket(f *os.File, spin time.Duration) (*socket, error) {
	_ = f.Close() // NewConn owns f; it cannot be used here
	return nil, fmt.Errorf("ipc: new conn: %w", errUnsupported)
}

func (s *socket) write(p, oob []byte) (int, error) { return 0, errUnsupported }

func (s *socket) read(p, oob []byte) (int, []int, error) { return 0, nil, errUnsupported }

func (s *socket) close() error { return nil }

func (s *socket) setReadDeadline(t time.Time) error { return errUnsupported }

func dupFiles(files []*os.File) ([]int, error) { return nil, errUnsupported }

func closeRawFDs(fds []int) {}

func dupRawFDs(dst, fds []int) ([]int, error) { return dst, errUnsupported }

func appendRights(b []byte, fds []int) []byte { return b }

func newFiles(fds []int) []*os.File { return nil }

// Pair returns the two ends of a new connected unix stream socketpair. It is
// implemented on Linux only; elsewhere it returns an error wrapping
// [errors.ErrUnsupported].
func Pair() (parent, child *os.File, err error) {
	return nil, nil, fmt.Errorf("ipc: pair: %w", errUnsupported)
}

func (s *socket) fd() (int, error) { return -1, errUnsupported }
