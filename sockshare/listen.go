package sockshare

import (
	"fmt"
	"os"
)

// Owner is the owner of a unix socket file, as chown(2) takes it: -1 leaves that id
// unchanged.
type Owner struct {
	UID, GID int
}

// ListenOptions tune the sockets that [Listen] creates. The zero value gives a
// socket with the kernel's maximum backlog, SO_REUSEADDR and TCP_NODELAY on TCP,
// no SO_REUSEPORT,
// dual-stack IPv6 where the address allows it, and unix socket files as bind(2)
// made them (mode from the umask, owned by the process).
//
// One ListenOptions is meant to serve every address of a program, so a field that
// does not apply to an address is ignored for it rather than rejected.
type ListenOptions struct {
	// Backlog is the length of the queue of connections not yet accepted, for stream
	// sockets. 0 asks for the kernel maximum (net.core.somaxconn); the kernel also
	// caps larger values at that maximum. Negative is an error.
	Backlog int

	// ReusePort sets SO_REUSEPORT, so that several sockets (in one process or many)
	// can bind the same address and the kernel spreads connections or datagrams
	// among them. Ignored for unix sockets.
	ReusePort bool

	// V6Only sets IPV6_V6ONLY on IPv6 sockets: true accepts IPv6 peers only; false
	// (explicitly set, whatever net.ipv6.bindv6only says) also accepts IPv4 peers
	// as IPv4-mapped addresses. It applies to tcp6 and udp6 addresses and to tcp and
	// udp addresses bound to an IPv6 address or to every address (empty host), which
	// Listen binds as IPv6 "::" when the host supports IPv6.
	V6Only bool

	// UnixMode, when not 0, is the mode of a unix socket file (permission, setuid,
	// setgid and sticky bits). It is set after bind and before listen, so no client
	// can connect while the file has other permissions. Ignored for other networks
	// and for abstract sockets, which have no file.
	UnixMode os.FileMode

	// TCPDelay leaves Nagle's algorithm on for TCP: the listener gets no TCP_NODELAY.
	// By default it does, and on Linux every connection accepted from it inherits
	// the option, so a server that never sets it itself (uvicorn on an inherited fd)
	// does not hold small responses back waiting for the peer's delayed ACK (tens of
	// milliseconds per keep-alive request).
	TCPDelay bool

	// UnixOwner, when not nil, is the owner of a unix socket file, set like UnixMode.
	// Changing the owner needs the privilege to do so (CAP_CHOWN).
	UnixOwner *Owner
}

// check validates opts on their own.
func (o ListenOptions) check() error {
	if o.Backlog < 0 {
		return fmt.Errorf("negative backlog %d", o.Backlog)
	}
	if o.UnixMode&^(os.ModePerm|os.ModeSetuid|os.ModeSetgid|os.ModeSticky) != 0 {
		return fmt.Errorf("unix mode %v has bits other than permission, setuid, setgid and sticky", o.UnixMode)
	}
	if o.UnixOwner != nil && (o.UnixOwner.UID < -1 || o.UnixOwner.GID < -1) {
		return fmt.Errorf("unix owner %d:%d is not a valid uid:gid", o.UnixOwner.UID, o.UnixOwner.GID)
	}
	return nil
}
