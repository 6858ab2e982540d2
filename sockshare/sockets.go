package sockshare

import (
	"errors"
	"fmt"
	"net"
)

// Socket is one inherited socket converted for use with package net: exactly one
// of Listener and PacketConn is set.
type Socket struct {
	// Name is the socket's name: its LISTEN_FDNAMES entry, or the name of the
	// *os.File it was made from.
	Name string
	// Listener is set for listening stream sockets (TCP, unix stream and unix
	// seqpacket).
	Listener net.Listener
	// PacketConn is set for datagram sockets (UDP, unix datagram).
	PacketConn net.PacketConn
}

// Close closes the socket's Listener or PacketConn.
func (s Socket) Close() error {
	switch {
	case s.Listener != nil:
		return s.Listener.Close()
	case s.PacketConn != nil:
		return s.PacketConn.Close()
	}
	return nil
}

// closeSockets closes every socket of ss, for error paths.
func closeSockets(ss []Socket) error {
	var errs []error
	for _, s := range ss {
		if err := s.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Listeners is [Files] followed by [Sockets]: the sockets passed by socket
// activation, ready for use with package net, in descriptor order and named by
// LISTEN_FDNAMES. It closes the inherited descriptors once converted (the Sockets
// are dups, owned by the caller). unsetEnv is as for Files. When the process was not
// activated, Listeners returns an empty result and no error; on systems other than
// Linux, an activated process gets an error wrapping [errors.ErrUnsupported].
func Listeners(unsetEnv bool) ([]Socket, error) {
	files, err := Files(unsetEnv)
	if err != nil || len(files) == 0 {
		return nil, err
	}
	socks, err := Sockets(files)
	var errs []error
	for _, f := range files {
		if cerr := f.Close(); cerr != nil {
			errs = append(errs, fmt.Errorf("close inherited %s: %w", f.Name(), cerr))
		}
	}
	if err != nil {
		return nil, err
	}
	if err := errors.Join(errs...); err != nil {
		closeSockets(socks)
		return nil, err
	}
	return socks, nil
}
