package sockshare

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"os"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// maxBacklog asks listen(2) for the kernel maximum: Linux caps the backlog at
// net.core.somaxconn.
const maxBacklog = math.MaxInt32

// Listen creates a socket for spec, binds it and, for stream sockets, listens. The
// result is a close-on-exec, non-blocking socket as an *os.File owned by the caller,
// who closes it; its name is spec's canonical string. Listen wraps the descriptor
// with [os.NewFile], so [os.File.Fd] on the result does not switch it to blocking
// mode and it can go to a child through exec.Cmd.ExtraFiles unchanged. To use it in
// this process, convert it with [net.FileListener] or [net.FilePacketConn] (or
// [Sockets]), which make a dup.
//
// TCP sockets get SO_REUSEADDR (a restarted master rebinds at once, despite
// connections in TIME_WAIT); opts adds the rest. A host name is resolved and the
// socket bound to its first address (an IPv4 one for tcp and udp when there is
// one); an empty host binds every address, dual-stack on IPv6 hosts.
//
// A busy address gives an error that wraps [syscall.EADDRINUSE] and names the
// address. For a unix socket path that exists, Listen connects to it first: only
// when that is refused (ECONNREFUSED: no process listens on the socket any more) is
// the stale file removed and the bind retried. A path where something answers, or
// that is not a socket, is an "address in use" error; a live socket is never taken
// over. Abstract sockets ("@name") have no file and are never removed. The check
// and the removal are two steps, not one: two processes starting on one path at the
// same instant can still race, so give each address a single owner.
//
// A unix spec's own file options ([Spec.UnixMode], [Spec.UnixOwner],
// [Spec.UnixGroup], from "?mode=0660&owner=www-data&group=www-data") take the place
// of opts.UnixMode and opts.UnixOwner; names are resolved (os/user) before anything
// is bound, and an unknown one is an error naming it.
//
// Listen resolves host names with the system resolver, without a deadline: use IP
// literals where start-up must not wait on DNS.
func Listen(spec Spec, opts ListenOptions) (*os.File, error) {
	f, err := listen(spec, opts)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", spec, err)
	}
	return f, nil
}

func listen(spec Spec, opts ListenOptions) (*os.File, error) {
	if err := opts.check(); err != nil {
		return nil, err
	}
	// The spec's own mode=, owner=, group= (resolved before anything is bound).
	opts, err := withUnixFile(spec, opts)
	if err != nil {
		return nil, err
	}
	var (
		sotype int
		family string
		sa     unix.Sockaddr
	)
	switch spec.Network {
	case "tcp", "tcp4", "tcp6":
		sotype = unix.SOCK_STREAM
		family, sa, err = inetSockaddr(spec)
	case "udp", "udp4", "udp6":
		sotype = unix.SOCK_DGRAM
		family, sa, err = inetSockaddr(spec)
	case "unix":
		sotype = unix.SOCK_STREAM
		family = "unix"
		if err = checkUnixAddress(spec.Address); err == nil {
			sa = &unix.SockaddrUnix{Name: spec.Address}
		}
	default:
		err = fmt.Errorf("unknown network %q", spec.Network)
	}
	if err != nil {
		return nil, err
	}

	fd, err := socket(family, sotype)
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			unix.Close(fd)
		}
	}()
	if err := opts.control(family+sotypeSuffix(sotype), spec.Address, fdConn(fd)); err != nil {
		return nil, err
	}
	if err := bind(fd, spec, sa); err != nil {
		return nil, err
	}
	if spec.Network == "unix" && !spec.IsAbstract() {
		if err := setUnixFile(spec.Address, opts); err != nil {
			// We made the file: remove it, or the next Listen would find it stale.
			os.Remove(spec.Address)
			return nil, err
		}
	}
	if sotype == unix.SOCK_STREAM {
		backlog := opts.Backlog
		if backlog == 0 {
			backlog = maxBacklog
		}
		if err := unix.Listen(fd, backlog); err != nil {
			if spec.Network == "unix" && !spec.IsAbstract() {
				os.Remove(spec.Address)
			}
			return nil, os.NewSyscallError("listen", err)
		}
	}
	ok = true
	return os.NewFile(uintptr(fd), spec.String()), nil
}

// sotypeSuffix marks datagram sockets in the network name given to control.
func sotypeSuffix(sotype int) string {
	if sotype == unix.SOCK_DGRAM {
		return "gram"
	}
	return ""
}

// inetSockaddr resolves a tcp or udp spec to an address family ("ip4" or "ip6")
// and socket address.
func inetSockaddr(spec Spec) (family string, sa unix.Sockaddr, err error) {
	host, portStr, err := net.SplitHostPort(spec.Address)
	if err != nil {
		return "", nil, err
	}
	port, err := parsePort(portStr)
	if err != nil {
		return "", nil, err
	}
	want := spec.Network[len(spec.Network)-1] // '4', '6' or 'p' (either)
	var ip netip.Addr
	switch {
	case host == "":
		switch want {
		case '4':
			ip = netip.IPv4Unspecified()
		case '6':
			ip = netip.IPv6Unspecified()
		default:
			ip = netip.IPv6Unspecified()
			if !supportsIPv6() {
				ip = netip.IPv4Unspecified()
			}
		}
	default:
		if ip, err = netip.ParseAddr(host); err != nil {
			if ip, err = resolve(host, want); err != nil {
				return "", nil, err
			}
		}
	}
	if ip.Is4() {
		if want == '6' {
			return "", nil, fmt.Errorf("host %q is not an IPv6 address", host)
		}
		return "ip4", &unix.SockaddrInet4{Port: port, Addr: ip.As4()}, nil
	}
	if want == '4' {
		return "", nil, fmt.Errorf("host %q is not an IPv4 address", host)
	}
	sa6 := &unix.SockaddrInet6{Port: port, Addr: ip.As16()}
	if zone := ip.Zone(); zone != "" {
		if n, err := strconv.Atoi(zone); err == nil {
			sa6.ZoneId = uint32(n)
		} else {
			ifi, err := net.InterfaceByName(zone)
			if err != nil {
				return "", nil, fmt.Errorf("zone of %q: %w", host, err)
			}
			sa6.ZoneId = uint32(ifi.Index)
		}
	}
	return "ip6", sa6, nil
}

// resolve looks a host name up and picks the address to bind: the first of the
// wanted family, preferring IPv4 when either will do (as package net does).
func resolve(host string, want byte) (netip.Addr, error) {
	network := "ip"
	switch want {
	case '4':
		network = "ip4"
	case '6':
		network = "ip6"
	}
	addrs, err := net.DefaultResolver.LookupNetIP(context.Background(), network, host)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("resolve %q: %w", host, err)
	}
	for _, a := range addrs {
		if a.Unmap().Is4() {
			return a.Unmap(), nil
		}
	}
	if len(addrs) == 0 {
		return netip.Addr{}, fmt.Errorf("resolve %q: no %s address", host, network)
	}
	return addrs[0], nil
}

// supportsIPv6 reports whether this host can create IPv6 sockets (containers and
// kernels booted with ipv6.disable=1 cannot).
func supportsIPv6() bool {
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return false
	}
	unix.Close(fd)
	return true
}

func socket(family string, sotype int) (int, error) {
	domain := unix.AF_UNIX
	switch family {
	case "ip4":
		domain = unix.AF_INET
	case "ip6":
		domain = unix.AF_INET6
	}
	// SOCK_NONBLOCK and SOCK_CLOEXEC set both flags atomically with the socket:
	// no window where a concurrent fork/exec inherits it.
	fd, err := unix.Socket(domain, sotype|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, os.NewSyscallError("socket", err)
	}
	return fd, nil
}

// control sets every socket option Listen applies, between socket(2) and bind(2).
// It has the shape of [net.ListenConfig.Control]; network is "ip4", "ip6" or
// "unix", with "gram" appended for datagram sockets.
func (o ListenOptions) control(network, address string, c syscall.RawConn) error {
	var opErr error
	err := c.Control(func(fd uintptr) {
		s := int(fd)
		set := func(level, opt, value int, name string) {
			if opErr == nil {
				if err := unix.SetsockoptInt(s, level, opt, value); err != nil {
					opErr = os.NewSyscallError("setsockopt "+name, err)
				}
			}
		}
		if network == "ip4" || network == "ip6" {
			set(unix.SOL_SOCKET, unix.SO_REUSEADDR, 1, "SO_REUSEADDR")
			set(unix.IPPROTO_TCP, unix.TCP_NODELAY, boolInt(!o.TCPDelay), "TCP_NODELAY")
		}
		if o.ReusePort && network != "unix" && network != "unixgram" {
			set(unix.SOL_SOCKET, unix.SO_REUSEPORT, 1, "SO_REUSEPORT")
		}
		if network == "ip6" || network == "ip6gram" {
			set(unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, boolInt(o.V6Only), "IPV6_V6ONLY")
		}
	})
	if err != nil {
		return err
	}
	return opErr
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// fdConn is a [syscall.RawConn] over a raw descriptor that no poller knows yet, for
// [ListenOptions.control].
type fdConn int

func (c fdConn) Control(f func(fd uintptr)) error { f(uintptr(c)); return nil }
func (c fdConn) Read(func(fd uintptr) bool) error { return errors.ErrUnsupported }
func (c fdConn) Write(func(fd uintptr) bool) error {
	return errors.ErrUnsupported
}

// bind binds fd, clearing a stale unix socket file first when that is safe.
func bind(fd int, spec Spec, sa unix.Sockaddr) error {
	err := unix.Bind(fd, sa)
	if err == nil {
		return nil
	}
	if err != unix.EADDRINUSE || spec.Network != "unix" || spec.IsAbstract() {
		return os.NewSyscallError("bind", err)
	}
	stale, why := staleUnixSocket(spec.Address)
	if !stale {
		return fmt.Errorf("%s: %w", why, os.NewSyscallError("bind", err))
	}
	if err := os.Remove(spec.Address); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale socket: %w", err)
	}
	if err := unix.Bind(fd, sa); err != nil {
		return os.NewSyscallError("bind", err)
	}
	return nil
}

// staleUnixSocket reports whether path is a unix socket file that no process
// listens on: connect(2) to it is refused. Otherwise it says why the path is
// considered in use.
func staleUnixSocket(path string) (stale bool, why string) {
	fi, err := os.Lstat(path)
	if err != nil {
		// Gone since bind: let the retry bind it.
		return errors.Is(err, os.ErrNotExist), "stat existing file: " + err.Error()
	}
	if fi.Mode().Type() != os.ModeSocket {
		return false, "existing file is not a socket"
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return false, "probe existing socket: " + os.NewSyscallError("socket", err).Error()
	}
	defer unix.Close(fd)
	switch err := unix.Connect(fd, &unix.SockaddrUnix{Name: path}); err {
	case unix.ECONNREFUSED:
		return true, ""
	case nil, unix.EAGAIN:
		// EAGAIN: its backlog is full, which means it is alive.
		return false, "a process is listening on the existing socket"
	case unix.EPROTOTYPE:
		return false, "the existing socket is bound by a socket of another type"
	default:
		return false, "probe existing socket: " + os.NewSyscallError("connect", err).Error()
	}
}

// setUnixFile applies UnixMode and UnixOwner to a freshly bound socket file.
func setUnixFile(path string, opts ListenOptions) error {
	if opts.UnixOwner != nil {
		if err := os.Lchown(path, opts.UnixOwner.UID, opts.UnixOwner.GID); err != nil {
			return err
		}
	}
	if opts.UnixMode != 0 {
		// chmod after chown: chown clears setuid and setgid bits.
		if err := os.Chmod(path, opts.UnixMode); err != nil {
			return err
		}
	}
	return nil
}

// Addr reports the address a socket file is bound to (getsockname(2)): a
// *net.TCPAddr, *net.UDPAddr or *net.UnixAddr by the socket's family and type. It
// works through [os.File.SyscallConn], so it changes neither f nor its blocking mode;
// f stays owned by the caller. A port-0 listener reports the port the kernel chose.
func Addr(f *os.File) (net.Addr, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("address of %s: %w", f.Name(), err)
	}
	var (
		sa     unix.Sockaddr
		sotype int
		opErr  error
	)
	err = rc.Control(func(fd uintptr) {
		if sotype, opErr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TYPE); opErr != nil {
			opErr = os.NewSyscallError("getsockopt SO_TYPE", opErr)
			return
		}
		if sa, opErr = unix.Getsockname(int(fd)); opErr != nil {
			opErr = os.NewSyscallError("getsockname", opErr)
		}
	})
	if err == nil {
		err = opErr
	}
	if err != nil {
		return nil, fmt.Errorf("address of %s: %w", f.Name(), err)
	}
	a, err := netAddr(sa, sotype)
	if err != nil {
		return nil, fmt.Errorf("address of %s: %w", f.Name(), err)
	}
	return a, nil
}

// netAddr converts a socket address of a socket of type sotype to a net.Addr.
func netAddr(sa unix.Sockaddr, sotype int) (net.Addr, error) {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return inetAddr(sotype, net.IP(append([]byte(nil), sa.Addr[:]...)), sa.Port, "")
	case *unix.SockaddrInet6:
		zone := ""
		if sa.ZoneId != 0 {
			zone = strconv.Itoa(int(sa.ZoneId))
			if ifi, err := net.InterfaceByIndex(int(sa.ZoneId)); err == nil {
				zone = ifi.Name
			}
		}
		return inetAddr(sotype, net.IP(append([]byte(nil), sa.Addr[:]...)), sa.Port, zone)
	case *unix.SockaddrUnix:
		switch sotype {
		case unix.SOCK_STREAM:
			return &net.UnixAddr{Net: "unix", Name: sa.Name}, nil
		case unix.SOCK_DGRAM:
			return &net.UnixAddr{Net: "unixgram", Name: sa.Name}, nil
		case unix.SOCK_SEQPACKET:
			return &net.UnixAddr{Net: "unixpacket", Name: sa.Name}, nil
		}
		return nil, fmt.Errorf("unix socket of unknown type %d", sotype)
	}
	return nil, fmt.Errorf("unsupported address family %T", sa)
}

func inetAddr(sotype int, ip net.IP, port int, zone string) (net.Addr, error) {
	switch sotype {
	case unix.SOCK_STREAM:
		return &net.TCPAddr{IP: ip, Port: port, Zone: zone}, nil
	case unix.SOCK_DGRAM:
		return &net.UDPAddr{IP: ip, Port: port, Zone: zone}, nil
	}
	return nil, fmt.Errorf("internet socket of unsupported type %d", sotype)
}
