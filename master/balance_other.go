//go:build !linux

package master

import (
	"errors"
	"os"
)

// accepter is the accept side of balancing; the master runs on Linux only.
type accepter struct{}

func (b *balancer) startAccepter(f *os.File, id uint8, addr string) (*accepter, error) {
	return nil, errors.ErrUnsupported
}

func (a *accepter) shutdown() {}
