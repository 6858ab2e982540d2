package worker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"

	"github.com/clusterd/clusterd/ipc"
	"github.com/clusterd/clusterd/sockshare"
)

// Listen returns a listener for network ("tcp", "tcp4", "tcp6" or "unix") and
// addr, wherever the process runs, so that one binary serves alone, under
// systemd socket activation and under clusterd in every balancing mode. Like
// Node's listen() in a cluster worker, it is the create-or-inherit call; it
// looks, in this order, for:
//
//  1. an inherited socket (LISTEN_FDS) whose LISTEN_FDNAMES name is addr
//     (the NAME= prefix of the master's --listen), or whose bound address is
//     addr: the same port and an IP of addr's host ("" and unspecified hosts
//     match each other), or the same unix path;
//  2. under clusterd (see [IsWorker]), the master: it asks for the address
//     with a listen request, and the master answers with the listening socket
//     itself over the IPC connection (SCM_RIGHTS), the same socket for every
//     worker that asks, created once and kept across restarts and reloads;
//  3. outside clusterd, a socket of its own, bound with [net.ListenConfig].
//
// Inherited sockets are taken once. Listen takes from the inherited set only
// the socket it returns; [Listeners] and [Sockets] take the ones still there
// (all of them when Listen was not called first), and after them Listen
// finds none and goes to the master. A second Listen of an inherited address
// therefore asks the master too. The first call converts the whole
// inherited set and removes LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES from
// the environment, as Listeners does, so the program's children do not see
// them.
//
// The caller owns the listener and closes it; closing it in one worker leaves
// the socket open in the master and the other workers. Errors name network
// and addr: a bad address, an inherited datagram socket of that name, or the
// master's refusal, an [*ipc.RemoteError] with code [ipc.CodeListen] (it
// could not bind), [ipc.CodeForbidden] (it does not let workers open that
// address) or [ipc.CodeLimit] (too many listen requests). ctx bounds name
// resolution and the wait for the master. Listen is safe for concurrent use.
func Listen(ctx context.Context, network, addr string) (net.Listener, error) {
	ln, err := self().listen(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("worker: listen %s %s: %w", network, addr, err)
	}
	return ln, nil
}

func (p *process) listen(ctx context.Context, network, addr string) (net.Listener, error) {
	switch network {
	case "tcp", "tcp4", "tcp6", "unix":
	default:
		return nil, fmt.Errorf("network %q: want tcp, tcp4, tcp6 or unix", network)
	}
	byName := func(s sockshare.Socket) (bool, error) {
		if s.Name != addr {
			return false, nil
		}
		return true, usable(s, network)
	}
	if s, ok, err := p.takeInherited(byName); err != nil || ok {
		return s.Listener, err
	}
	spec, err := sockshare.ParseSpec(network + "://" + addr)
	if err != nil {
		return nil, err
	}
	match, err := addrMatcher(ctx, spec)
	if err != nil {
		return nil, err
	}
	byAddr := func(s sockshare.Socket) (bool, error) {
		return s.Listener != nil && match(s.Listener.Addr()), nil
	}
	if s, ok, err := p.takeInherited(byAddr); err != nil || ok {
		return s.Listener, err
	}
	conn, err := p.ipcConn()
	if err != nil {
		return nil, err
	}
	if conn == nil {
		var lc net.ListenConfig
		return lc.Listen(ctx, network, addr)
	}
	return p.askMaster(ctx, conn, spec)
}

// usable reports why inherited socket s cannot be the listener Listen was
// asked for on network: a datagram socket, or one of another network.
func usable(s sockshare.Socket, network string) error {
	if s.Listener == nil {
		return fmt.Errorf("inherited socket %s is a datagram socket: use worker.Sockets", s.Name)
	}
	if _, isUnix := s.Listener.Addr().(*net.UnixAddr); isUnix != (network == "unix") {
		return fmt.Errorf("inherited socket %s is a %s socket, not %s", s.Name, s.Listener.Addr().Network(), network)
	}
	return nil
}

// takeInherited removes from the inherited set, loading it on first use, the
// first socket that match accepts. A socket that matches with an error
// stays in the set, and the error is returned.
func (p *process) takeInherited(match func(sockshare.Socket) (bool, error)) (sockshare.Socket, bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.loadInheritedLocked(); err != nil {
		return sockshare.Socket{}, false, err
	}
	for i, s := range p.inherited {
		ok, err := match(s)
		if err != nil {
			return sockshare.Socket{}, false, err
		}
		if ok {
			p.inherited = append(p.inherited[:i], p.inherited[i+1:]...)
			return s, true, nil
		}
	}
	return sockshare.Socket{}, false, nil
}

// loadInheritedLocked converts the inherited sockets, once, unless
// Listeners or Sockets took them already.
func (p *process) loadInheritedLocked() error {
	if p.listenersTaken || p.inheritedDone {
		return p.inheritedErr
	}
	p.inheritedDone = true
	socks, err := sockshare.Listeners(true)
	if err != nil {
		p.inheritedErr = fmt.Errorf("inherited sockets: %w", err)
		return p.inheritedErr
	}
	p.inherited = socks
	return nil
}

// addrMatcher returns a function that reports whether a bound address is
// the one spec asks for.
func addrMatcher(ctx context.Context, spec sockshare.Spec) (func(net.Addr) bool, error) {
	if spec.Network == "unix" {
		return func(a net.Addr) bool {
			ua, ok := a.(*net.UnixAddr)
			return ok && ua.Name == spec.Address
		}, nil
	}
	host, port, err := net.SplitHostPort(spec.Address)
	if err != nil {
		return nil, err
	}
	want, err := strconv.Atoi(port)
	if err != nil {
		return nil, err
	}
	if want == 0 {
		// Any port: a new socket, never one bound already.
		return func(net.Addr) bool { return false }, nil
	}
	var ips []netip.Addr
	switch ip, err := netip.ParseAddr(host); {
	case host == "":
	case err == nil:
		ips = []netip.Addr{ip}
	default:
		if ips, err = net.DefaultResolver.LookupNetIP(ctx, "ip", host); err != nil {
			return nil, err
		}
	}
	unspecified := len(ips) == 0 || (len(ips) == 1 && ips[0].IsUnspecified())
	return func(a net.Addr) bool {
		ta, ok := a.(*net.TCPAddr)
		if !ok || ta.Port != want {
			return false
		}
		got, ok := netip.AddrFromSlice(ta.IP)
		if !ok {
			return false
		}
		got = got.Unmap()
		if unspecified || got.IsUnspecified() {
			return unspecified && got.IsUnspecified()
		}
		for _, ip := range ips {
			if ip.Unmap() == got {
				return true
			}
		}
		return false
	}, nil
}

// askMaster sends a listen request for spec and returns the socket of the
// master's reply.
func (p *process) askMaster(ctx context.Context, conn *ipc.Conn, spec sockshare.Spec) (net.Listener, error) {
	m, err := ipc.NewMessage(ipc.KindListenRequest, ipc.ListenRequest{Addr: spec.String()})
	if err != nil {
		return nil, err
	}
	r, err := conn.Call(ctx, m)
	if err != nil {
		return nil, fmt.Errorf("ask the master: %w", err)
	}
	defer r.CloseFDs() // Sockets makes its own descriptor
	if r.Kind == ipc.KindListenReply && len(r.FDs) == 0 {
		var body ipc.ListenReply
		if err := r.Decode(&body); err != nil {
			return nil, err
		}
		if body.Balanced {
			if body.ID < 0 || body.ID >= 64 {
				return nil, fmt.Errorf("%w: balanced listener id %d from the master", ipc.ErrProtocol, body.ID)
			}
			a, err := balancedAddr(spec.Network, body.Addr)
			if err != nil {
				return nil, err
			}
			return p.handoff.listener(body.ID, a), nil
		}
	}
	if r.Kind != ipc.KindListenReply || len(r.FDs) != 1 {
		return nil, fmt.Errorf("%w: master answered a listen request with a %s message with %d descriptors, want a listen reply with 1",
			ipc.ErrProtocol, r.Kind, len(r.FDs))
	}
	socks, err := sockshare.Sockets(r.FDs)
	if err != nil {
		return nil, fmt.Errorf("socket from the master: %w", err)
	}
	if socks[0].Listener == nil {
		socks[0].Close() // the error says why it is of no use
		return nil, errors.New("socket from the master is not a stream listener")
	}
	return socks[0].Listener, nil
}
