package master

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

// The workers' sd_notify sockets. Where a worker is expected to speak
// sd_notify (config.speaksNotify), it gets NOTIFY_SOCKET naming a datagram
// socket of its own, a file in the master's private runtime directory:
// every sd_notify client handles a path, not all handle systemd's abstract
// "@" form. Because each worker has its own socket, a datagram's sender is
// the socket it came in on: no SCM_CREDENTIALS pid (which a worker running
// as root can forge) and no /proc read per datagram.
//
// Each socket has one reader goroutine, started after the fork and ended
// when the worker is reaped. A goroutine blocked on a socket costs a few
// kilobytes; Go's runtime already multiplexes them over one epoll, so a
// hand-written epoll loop here would buy nothing for the tens of workers a
// host runs, and would add a second poller beside the runtime's.

// Rate limit of one worker's notify socket: a burst of notifyBurst
// datagrams, then notifyRate per second. Beyond it the reader stops reading
// until a token is back, so a worker flooding its socket meets a full
// kernel queue (its sends block or fail) and costs the master nothing.
const (
	notifyBurst = 256
	notifyRate  = 128 // datagrams per second
)

// notifyDir is the master's private runtime directory, which holds the
// workers' notify sockets.
type notifyDir struct {
	path string
	uid  int // owner of the sockets: the workers' uid (-1: the master's)
	gid  int
}

// runtimeBase is the directory the master's runtime directory is made in:
// $RUNTIME_DIRECTORY (systemd's RuntimeDirectory=), else
// $XDG_RUNTIME_DIR/clusterd, else /run/clusterd as root, else os.TempDir().
// XDG_RUNTIME_DIR is skipped when the workers run as another user
// (otherUser): it is the master's user's private directory (0700), which
// they could not enter.
func runtimeBase(lookup func(string) (string, bool), euid int, otherUser bool) (dir string, create bool) {
	if v, ok := lookup("RUNTIME_DIRECTORY"); ok && v != "" {
		// systemd may list several, separated by colons: use the first.
		if i := strings.IndexByte(v, ':'); i >= 0 {
			v = v[:i]
		}
		return v, false
	}
	if v, ok := lookup("XDG_RUNTIME_DIR"); ok && v != "" && !otherUser {
		return filepath.Join(v, "clusterd"), true
	}
	if euid == 0 {
		return "/run/clusterd", true
	}
	return os.TempDir(), false
}

// newNotifyDir makes a fresh private directory for the notify sockets:
// mode 0700 owned by the master; with workers running as another user
// (cred), mode 0710 with the workers' group, so they can reach the sockets
// inside (each 0600, owned by the workers' uid) and list or change nothing.
// remove deletes it.
func newNotifyDir(cred *syscall.Credential) (*notifyDir, error) {
	other := cred != nil && (int(cred.Uid) != os.Geteuid() || int(cred.Gid) != os.Getegid())
	base, create := runtimeBase(os.LookupEnv, os.Geteuid(), other)
	if create {
		if err := os.MkdirAll(base, 0o755); err != nil {
			return nil, fmt.Errorf("runtime directory: %w", err)
		}
	}
	dir, err := os.MkdirTemp(base, "clusterd-"+strconv.Itoa(os.Getpid())+"-")
	if err != nil {
		return nil, fmt.Errorf("runtime directory: %w", err)
	}
	d := &notifyDir{path: dir, uid: -1, gid: -1}
	if other {
		d.uid, d.gid = int(cred.Uid), int(cred.Gid)
		err := os.Chown(dir, -1, d.gid)
		if err == nil {
			err = os.Chmod(dir, 0o710)
		}
		if err != nil {
			d.remove()
			return nil, fmt.Errorf("runtime directory: %w", err)
		}
	}
	// A socket path longer than sun_path cannot be bound: say so now,
	// naming the directory, rather than at the first worker.
	if p := d.socketPath(9999, 99999); len(p) >= len(unix.RawSockaddrUnix{}.Path) {
		d.remove()
		return nil, fmt.Errorf("runtime directory %s: too long for a unix socket path (set RUNTIME_DIRECTORY or XDG_RUNTIME_DIR)", dir)
	}
	return d, nil
}

// adoptNotifyDir takes the runtime directory of the previous image of
// this master (an upgrade), with the owner newNotifyDir would give it.
func adoptNotifyDir(dir string, cred *syscall.Credential) (*notifyDir, error) {
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("runtime directory of the previous image: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("runtime directory of the previous image %s: not a directory", dir)
	}
	d := &notifyDir{path: dir, uid: -1, gid: -1}
	if cred != nil && (int(cred.Uid) != os.Geteuid() || int(cred.Gid) != os.Getegid()) {
		d.uid, d.gid = int(cred.Uid), int(cred.Gid)
	}
	return d, nil
}

func (d *notifyDir) socketPath(slot, gen int) string {
	return filepath.Join(d.path, "notify-"+strconv.Itoa(slot)+"."+strconv.Itoa(gen))
}

// remove deletes the directory and whatever is left in it; called after
// every socket reader has ended.
func (d *notifyDir) remove() error {
	if err := os.RemoveAll(d.path); err != nil {
		return fmt.Errorf("remove runtime directory: %w", err)
	}
	return nil
}

// notifySocket is one worker's NOTIFY_SOCKET.
type notifySocket struct {
	conn *net.UnixConn
	path string
}

// listen binds the notify socket of one incarnation of a slot, reachable by
// the workers' uid only. The caller closes it (close), also when the fork
// fails.
func (d *notifyDir) listen(slot, gen int) (*notifySocket, error) {
	path := d.socketPath(slot, gen)
	// A leftover of an earlier incarnation with the same numbers cannot
	// exist (the directory is fresh and generations only grow), but a bind
	// onto an existing path fails: clear it to be certain.
	_ = os.Remove(path)
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return nil, fmt.Errorf("notify socket: %w", err)
	}
	// Nobody but the master can enter the directory yet, so the socket's
	// mode between bind and here does not matter.
	err = os.Chmod(path, 0o600)
	if err == nil && d.uid >= 0 {
		err = os.Chown(path, d.uid, d.gid)
	}
	if err != nil {
		conn.Close() // the mode error is the one to report
		return nil, fmt.Errorf("notify socket: %w", err)
	}
	return &notifySocket{conn: conn, path: path}, nil
}

// close closes the socket and removes its file. It unblocks read.
func (n *notifySocket) close() {
	n.conn.Close()        // a close error of a datagram socket is of no use
	_ = os.Remove(n.path) // gone already if the directory was removed
}

// read turns the worker's datagrams into events until the socket is
// closed; post delivers them (it gives up once the loop has ended). It
// reads at most notifyBurst datagrams at once and notifyRate per second
// after that, and logs the start of each burst beyond the limit once.
func (n *notifySocket) read(pid int, post func(workerEvent) bool, closed <-chan struct{}, log hclog.Logger) {
	buf := make([]byte, 4096)
	// Room for fds a client might attach (sd_notify's FDSTORE): they are
	// closed, since the fd store is not supported.
	oob := make([]byte, unix.CmsgSpace(4*16))
	tokens := float64(notifyBurst)
	last := time.Now()
	flooding := false
	for {
		now := time.Now()
		tokens = min(notifyBurst, tokens+now.Sub(last).Seconds()*notifyRate)
		last = now
		if flooding && tokens >= notifyBurst {
			flooding = false // a quiet spell ends the burst
		}
		if tokens < 1 {
			if !flooding {
				flooding = true
				log.Warn("notify socket flooded: reading it more slowly", "rate", notifyRate, "burst", notifyBurst)
			}
			wait := time.NewTimer(time.Duration((1 - tokens) / notifyRate * float64(time.Second)))
			select {
			case <-wait.C:
				continue
			case <-closed:
				wait.Stop()
				return
			}
		}
		nb, noob, flags, _, err := n.conn.ReadMsgUnix(buf, oob)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			log.Debug("notify socket read", "error", err)
			continue
		}
		tokens--
		if noob > 0 {
			closeRights(oob[:noob], log)
		}
		if flags&unix.MSG_TRUNC != 0 {
			log.Debug("notify message too long, ignored", "limit", len(buf))
			continue
		}
		for _, e := range parseNotify(buf[:nb]) {
			e.pid = pid
			if !post(e) {
				return
			}
		}
	}
}

// closeRights closes fds sent along with a notify message.
func closeRights(oob []byte, log hclog.Logger) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return
	}
	for _, m := range msgs {
		if m.Header.Level != unix.SOL_SOCKET || m.Header.Type != unix.SCM_RIGHTS {
			continue
		}
		if fds, err := unix.ParseUnixRights(&m); err == nil {
			for _, fd := range fds {
				_ = unix.Close(fd) // sd_notify fd store is not supported
			}
			log.Debug("fds on notify socket closed", "fd", len(fds))
		}
	}
}

// sdNotifier sends the master's own state to its supervisor (systemd) when
// NOTIFY_SOCKET was set for the master.
type sdNotifier struct {
	conn *net.UnixConn
	log  hclog.Logger
}

func newSDNotifier(addr string, log hclog.Logger) *sdNotifier {
	if addr == "" {
		return &sdNotifier{log: log}
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		log.Warn("sd_notify socket unreachable", "addr", addr, "error", err)
		return &sdNotifier{log: log}
	}
	return &sdNotifier{conn: conn, log: log}
}

func (s *sdNotifier) notify(state string) {
	if s.conn == nil {
		return
	}
	if state == "RELOADING=1" {
		// Type=notify-reload units want the reload's start time with it.
		var ts unix.Timespec
		if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err == nil {
			state += "\nMONOTONIC_USEC=" + strconv.FormatInt(ts.Nano()/1000, 10)
		}
	}
	if _, err := s.conn.Write([]byte(state)); err != nil {
		s.log.Debug("sd_notify", "state", state, "error", err)
	}
}

// statusFunc returns what sends STATUS= lines, or nil without a service
// manager (so the loop does not even compute them).
func (s *sdNotifier) statusFunc() func(string) {
	if s.conn == nil {
		return nil
	}
	return func(text string) { s.notify("STATUS=" + text) }
}

func (s *sdNotifier) close() {
	if s.conn != nil {
		s.conn.Close() // datagram socket: nothing buffered to lose
	}
}
