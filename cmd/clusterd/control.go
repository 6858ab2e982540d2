package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/clusterd/clusterd/ipc"
	"github.com/clusterd/clusterd/master"
)

// The control-socket client: how the client commands find their master
// (--name, --control, the runtime directory) and speak to it.

// Exit codes of the client commands, besides exitOK, exitError and
// exitUsage.
const (
	exitReloadAborted    = 3 // reload --wait: a worker failed, the old ones keep serving
	exitReloadInProgress = 4 // reload: another reload is running
	exitNoMaster         = 5 // no master answers at the control socket
	exitPermission       = 6 // the control socket refused this user
	// exitUpgradeFailed: upgrade did not happen; the old binary serves.
	exitUpgradeFailed = 3
	// exitUpgradeInProgress: another upgrade is being prepared.
	exitUpgradeInProgress = 4
)

// errNoAnswer: the master closed the connection before it answered (it
// exited, or execed for an upgrade).
var errNoAnswer = errors.New("closed the connection before it answered")

// exitCoder is an error that carries its own exit status.
type exitCoder interface {
	error
	exitCode() int
}

// controlError is a failure of a client command with its exit status.
type controlError struct {
	code int
	err  error
}

func (e *controlError) Error() string { return e.err.Error() }
func (e *controlError) Unwrap() error { return e.err }
func (e *controlError) exitCode() int { return e.code }

// controlFlags are the flags that name a cluster, shared by run and the
// client commands.
type controlFlags struct {
	name    string
	control string
}

func (f *controlFlags) register(fs *pflag.FlagSet, forRun bool) {
	nameUsage := "cluster name: the control socket is NAME.sock in the runtime directory (default: the only cluster running)"
	if forRun {
		nameUsage = "cluster name: the control socket is NAME.sock in the runtime directory (default: the worker command's base name)"
	}
	fs.StringVar(&f.name, "name", "", nameUsage)
	fs.StringVar(&f.control, "control", "", "control socket path, instead of NAME.sock in $RUNTIME_DIRECTORY, /run/clusterd (root) or $XDG_RUNTIME_DIR/clusterd")
}

// runPath is the control socket of `run`: --control, else NAME.sock in
// the runtime directory. A path that cannot be made without an explicit
// flag is "" and a warning, not a failure.
func (f *controlFlags) runPath(command []string) (path string, warning error) {
	if f.control != "" {
		return f.control, nil
	}
	name := f.name
	if name == "" {
		name = filepath.Base(command[0])
	}
	p, err := master.ControlSocketPath(name, os.Getenv, os.Getuid())
	if err != nil {
		if f.name != "" {
			return "", usagef("--name: %w", err)
		}
		return "", err
	}
	return p, nil
}

// clientPath is the control socket a client command speaks to: --control,
// else --name's socket, else the only socket in the runtime directory.
func (f *controlFlags) clientPath() (string, error) {
	if f.control != "" {
		return f.control, nil
	}
	if f.name != "" {
		p, err := master.ControlSocketPath(f.name, os.Getenv, os.Getuid())
		if err != nil {
			return "", usagef("--name: %w", err)
		}
		return p, nil
	}
	dir, err := master.ControlDir(os.Getenv, os.Getuid())
	if err != nil {
		return "", &controlError{exitNoMaster, err}
	}
	socks := listSockets(dir)
	switch len(socks) {
	case 0:
		return "", &controlError{exitNoMaster, fmt.Errorf("no master running: no control socket in %s", dir)}
	case 1:
		return socks[0], nil
	}
	var names []string
	for _, s := range socks {
		names = append(names, strings.TrimSuffix(filepath.Base(s), ".sock"))
	}
	return "", usagef("%d clusters run here (%s): name one with --name", len(socks), strings.Join(names, ", "))
}

// listSockets returns the *.sock files of dir, sorted.
func listSockets(dir string) []string {
	m, _ := filepath.Glob(filepath.Join(dir, "*.sock")) // the pattern is valid
	var out []string
	for _, p := range m {
		if fi, err := os.Stat(p); err == nil && fi.Mode()&os.ModeSocket != 0 {
			out = append(out, p)
		}
	}
	sort.Strings(out)
	return out
}

// controlClient is one connection to a master's control socket.
type controlClient struct {
	path string
	conn *ipc.Conn
}

// dialControl connects to the socket at path and exchanges hellos. Its
// errors say whether no master runs there or this user may not use it.
func dialControl(ctx context.Context, path string) (*controlClient, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		switch {
		case errors.Is(err, os.ErrNotExist), errors.Is(err, syscall.ECONNREFUSED):
			return nil, &controlError{exitNoMaster, fmt.Errorf("no master running at %s", path)}
		case errors.Is(err, os.ErrPermission):
			return nil, &controlError{exitPermission, fmt.Errorf("permission denied: %s (only root and the master's user may use it)", path)}
		}
		return nil, &controlError{exitNoMaster, fmt.Errorf("control socket %s: %w", path, err)}
	}
	f, err := nc.(*net.UnixConn).File()
	nc.Close() // f is a dup; the conn owns it from here
	if err != nil {
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	conn, err := ipc.NewConn(f, ipc.Options{MaxFrameSize: 16 << 20})
	if err != nil {
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := conn.Handshake(hctx, ipc.Hello{PID: os.Getpid(), WorkerID: -1}); err != nil {
		conn.Close()
		return nil, &controlError{exitNoMaster, fmt.Errorf("control socket %s: no answer from a master: %w", path, err)}
	}
	return &controlClient{path: path, conn: conn}, nil
}

func (c *controlClient) close() { c.conn.Close() }

// do sends req and reads the answer into reply (nil: ignore its body),
// handing each streamed progress message to progress (nil: ignore them).
func (c *controlClient) do(ctx context.Context, req master.ControlRequest, reply any, progress func(master.ControlProgress) error) error {
	m, err := ipc.NewMessage(ipc.KindRequest, &req)
	if err != nil {
		return err
	}
	m.ID = 1
	// A master that refuses this client answers before it reads the
	// request and closes: its answer is still there to receive.
	sendErr := c.conn.Send(m)
	stop := context.AfterFunc(ctx, func() { c.conn.Close() })
	defer stop()
	for {
		r, err := c.conn.Recv()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if sendErr != nil {
				return fmt.Errorf("control socket %s: %w", c.path, sendErr)
			}
			if errors.Is(err, io.EOF) {
				return fmt.Errorf("the master at %s %w", c.path, errNoAnswer)
			}
			return fmt.Errorf("control socket %s: %w", c.path, err)
		}
		_ = r.CloseFDs() // answers carry no descriptors
		switch r.Kind {
		case ipc.KindUser:
			var p master.ControlProgress
			if err := r.Decode(&p); err != nil {
				return err
			}
			if progress != nil {
				if err := progress(p); err != nil {
					return err
				}
			}
		case ipc.KindResponse:
			if reply == nil {
				return nil
			}
			return r.Decode(reply)
		case ipc.KindError:
			var e ipc.Error
			if err := r.Decode(&e); err != nil {
				return err
			}
			return remoteError(e)
		default:
			return fmt.Errorf("control socket %s: unexpected %s message", c.path, r.Kind)
		}
	}
}

// remoteError turns the master's error into the client's, with its exit
// status.
func remoteError(e ipc.Error) error {
	err := errors.New(e.Text)
	switch e.Code {
	case ipc.CodeForbidden:
		return &controlError{exitPermission, fmt.Errorf("permission denied: %s", e.Text)}
	case master.CodeReloadInProgress:
		return &controlError{exitReloadInProgress, err}
	case master.CodeReloadAborted:
		return &controlError{exitReloadAborted, err}
	case master.CodeUpgradeFailed:
		return &controlError{exitUpgradeFailed, err}
	case master.CodeUpgradeInProgress:
		return &controlError{exitUpgradeInProgress, err}
	case ipc.CodeBadRequest:
		return &usageError{err}
	}
	return err
}

// call dials the cluster of f and runs one request.
func (f *controlFlags) call(ctx context.Context, req master.ControlRequest, reply any, progress func(master.ControlProgress) error) error {
	path, err := f.clientPath()
	if err != nil {
		return err
	}
	c, err := dialControl(ctx, path)
	if err != nil {
		return err
	}
	defer c.close()
	return c.do(ctx, req, reply, progress)
}

// clientCommand builds a client command with the --name/--control flags.
func clientCommand(use, short string, args cobra.PositionalArgs, f *controlFlags) *cobra.Command {
	cmd := &cobra.Command{Use: use, Short: short, Args: args}
	f.register(cmd.Flags(), false)
	return cmd
}
