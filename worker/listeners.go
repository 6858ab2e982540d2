package worker

import (
	"context"
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
// Under --balance round-robin and least-conn a worker inherits no socket:
// the master keeps its listeners, accepts, and hands each connection to one
// worker. There Listeners returns one balanced listener (as [Listen] does)
// per listener of the master, in the same order and with the same
// addresses, so a program written for Listeners serves unchanged in every
// mode. It asks the master for them over the IPC connection, opening it
// (the hello) if nothing did before, and blocks until the master answers.
//
// The result is empty, with a nil error, when the process inherited no
// sockets and its master has none to balance (it was not started by
// clusterd or systemd): the caller then binds its own address. The caller
// owns the listeners and closes them; each is a close-on-exec duplicate,
// and the inherited fds themselves are closed and LISTEN_FDS, LISTEN_PID
// and LISTEN_FDNAMES are removed from the environment, so the program's
// own children do not see them. The sockets are taken once: a second call
// returns [ErrListenersTaken].
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
// [sockshare.UnknownFDName]). Ownership and the once-only rule are as for
// Listeners. Balanced listeners carry the names the same sockets would
// have had in LISTEN_FDNAMES; a datagram socket is not balanced, and under
// the balanced modes one among the master's listeners is an error naming it.
//
// Sockets a [Listen] call has taken already are not in the result; after
// Listeners or Sockets, Listen asks the master for every address.
func Sockets() ([]sockshare.Socket, error) {
	p := self()
	socks, err := p.takeInheritedAll()
	if err != nil || len(socks) > 0 {
		return socks, err
	}
	return p.balancedSockets()
}

// takeInheritedAll takes the inherited sockets not taken yet, once.
func (p *process) takeInheritedAll() ([]sockshare.Socket, error) {
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

// balancedSockets asks the master for a balanced listener of each listener
// its hello announced (none outside the balanced modes), leaving out those
// a Listen call returned already.
func (p *process) balancedSockets() ([]sockshare.Socket, error) {
	conn, err := p.ipcConn()
	if err != nil || conn == nil {
		return nil, err // ipcConn's error names the package
	}
	p.connMu.Lock()
	announced := p.announced
	p.connMu.Unlock()
	if len(announced) == 0 {
		return nil, nil
	}
	taken := p.handoff.open()
	var socks []sockshare.Socket
	fail := func(err error) ([]sockshare.Socket, error) {
		for _, s := range socks {
			s.Close() // the error being returned says why
		}
		return nil, fmt.Errorf("worker: %w", err)
	}
	for _, a := range announced {
		spec, err := sockshare.ParseSpec(a.Addr)
		if err != nil {
			return fail(fmt.Errorf("master's listener %s: %w", a.Name, err))
		}
		switch spec.Network {
		case "tcp", "tcp4", "tcp6", "unix":
		default:
			return fail(fmt.Errorf("master's socket %s (%s) is not balanced: --balance round-robin and least-conn hand workers stream connections only", a.Name, a.Addr))
		}
		ln, err := p.askMaster(context.Background(), conn, spec)
		if err != nil {
			return fail(fmt.Errorf("listen %s: %w", a.Addr, err))
		}
		if taken[ln] {
			continue
		}
		socks = append(socks, sockshare.Socket{Name: a.Name, Listener: ln})
	}
	return socks, nil
}

// open returns the balanced listeners that are open: those Listen (or an
// earlier Sockets) has handed to the program.
func (h *handoff) open() map[net.Listener]bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	open := make(map[net.Listener]bool, len(h.byID))
	for _, l := range h.byID {
		if !l.isClosed() {
			open[l] = true
		}
	}
	return open
}
