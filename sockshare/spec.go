package sockshare

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
)

// Spec is one parsed listen address. The zero Spec is not a valid address; obtain
// one from [ParseSpec] or fill every field as ParseSpec would.
type Spec struct {
	// Name is the socket's name from an optional "name=" prefix, "" if there was
	// none. It travels to workers in LISTEN_FDNAMES; ParseSpec accepts only names
	// that systemd accepts there (see [ParseSpec]).
	Name string

	// Network is one of "tcp", "tcp4", "tcp6", "udp", "udp4", "udp6" and "unix"
	// (a stream unix socket).
	Network string

	// Address is "host:port" for tcp and udp networks (host may be empty, an IP
	// literal, IPv6 in brackets, or a host name; port 0 lets the kernel choose),
	// a file system path for unix sockets, or "@name" for a Linux abstract unix
	// socket.
	Address string

	// UnixMode, UnixOwner and UnixGroup come from the options of a unix socket
	// file's address ("unix:///run/app.sock?mode=0660&owner=www-data&group=www-data"):
	// the file's permission bits (0: as bind(2) leaves them, from the umask), and
	// its owner and group as a name or a decimal id ("": unchanged). [Listen]
	// applies them, resolving names, in place of [ListenOptions.UnixMode] and
	// [ListenOptions.UnixOwner]. They are zero for other networks and for
	// abstract sockets, which have no file.
	UnixMode  os.FileMode
	UnixOwner string
	UnixGroup string
}

// maxUnixMode is the largest mode= of a unix socket file: permission, setuid,
// setgid and sticky bits.
const maxUnixMode = 0o7777

// Limits of the listen-spec grammar.
const (
	// MaxNameLen is the longest socket name, as systemd's FileDescriptorName= allows.
	MaxNameLen = 255
	// MaxUnixPathLen is the longest unix socket path or abstract name (including
	// its "@"): sun_path has 108 bytes and a path needs its terminating NUL.
	MaxUnixPathLen = 107
)

// ParseSpec parses a listen address. The accepted forms are
//
//	tcp://host:port    tcp4://host:port    tcp6://[host]:port
//	udp://host:port    udp4://host:port    udp6://[host]:port
//	unix:///path/to/socket    unix://relative/path    unix://@abstract
//	unix:///path/to/socket?mode=0660&owner=www-data&group=www-data
//	host:port    :port    [v6addr]:port    (bare: tcp)
//
// each optionally preceded by "name=", where name is 1 to [MaxNameLen] printable
// ASCII characters other than ':' and '=' (the rule of systemd's
// FileDescriptorName=, which LISTEN_FDNAMES carries). Schemes are case-insensitive.
// A host is empty (every address), an IP literal (IPv6 in brackets, with an
// optional zone) or a DNS name; a port is a decimal number from 0 to 65535 (0: the
// kernel picks one, which [Addr] reports). Unix paths and abstract names are at most
// [MaxUnixPathLen] bytes and contain no NUL byte.
//
// In a unix address a '?' starts the options of the socket file, "key=value" pairs
// joined by '&', each key at most once: mode= (octal permission bits, at most
// 7777, such as 0660 or 660), owner= and group= (a user or group name, or a decimal
// id). So a unix path cannot contain '?'. Options apply to socket files only: an
// abstract socket, or any other network, with options is an error.
//
// ParseSpec does no I/O: host names are resolved by [Listen]. The error names the part
// of s that is wrong. The result's [Spec.String] parses back to the same Spec.
func ParseSpec(s string) (Spec, error) {
	spec, err := parseSpec(s)
	if err != nil {
		return Spec{}, fmt.Errorf("listen address %q: %w", s, err)
	}
	return spec, nil
}

func parseSpec(s string) (Spec, error) {
	if s == "" {
		return Spec{}, errors.New("empty")
	}
	var spec Spec
	rest := s
	// The name prefix ends at the first '=' that comes before any "://": paths and
	// abstract names after the scheme may themselves contain '='.
	head := rest
	if i := strings.Index(rest, "://"); i >= 0 {
		head = rest[:i]
	}
	if i := strings.IndexByte(head, '='); i >= 0 {
		spec.Name = rest[:i]
		rest = rest[i+1:]
		if err := checkName(spec.Name); err != nil {
			return Spec{}, err
		}
	}
	scheme, addr, hasScheme := strings.Cut(rest, "://")
	if !hasScheme {
		if strings.Contains(rest, "/") {
			return Spec{}, fmt.Errorf("%q has no scheme (want tcp://, udp:// or unix://)", rest)
		}
		spec.Network = "tcp"
		a, err := parseHostPort("tcp", rest)
		if err != nil {
			return Spec{}, err
		}
		spec.Address = a
		return spec, nil
	}
	network := strings.ToLower(scheme)
	switch network {
	case "tcp", "tcp4", "tcp6", "udp", "udp4", "udp6":
		if i := strings.IndexByte(addr, '?'); i >= 0 {
			return Spec{}, fmt.Errorf("options %q: mode, owner and group apply to unix socket files only", addr[i:])
		}
		a, err := parseHostPort(network, addr)
		if err != nil {
			return Spec{}, err
		}
		spec.Network, spec.Address = network, a
	case "unix":
		path, query, hasQuery := strings.Cut(addr, "?")
		if err := checkUnixAddress(path); err != nil {
			return Spec{}, err
		}
		spec.Network, spec.Address = network, path
		if hasQuery {
			if spec.IsAbstract() {
				return Spec{}, fmt.Errorf("options %q: an abstract socket has no file to set mode, owner or group on", "?"+query)
			}
			if err := parseUnixOptions(&spec, query); err != nil {
				return Spec{}, err
			}
		}
	case "":
		return Spec{}, errors.New("empty scheme before \"://\"")
	default:
		return Spec{}, fmt.Errorf("unknown scheme %q (want tcp, tcp4, tcp6, udp, udp4, udp6 or unix)", scheme)
	}
	return spec, nil
}

// checkName applies systemd's rule for FileDescriptorName= (fdname_is_valid), less
// '=' which ends the name in a listen address.
func checkName(name string) error {
	if name == "" {
		return errors.New("empty name before \"=\"")
	}
	if len(name) > MaxNameLen {
		return fmt.Errorf("name of %d bytes is longer than %d", len(name), MaxNameLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c < ' ' || c > '~' || c == ':' {
			return fmt.Errorf("name %q: character %q is not allowed (printable ASCII other than ':' and '=')", name, c)
		}
	}
	return nil
}

// parseHostPort validates a "host:port" address and returns it with the port in
// canonical decimal form.
func parseHostPort(network, addr string) (string, error) {
	if addr == "" {
		return "", fmt.Errorf("%s address is empty (want host:port)", network)
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		var ae *net.AddrError
		if errors.As(err, &ae) {
			// net's message already names the address.
			return "", fmt.Errorf("%s address %q: %s", network, addr, ae.Err)
		}
		return "", fmt.Errorf("%s address %q: %w", network, addr, err)
	}
	p, err := parsePort(port)
	if err != nil {
		return "", fmt.Errorf("%s address %q: %w", network, addr, err)
	}
	if err := checkHost(network, host); err != nil {
		return "", fmt.Errorf("%s address %q: %w", network, addr, err)
	}
	return net.JoinHostPort(host, strconv.Itoa(p)), nil
}

func parsePort(port string) (int, error) {
	if port == "" {
		return 0, errors.New("empty port")
	}
	if len(port) > 5 {
		return 0, fmt.Errorf("port %q out of range 0-65535", port)
	}
	p := 0
	for i := 0; i < len(port); i++ {
		c := port[i]
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("port %q is not a decimal number", port)
		}
		p = p*10 + int(c-'0')
	}
	if p > 65535 {
		return 0, fmt.Errorf("port %q out of range 0-65535", port)
	}
	return p, nil
}

func checkHost(network, host string) error {
	if host == "" {
		return nil
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		family := network[len(network)-1]
		switch {
		case family == '4' && !ip.Is4():
			return fmt.Errorf("host %q is not an IPv4 address", host)
		case family == '6' && !ip.Is6():
			return fmt.Errorf("host %q is not an IPv6 address", host)
		}
		return nil
	}
	if strings.ContainsAny(host, ":%") {
		return fmt.Errorf("host %q is not a valid IP address", host)
	}
	return checkHostName(host)
}

// checkHostName accepts DNS names: dot-separated labels of letters, digits, '-'
// and '_' of 1 to 63 bytes, 253 bytes in all, an optional trailing dot.
func checkHostName(host string) error {
	name := strings.TrimSuffix(host, ".")
	if name == "" || len(name) > 253 {
		return fmt.Errorf("host %q is not a valid host name", host)
	}
	for label := range strings.SplitSeq(name, ".") {
		if label == "" || len(label) > 63 {
			return fmt.Errorf("host %q is not a valid host name (label %q)", host, label)
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_'
			if !ok {
				return fmt.Errorf("host %q: character %q is not allowed in a host name", host, c)
			}
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("host %q: label %q starts or ends with '-'", host, label)
		}
	}
	return nil
}

func checkUnixAddress(addr string) error {
	switch {
	case addr == "":
		return errors.New("unix socket path is empty (want unix:///path or unix://@name)")
	case addr == "@":
		return errors.New("abstract unix socket name is empty (want unix://@name)")
	case len(addr) > MaxUnixPathLen:
		return fmt.Errorf("unix socket path of %d bytes is longer than %d", len(addr), MaxUnixPathLen)
	case strings.IndexByte(addr, 0) >= 0:
		return errors.New("unix socket path contains a NUL byte")
	}
	return nil
}

// parseUnixOptions parses the options after the '?' of a unix address into spec.
func parseUnixOptions(spec *Spec, query string) error {
	seen := map[string]bool{}
	for kv := range strings.SplitSeq(query, "&") {
		key, value, ok := strings.Cut(kv, "=")
		if !ok {
			return fmt.Errorf("unix socket option %q: want key=value (mode=, owner= or group=)", kv)
		}
		if seen[key] {
			return fmt.Errorf("unix socket option %s= given twice", key)
		}
		seen[key] = true
		if value == "" {
			return fmt.Errorf("unix socket option %s= is empty", key)
		}
		switch key {
		case "mode":
			m, err := strconv.ParseUint(value, 8, 32)
			if err != nil || m > maxUnixMode || strings.HasPrefix(value, "+") {
				return fmt.Errorf("unix socket mode=%s: want octal permission bits from 0 to 7777, such as 0660", value)
			}
			if m == 0 {
				return fmt.Errorf("unix socket mode=%s: no permission at all leaves a socket nobody but root can connect to; give the bits you mean, such as 0600", value)
			}
			spec.UnixMode = unixFileMode(uint32(m))
		case "owner", "group":
			if err := checkAccountName(value); err != nil {
				return fmt.Errorf("unix socket %s=%s: %w", key, value, err)
			}
			if key == "owner" {
				spec.UnixOwner = value
			} else {
				spec.UnixGroup = value
			}
		default:
			return fmt.Errorf("unknown unix socket option %q (want mode=, owner= or group=)", key)
		}
	}
	return nil
}

// unixFileMode turns chmod(2) bits into an os.FileMode.
func unixFileMode(m uint32) os.FileMode {
	mode := os.FileMode(m & 0o777)
	if m&0o4000 != 0 {
		mode |= os.ModeSetuid
	}
	if m&0o2000 != 0 {
		mode |= os.ModeSetgid
	}
	if m&0o1000 != 0 {
		mode |= os.ModeSticky
	}
	return mode
}

// unixModeBits turns an os.FileMode back into chmod(2) bits.
func unixModeBits(mode os.FileMode) uint32 {
	m := uint32(mode.Perm())
	if mode&os.ModeSetuid != 0 {
		m |= 0o4000
	}
	if mode&os.ModeSetgid != 0 {
		m |= 0o2000
	}
	if mode&os.ModeSticky != 0 {
		m |= 0o1000
	}
	return m
}

// checkAccountName accepts what a user or group may be called: a decimal id, or
// a name of letters, digits, '.', '_' and '-' (not starting with '-'), with an
// optional trailing '$' (Samba machine accounts), at most 256 bytes. Whether the
// account exists is for [Listen] to find out.
func checkAccountName(v string) error {
	if len(v) > 256 {
		return fmt.Errorf("%d bytes is longer than 256", len(v))
	}
	if _, err := strconv.ParseUint(v, 10, 32); err == nil {
		return nil
	}
	name := strings.TrimSuffix(v, "$")
	if name == "" || name[0] == '-' {
		return errors.New("not a user or group name or id")
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-'
		if !ok {
			return fmt.Errorf("character %q is not allowed in a user or group name", c)
		}
	}
	return nil
}

// String returns the canonical form of s: "name=" when s has a name, then
// "scheme://address", then the unix socket file's options in the order mode,
// owner, group. [ParseSpec] of the result gives s back.
func (s Spec) String() string {
	var b strings.Builder
	if s.Name != "" {
		b.WriteString(s.Name)
		b.WriteByte('=')
	}
	b.WriteString(s.Network)
	b.WriteString("://")
	b.WriteString(s.Address)
	sep := byte('?')
	opt := func(key, value string) {
		b.WriteByte(sep)
		b.WriteString(key)
		b.WriteByte('=')
		b.WriteString(value)
		sep = '&'
	}
	if s.UnixMode != 0 {
		opt("mode", fmt.Sprintf("%04o", unixModeBits(s.UnixMode)))
	}
	if s.UnixOwner != "" {
		opt("owner", s.UnixOwner)
	}
	if s.UnixGroup != "" {
		opt("group", s.UnixGroup)
	}
	return b.String()
}

// IsAbstract reports whether s is a Linux abstract unix socket ("@name"), which has
// no file and vanishes with its last descriptor.
func (s Spec) IsAbstract() bool {
	return s.Network == "unix" && strings.HasPrefix(s.Address, "@")
}

// IsStream reports whether s is a stream (listening) socket rather than a datagram
// socket.
func (s Spec) IsStream() bool {
	switch s.Network {
	case "tcp", "tcp4", "tcp6", "unix":
		return true
	}
	return false
}
