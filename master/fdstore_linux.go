package master

import (
	"fmt"
	"os"
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

// storable lists the listeners to store: their files (owned by ls) and
// FDNAME= values ("" for none: systemd names them "stored").
func (ls *listeners) storable() (files []*os.File, names []string) {
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
		files = append(files, ls.shared[i])
		names = append(names, name)
	}
	return files, names
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
