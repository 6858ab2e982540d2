package master

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

// notifySocket is the per-master sd_notify datagram socket given to workers
// as NOTIFY_SOCKET. It lives in the abstract namespace, so workers need no
// fd of the master to reach it. SO_PASSCRED makes the kernel attach the
// sender's pid (SCM_CREDENTIALS) to every datagram; that pid, or its process
// group, names the worker.
type notifySocket struct {
	conn   *net.UnixConn
	addr   string // "@clusterd/..." as NOTIFY_SOCKET spells it
	events chan<- workerEvent
	done   <-chan struct{}
	log    hclog.Logger
	wg     sync.WaitGroup
}

func listenNotify(events chan<- workerEvent, done <-chan struct{}, log hclog.Logger) (*notifySocket, error) {
	var rnd [8]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return nil, fmt.Errorf("notify socket name: %w", err)
	}
	name := fmt.Sprintf("@clusterd/%d/%s", os.Getpid(), hex.EncodeToString(rnd[:]))
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		return nil, fmt.Errorf("notify socket %s: %w", name, err)
	}
	rc, err := conn.SyscallConn()
	if err == nil {
		var serr error
		err = rc.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1)
		})
		if err == nil {
			err = serr
		}
	}
	if err != nil {
		conn.Close() // the option error is the one to report
		return nil, fmt.Errorf("notify socket %s: %w", name, os.NewSyscallError("setsockopt SO_PASSCRED", err))
	}
	n := &notifySocket{conn: conn, addr: name, events: events, done: done, log: log}
	n.wg.Add(1)
	go n.read()
	return n, nil
}

func (n *notifySocket) read() {
	defer n.wg.Done()
	buf := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(unix.SizeofUcred)+unix.CmsgSpace(4*16))
	for {
		nb, noob, _, _, err := n.conn.ReadMsgUnix(buf, oob)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			n.log.Debug("notify socket read", "error", err)
			continue
		}
		pid := senderPID(oob[:noob], n.log)
		if pid <= 0 {
			n.log.Debug("notify message without credentials ignored")
			continue
		}
		for _, e := range parseNotify(buf[:nb]) {
			e.pid = pid
			e.pgid = processGroup(pid)
			select {
			case n.events <- e:
			case <-n.done:
				return
			}
		}
	}
}

// senderPID finds the SCM_CREDENTIALS pid and closes any fds sent along.
func senderPID(oob []byte, log hclog.Logger) int {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return 0
	}
	pid := 0
	for _, m := range msgs {
		if m.Header.Level != unix.SOL_SOCKET {
			continue
		}
		switch m.Header.Type {
		case unix.SCM_CREDENTIALS:
			if c, err := unix.ParseUnixCredentials(&m); err == nil {
				pid = int(c.Pid)
			}
		case unix.SCM_RIGHTS:
			if fds, err := unix.ParseUnixRights(&m); err == nil {
				for _, fd := range fds {
					_ = unix.Close(fd) // sd_notify fd store is not supported
				}
				log.Debug("fds on notify socket closed", "fd", len(fds))
			}
		}
	}
	return pid
}

// processGroup reads a process's group from /proc/PID/stat; 0 if gone.
func processGroup(pid int) int {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	// "pid (comm) state ppid pgrp ...": comm may hold spaces and parens.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 3 {
		return 0
	}
	pg, _ := strconv.Atoi(f[2])
	return pg
}

func (n *notifySocket) close() {
	n.conn.Close() // unblocks read; a close error of a datagram socket is of no use
	n.wg.Wait()
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

func (s *sdNotifier) close() {
	if s.conn != nil {
		s.conn.Close() // datagram socket: nothing buffered to lose
	}
}
