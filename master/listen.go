package master

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"

	"github.com/clusterd/clusterd/ipc"
	"github.com/clusterd/clusterd/sockshare"
	"github.com/hashicorp/go-hclog"
)

// listeners owns the master's listening sockets: one per address
// (BalanceShared, activated sockets, unix sockets), or one per address and
// slot (BalanceReusePort). Only the loop goroutine calls forSlot, dropSlot
// and check (watch_linux.go); Run calls bind before and closeAll after the
// loop.
type listeners struct {
	cfg    *config
	log    hclog.Logger
	specs  []sockshare.Spec // bound addresses (a port 0 replaced by the real one)
	names  []string
	perTCP []bool // per address: one socket per slot
	// adopted says, per address, whether it is an activated socket (the
	// service manager holds it).
	adopted []bool
	shared  []*os.File         // per address, for shared ones
	slots   map[int][]*os.File // reuseport: per slot, aligned with specs
	addrs   []net.Addr
	// files are the unix socket files the master created (never those of
	// activated sockets), removed by closeAll.
	files []socketFile
	// watched says, per address, whether check watches it: a stream socket
	// that listened when the master got it (an activated socket may be
	// something else). broken holds the sockets check could not restore,
	// reported once.
	watched []bool
	broken  map[*os.File]bool
	// healed, when set (the balanced modes: balancer.healed), is told of
	// every listener check healed: nf is f itself when it listens again
	// in place, or the socket that replaced it (f is closed next).
	healed func(f, nf *os.File)
	// migrateReq reads net.ipv4.tcp_migrate_req (replaced in tests).
	migrateReq func() (string, error)
	// restore puts shared listener i back in the service manager's fd
	// store once check healed it (fdstore_linux.go); nil: none stored.
	restore func(i int)
}

func newListeners(cfg *config, log hclog.Logger) *listeners {
	return &listeners{cfg: cfg, log: log, slots: make(map[int][]*os.File), migrateReq: readMigrateReq}
}

// bind opens every listener the initial slots need, adopting the
// activated sockets that match Listen entries (see Options.Activated). On
// error, whatever was opened or not yet adopted is closed by closeAll.
func (ls *listeners) bind() error {
	match, err := matchActivated(ls.cfg.Listen, ls.cfg.Activated)
	if err != nil {
		return err
	}
	opts := ls.cfg.ListenOptions
	reuse := ls.cfg.Balance == BalanceReusePort
	if reuse {
		opts.ReusePort = true
	}
	for i, spec := range ls.cfg.Listen {
		name := spec.Name
		if j := match[i]; j >= 0 {
			f := ls.cfg.Activated[j]
			ls.cfg.Activated[j] = nil // owned by ls.shared now
			if name == "" {
				name = f.Name()
			}
			ls.adopt(f, spec, name)
			continue
		}
		if name == "" {
			name = spec.String()
		}
		per := reuse && spec.Network != "unix"
		f, err := sockshare.Listen(spec, opts)
		if err != nil {
			return err // sockshare's error names the address already
		}
		ls.created(spec)
		if per {
			ls.slots[0] = append(ls.slots[0], f)
			ls.shared = append(ls.shared, nil)
			// Later slots bind the port the first socket got.
			if a, err := sockshare.Addr(f); err == nil {
				spec = withPort(spec, a)
			}
		} else {
			ls.shared = append(ls.shared, f)
			if len(ls.slots[0]) < len(ls.shared) {
				ls.slots[0] = append(ls.slots[0], nil)
			}
		}
		ls.specs = append(ls.specs, spec)
		ls.names = append(ls.names, name)
		ls.perTCP = append(ls.perTCP, per)
		ls.adopted = append(ls.adopted, false)
	}
	for j, f := range ls.cfg.Activated {
		if f == nil {
			continue // adopted for a Listen entry
		}
		ls.cfg.Activated[j] = nil
		addr := ""
		if a, err := sockshare.Addr(f); err == nil {
			addr = a.String()
		}
		if len(ls.cfg.Listen) > 0 {
			ls.log.Warn("activated socket matches no listen address: serving it as well", "name", f.Name(), "addr", addr)
		} else {
			ls.log.Warn("activated socket with no listen address given: serving it", "name", f.Name(), "addr", addr)
		}
		ls.adopt(f, sockshare.Spec{Name: f.Name()}, f.Name())
	}
	ls.cfg.Activated = nil
	if err := ls.bound(true); err != nil {
		return err
	}
	// Bind every initial slot now, so a bind error surfaces before any
	// worker starts.
	for s := 1; s < ls.cfg.Workers; s++ {
		if _, _, err := ls.forSlot(s); err != nil {
			return err
		}
	}
	return nil
}

// bound records the bound address of every listener (the shared socket,
// or slot 0's) and logs it, with kv added to the line; with watch it also
// records whether check watches it (an upgrade carries that over).
func (ls *listeners) bound(watch bool, kv ...any) error {
	for i := range ls.specs {
		f := ls.shared[i]
		if f == nil && i < len(ls.slots[0]) {
			f = ls.slots[0][i]
		}
		if f == nil {
			return fmt.Errorf("listener %s: no socket", ls.names[i])
		}
		a, err := sockshare.Addr(f)
		if err != nil {
			return fmt.Errorf("listener %s: %w", ls.names[i], err)
		}
		ls.addrs = append(ls.addrs, a)
		if watch {
			ls.watched = append(ls.watched, watchable(f, a))
		}
		ls.log.Info("listening", append([]any{"addr", a.String(), "name", ls.names[i]}, kv...)...)
	}
	return nil
}

// adopt takes an activated socket as the shared listener of spec.
func (ls *listeners) adopt(f *os.File, spec sockshare.Spec, name string) {
	ls.shared = append(ls.shared, f)
	if len(ls.slots[0]) < len(ls.shared) {
		ls.slots[0] = append(ls.slots[0], nil)
	}
	ls.specs = append(ls.specs, spec)
	ls.names = append(ls.names, name)
	ls.perTCP = append(ls.perTCP, false)
	ls.adopted = append(ls.adopted, true)
}

// announced lists the listeners for a worker's hello under the balanced
// modes (ipc.Hello.Listeners), in their order: the names LISTEN_FDNAMES
// would carry in the other modes, and the bound addresses, which the
// worker's listen requests name them by.
func (ls *listeners) announced() []ipc.Listener {
	out := make([]ipc.Listener, len(ls.specs))
	for i, spec := range ls.specs {
		a := ls.addrs[i]
		network := spec.Network
		if network == "" { // an activated socket no Listen entry names
			network = a.Network()
		}
		out[i] = ipc.Listener{
			Name: sockshare.FDName(ls.names[i]),
			Addr: sockshare.Spec{Network: network, Address: a.String()}.String(),
		}
	}
	return out
}

// matchActivated pairs Listen entries with activated sockets: match[i] is
// the index in activated of entry i's socket, or -1 to bind it. A name
// match wins over an address match, and each socket serves one entry.
func matchActivated(listen []sockshare.Spec, activated []*os.File) ([]int, error) {
	match := make([]int, len(listen))
	for i := range match {
		match[i] = -1
	}
	if len(activated) == 0 {
		return match, nil
	}
	used := make([]bool, len(activated))
	addrs := make([]net.Addr, len(activated))
	for j, f := range activated {
		a, err := sockshare.Addr(f)
		if err != nil {
			return nil, fmt.Errorf("activated socket %s: %w", f.Name(), err)
		}
		addrs[j] = a
	}
	for i, spec := range listen {
		for j, f := range activated {
			if !used[j] && spec.Name != "" && spec.Name == f.Name() {
				match[i], used[j] = j, true
				break
			}
		}
	}
	for i, spec := range listen {
		if match[i] >= 0 {
			continue
		}
		for j := range activated {
			if !used[j] && sameAddr(spec, addrs[j]) {
				match[i], used[j] = j, true
				break
			}
		}
	}
	return match, nil
}

// sameAddr reports whether a socket bound to a is what spec asks for: the
// same kind of socket on the same IP (any, for an empty host) and port, or
// the same unix path. Host names are not resolved, and a port 0 or a
// service name matches nothing: such entries match activated sockets by
// name.
func sameAddr(spec sockshare.Spec, a net.Addr) bool {
	var ip net.IP
	var port int
	switch a := a.(type) {
	case *net.TCPAddr:
		if !strings.HasPrefix(spec.Network, "tcp") {
			return false
		}
		ip, port = a.IP, a.Port
	case *net.UDPAddr:
		if !strings.HasPrefix(spec.Network, "udp") {
			return false
		}
		ip, port = a.IP, a.Port
	case *net.UnixAddr:
		return spec.Network == "unix" && spec.Address == a.Name
	default:
		return false
	}
	host, p, err := net.SplitHostPort(spec.Address)
	if err != nil || p != strconv.Itoa(port) || port == 0 {
		return false
	}
	if host == "" {
		return ip.IsUnspecified()
	}
	want := net.ParseIP(host)
	return want != nil && want.Equal(ip)
}

// withPort replaces a port 0 of an inet spec by the bound one.
func withPort(spec sockshare.Spec, a net.Addr) sockshare.Spec {
	var port int
	switch a := a.(type) {
	case *net.TCPAddr:
		port = a.Port
	case *net.UDPAddr:
		port = a.Port
	default:
		return spec
	}
	host, p, err := net.SplitHostPort(spec.Address)
	if err != nil || p != "0" {
		return spec
	}
	spec.Address = net.JoinHostPort(host, strconv.Itoa(port))
	return spec
}

// forSlot returns the listeners of a slot, binding its reuseport sockets
// the first time. The files stay owned by ls.
func (ls *listeners) forSlot(slot int) ([]*os.File, []string, error) {
	files := make([]*os.File, len(ls.specs))
	have := ls.slots[slot]
	opened := false
	for i, spec := range ls.specs {
		switch {
		case !ls.perTCP[i]:
			files[i] = ls.shared[i]
		case i < len(have) && have[i] != nil:
			files[i] = have[i]
		default:
			opts := ls.cfg.ListenOptions
			opts.ReusePort = true
			f, err := sockshare.Listen(spec, opts)
			if err != nil {
				ls.closeSlotFiles(files[:i], have)
				return nil, nil, fmt.Errorf("worker %d: %w", slot, err)
			}
			files[i] = f
			opened = true
		}
	}
	if opened || len(have) != len(files) {
		ls.slots[slot] = files
	}
	return files, ls.names, nil
}

// closeSlotFiles closes the sockets a failed forSlot opened itself.
func (ls *listeners) closeSlotFiles(files, have []*os.File) {
	for i, f := range files {
		if ls.perTCP[i] && f != nil && (i >= len(have) || have[i] != f) {
			_ = f.Close() // never handed out; the bind error is what matters
		}
	}
}

// dropSlot closes a removed slot's reuseport sockets. The kernel then drops
// the connections queued on them unless net.ipv4.tcp_migrate_req is 1.
func (ls *listeners) dropSlot(slot int) {
	files, ok := ls.slots[slot]
	if !ok {
		return
	}
	delete(ls.slots, slot)
	tcp := false
	for i, f := range files {
		if f == nil || !ls.perTCP[i] {
			continue
		}
		if strings.HasPrefix(ls.specs[i].Network, "tcp") {
			tcp = true
		}
		if err := f.Close(); err != nil {
			ls.log.Warn("close listener", "worker", slot, "addr", ls.specs[i].String(), "error", err)
		}
	}
	if !tcp {
		return
	}
	v, err := ls.migrateReq()
	switch {
	case err != nil:
		ls.log.Warn("closed a reuseport socket; its queued connections may be reset", "worker", slot,
			"error", err)
	case v != "1":
		ls.log.Warn("closed a reuseport socket; the kernel resets its queued connections unless net.ipv4.tcp_migrate_req=1",
			"worker", slot, "tcp_migrate_req", v)
	}
}

func readMigrateReq() (string, error) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_migrate_req")
	if err != nil {
		return "", fmt.Errorf("read net.ipv4.tcp_migrate_req: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// closeAll closes every listener; called once the last worker is gone.
func (ls *listeners) closeAll() error {
	var errs []error
	closeOne := func(f *os.File) {
		if f == nil {
			return
		}
		if err := f.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
			errs = append(errs, fmt.Errorf("close listener %s: %w", f.Name(), err))
		}
	}
	for _, f := range ls.shared {
		closeOne(f)
	}
	for slot, files := range ls.slots {
		for i, f := range files {
			if i < len(ls.perTCP) && ls.perTCP[i] {
				closeOne(f)
			}
		}
		delete(ls.slots, slot)
	}
	for _, f := range ls.cfg.Activated {
		closeOne(f) // not adopted because bind failed before
	}
	for _, sf := range ls.files {
		if err := sf.remove(); err != nil {
			errs = append(errs, err)
		}
	}
	ls.files = nil
	return errors.Join(errs...)
}

// socketFile is a unix socket file the master created, by its path and the
// identity (device and inode) it had then.
type socketFile struct {
	path     string
	dev, ino uint64
}

// created records the socket file of a unix spec just bound, so that
// closeAll removes it. A file that cannot be identified is not recorded (it
// is then left in place, which only costs a stale file that the next start
// clears).
func (ls *listeners) created(spec sockshare.Spec) {
	if spec.Network != "unix" || spec.IsAbstract() {
		return
	}
	dev, ino, err := fileID(spec.Address)
	if err != nil {
		ls.log.Warn("socket file will not be removed at stop", "addr", spec.Address, "error", err)
		return
	}
	sf := socketFile{path: spec.Address, dev: dev, ino: ino}
	for i := range ls.files {
		if ls.files[i].path == sf.path {
			ls.files[i] = sf // replaced by a new socket (watch_linux.go)
			return
		}
	}
	ls.files = append(ls.files, sf)
}

// remove removes the socket file if it is still the one the master created:
// a file that someone else put at the path since (another master's socket,
// say) is left alone.
func (sf socketFile) remove() error {
	dev, ino, err := fileID(sf.path)
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, errNotSocket) {
		return nil // gone, or replaced by something that is not ours
	}
	if err != nil {
		return fmt.Errorf("remove socket file %s: %w", sf.path, err)
	}
	if dev != sf.dev || ino != sf.ino {
		return nil // not ours any more
	}
	if err := os.Remove(sf.path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove socket file %s: %w", sf.path, err)
	}
	return nil
}
