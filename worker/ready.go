package worker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"

	"golang.org/x/sys/unix"

	"github.com/clusterd/clusterd/ipc"
)

// EnvNotifySocket names the sd_notify(3) datagram socket ("/path" or
// "@abstract"); clusterd sets it for workers when it supervises readiness
// with --ready notify, systemd for the services it starts.
const EnvNotifySocket = "NOTIFY_SOCKET"

// Ready tells the supervisor that this worker serves requests: over IPC
// when the process runs under clusterd (CLUSTERD_IPC_FD is set; the first
// call opens the connection and exchanges the protocol's hello), and with
// sd_notify READY=1 when NOTIFY_SOCKET is set. It does nothing, and returns
// nil, when neither is set. Call it once the listeners are being served.
//
// Ready blocks until the master has answered the hello. Calling it more than
// once repeats the notification; masters ignore the repeats. It is safe for
// concurrent use.
func Ready() error {
	p := self()
	var errs []error
	conn, err := p.ipcConn()
	switch {
	case err != nil:
		errs = append(errs, err)
	case conn != nil:
		// Send only queues the message: Flush reports whether it was written.
		err := conn.Send(&ipc.Message{Kind: ipc.KindReady})
		if err == nil {
			err = conn.Flush(context.Background())
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("worker: send ready to master: %w", err))
		}
	}
	if err := notify(p.lookup, "READY=1"); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// ipcConn returns the connection to the master, opening it on first use, or
// nil and no error when the process does not run under clusterd.
func (p *process) ipcConn() (*ipc.Conn, error) {
	p.connMu.Lock()
	defer p.connMu.Unlock()
	if p.connDone {
		return p.conn, p.connErr
	}
	p.connDone = true
	p.conn, p.connErr = p.openIPCLocked()
	if p.conn == nil {
		// No master will ever send a message: Messages reports it.
		p.closeMessages()
	}
	return p.conn, p.connErr
}

// workerConn is ipcConn for the functions that need a master: outside
// clusterd it returns [ErrNotWorker].
func (p *process) workerConn() (*ipc.Conn, error) {
	conn, err := p.ipcConn()
	if err != nil {
		return nil, err
	}
	if conn == nil {
		return nil, ErrNotWorker
	}
	return conn, nil
}

// openIPCLocked adopts the inherited IPC fd, says hello and starts the
// session: the goroutine that reads the master's messages and the one that
// sends heartbeats.
func (p *process) openIPCLocked() (*ipc.Conn, error) {
	// A malformed slot or generation fails here too: the master would
	// reject the hello that carried it.
	env, ok, err := ipc.ParseEnv(p.lookup)
	if err != nil {
		return nil, fmt.Errorf("worker: %w", err)
	}
	if !ok {
		return nil, nil
	}
	fd := env.IPCFD
	if fd < 3 {
		return nil, fmt.Errorf("worker: %s=%d: not an inherited file descriptor", ipc.EnvIPCFD, fd)
	}
	// The fd was inherited, so it is not close-on-exec: make it so, or every
	// program this worker starts would hold the master's connection open.
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC); err != nil {
		return nil, fmt.Errorf("worker: ipc fd %d: %w", fd, os.NewSyscallError("fcntl", err))
	}
	conn, err := ipc.NewConn(os.NewFile(uintptr(fd), "clusterd-ipc"), ipc.Options{})
	if err != nil {
		return nil, fmt.Errorf("worker: ipc fd %d: %w", fd, err)
	}
	local := ipc.Hello{Version: ipc.Version, PID: os.Getpid(), WorkerID: env.WorkerID, Generation: env.Generation}
	peer, err := conn.Handshake(context.Background(), local)
	if err != nil {
		conn.Close() // the handshake error is the one to report
		return nil, fmt.Errorf("worker: ipc hello with master: %w", err)
	}
	p.announced = peer.Listeners
	p.startSession(conn, local, peer)
	return conn, nil
}

// notify sends one sd_notify(3) datagram, if lookup has NOTIFY_SOCKET.
func notify(lookup func(string) (string, bool), state string) error {
	path, ok := lookup(EnvNotifySocket)
	if !ok || path == "" {
		return nil
	}
	// A leading '@' names an abstract socket; package net maps it.
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("worker: sd_notify %s: %w", path, err)
	}
	_, werr := conn.Write([]byte(state))
	cerr := conn.Close()
	if werr != nil {
		return fmt.Errorf("worker: sd_notify %s: %w", path, werr)
	}
	if cerr != nil {
		return fmt.Errorf("worker: sd_notify %s: %w", path, cerr)
	}
	return nil
}
