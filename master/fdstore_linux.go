package master

import (
	"fmt"
	"os"
	"slices"
	"strconv"

	"golang.org/x/sys/unix"
)

// The fd store (sd_notify FDSTORE=1). When the service manager allows it,
// the master hands it a copy of every listening socket once they are
// bound. systemd keeps the copies while the service restarts, crashes or is
// killed, and passes them back through LISTEN_FDS (named by LISTEN_FDNAMES)
// to the next clusterd, which matches them to its Listen entries as it does
// socket-activated ones (Options.Activated). So the listening sockets, and
// the connections queued on them, outlive any one master: a client
// connecting while no master runs waits in the accept queue instead of
// being refused.
//
// A socket comes back matched by its name or its address, so only Listen
// entries with a name or a fixed port are stored: an unnamed port-0 socket
// could not be told apart from a new one and would pile up in the store.
// Per-slot SO_REUSEPORT sockets are not stored either: activated sockets
// are shared, which BalanceReusePort cannot use. Nor are activated ones:
// the manager holds them already (a .socket unit's, or the store's own
// from the last run), and a second copy would come back as a second
// listener.
//
// A stored listener that check (watch_linux.go) heals is put back: systemd
// drops a stored socket on EPOLLHUP, which a TCP listener that was shut
// down reports, so even one made to listen again in place may be gone from
// the store; and one replaced by a new socket must not come back as the
// dead one. The master removes the fds of the listener's FDNAME
// (FDSTOREREMOVE=1) and stores the live sockets of that name again
// (FDSTORE=1; unnamed ones share systemd's name "stored", so all of them).
// An activated listener is not: the master cannot tell a socket unit's
// from the store's, and the socket unit's stays the manager's to replace.

// fdStoreMax reads whether the service manager takes fds: systemd ≥ 254
// sets FDSTORE to FileDescriptorStoreMax= (0 or unset there means no);
// earlier ones say nothing, and an fd they do not take is dropped with a
// debug line on their side, so the master offers them when NOTIFY_SOCKET
// is set. It returns the number of fds to offer at most, -1 for no limit.
func fdStoreMax(lookup func(string) (string, bool)) int {
	v, ok := lookup("FDSTORE")
	if !ok {
		return -1
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return 0
	}
	return n
}

// storedName is what systemd calls an fd stored without FDNAME=.
const storedName = "stored"

// storable lists the listeners to store: their files (owned by ls) and
// FDNAME= values ("" for none: systemd names them "stored").
func (ls *listeners) storable() (files []*os.File, names []string) {
	for _, e := range ls.storableEntries() {
		files = append(files, ls.shared[e.i])
		names = append(names, e.name)
	}
	return files, names
}

// storeEntry is a listener to store: its index in ls and FDNAME= value.
type storeEntry struct {
	i    int
	name string
}

func (ls *listeners) storableEntries() []storeEntry {
	var out []storeEntry
	for i, spec := range ls.specs {
		if ls.perTCP[i] || ls.adopted[i] || ls.shared[i] == nil {
			continue
		}
		named := ls.names[i] != "" && ls.names[i] == spec.Name
		if !named && !sameAddr(spec, ls.addrs[i]) {
			continue // unnamed and not at a fixed address: cannot come back
		}
		name := ""
		if named {
			name = spec.Name
		}
		out = append(out, storeEntry{i, name})
	}
	return out
}

// store offers the storable listeners to the service manager, at most max
// (-1: all), and sets ls.restore to put those it sent back once healed.
// It returns how many were sent.
func (ls *listeners) store(s *sdNotifier, max int) (int, error) {
	entries := ls.storableEntries()
	files, names := ls.storable()
	n, err := s.storeFDs(files, names, max)
	if n > 0 {
		sent := entries[:n]
		ls.restore = func(i int) { ls.restoreFDs(s, sent, i) }
	}
	return n, err
}

// restoreFDs puts healed listener i back in the store, if it is among
// those stored: FDSTOREREMOVE=1 of its FDNAME, then FDSTORE=1 of the
// current socket of every stored listener of that name.
func (ls *listeners) restoreFDs(s *sdNotifier, stored []storeEntry, i int) {
	k := slices.IndexFunc(stored, func(e storeEntry) bool { return e.i == i })
	if k < 0 {
		return
	}
	name := stored[k].name
	var files []*os.File
	var names []string
	for _, e := range stored {
		if e.name == name {
			files = append(files, ls.shared[e.i])
			names = append(names, e.name)
		}
	}
	remove := name
	if remove == "" {
		remove = storedName
	}
	kv := []any{"addr", ls.addrs[i].String(), "name", ls.names[i]}
	err := s.removeFDs(remove)
	if err == nil {
		_, err = s.storeFDs(files, names, -1)
	}
	if err != nil {
		ls.log.Warn("healed listener not kept by the service manager", append(kv, "error", err)...)
		return
	}
	ls.log.Info("healed listener kept by the service manager again", append(kv, "stored", len(files))...)
}

// storeFDs hands the files to the service manager, one datagram per file
// (an FDNAME= names every fd of its datagram), at most max (-1: all). The
// files stay the caller's: the kernel passes the manager a copy. It
// returns how many were sent.
func (s *sdNotifier) storeFDs(files []*os.File, names []string, max int) (int, error) {
	if s.conn == nil {
		return 0, nil
	}
	sent := 0
	for i, f := range files {
		if max >= 0 && sent >= max {
			return sent, fmt.Errorf("fd store: FDSTORE=%d takes %d of %d listeners", max, sent, len(files))
		}
		msg := "FDSTORE=1"
		if names[i] != "" {
			msg += "\nFDNAME=" + names[i]
		}
		fd, err := rawFD(f)
		if err != nil {
			return sent, fmt.Errorf("fd store: listener %s: %w", f.Name(), err)
		}
		if err := s.sendRights([]byte(msg), unix.UnixRights(fd)); err != nil {
			return sent, fmt.Errorf("fd store: listener %s: %w", f.Name(), err)
		}
		sent++
	}
	return sent, nil
}

// removeFDs removes the fds named name from the service manager's store
// (FDSTOREREMOVE=1). Removing a name the store does not hold is no error.
func (s *sdNotifier) removeFDs(name string) error {
	if s.conn == nil {
		return nil
	}
	if _, err := s.conn.Write([]byte("FDSTOREREMOVE=1\nFDNAME=" + name)); err != nil {
		return fmt.Errorf("fd store: remove %s: %w", name, err)
	}
	return nil
}

// sendRights sends one datagram with ancillary data on the connected
// notify socket. net.UnixConn.WriteMsgUnix refuses a connected datagram
// socket, so it is sendmsg(2) on the raw fd, through the runtime's poller.
func (s *sdNotifier) sendRights(msg, oob []byte) error {
	rc, err := s.conn.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = rc.Write(func(fd uintptr) bool {
		serr = unix.Sendmsg(int(fd), msg, oob, nil, 0)
		return serr != unix.EAGAIN
	})
	if err != nil {
		return err
	}
	return os.NewSyscallError("sendmsg", serr)
}
