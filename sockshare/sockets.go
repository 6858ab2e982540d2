package sockshare

import (
	"errors"
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
