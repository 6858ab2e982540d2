package worker

import (
	"errors"
	"fmt"
	"net"

	"github.com/clusterd/clusterd/sockshare"
)

// ErrListenersTaken is returned by [Listeners] and [Sockets] when the
// inherited sockets have already been taken by an earlier call.
var ErrListenersTaken = errors.New("worker: inherited listeners already taken")

// Listeners takes the stream sockets this process inherited through the
// systemd socket-activation protocol (LISTEN_FDS, checked against LISTEN_PID),
// which is how clusterd hands every worker its listeners, in the order of the
// master's --listen flags.
//
// The result is empty, with a nil error, when the process inherited no
// sockets (it was not started by clusterd or systemd): the caller then binds
// its own address. The caller owns the listeners and closes them; each is a
// close-on-exec duplicate, and the inherited fds themselves are closed and
// LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES are removed from the environment,
// so the program's own children do not see them. The sockets are taken
// once: a second call returns [ErrListenersTaken].
//
// The inherited sockets keep their non-blocking mode: they share their open
// file description, and with it O_NONBLOCK, with the master and every other
// worker, and the conversion never switches them to blocking. An inherited
// datagram socket (a udp:// listen address) is an error naming it: such a
// program takes its sockets with [Sockets].
func Listeners() ([]net.Listener, error) {
	socks, err := Sockets()
	if err != nil {
		return nil, err
	}
	lns := make([]net.Listener, 0, len(socks))
	for _, s := range socks {
		if s.Listener == nil {
			for _, s := range socks {
				s.Close() // the error being returned says why
			}
			return nil, fmt.Errorf("worker: inherited socket %s is a datagram socket: use worker.Sockets", s.Name)
		}
		lns = append(lns, s.Listener)
	}
	return lns, nil
}

// Sockets is [Listeners] for programs that also inherit datagram sockets:
// each [sockshare.Socket] holds a net.Listener or a net.PacketConn, and its
// name from LISTEN_FDNAMES (the NAME= prefix of the master's --listen, else
// the address). Ownership and the once-only rule are as for Listeners.
//
// Sockets a [Listen] call has taken already are not in the result; after
// Listeners or Sockets, Listen asks the master for every address.
func Sockets() ([]sockshare.Socket, error) {
	p := self()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.listenersTaken {
		return nil, ErrListenersTaken
	}
	err := p.loadInheritedLocked()
	p.listenersTaken = true
	if err != nil {
		return nil, fmt.Errorf("worker: %w", err)
	}
	socks := p.inherited
	p.inherited = nil
	return socks, nil
}
