package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/clusterd/clusterd/master"
)

// upgradeWaitTimeout bounds how long `upgrade --wait` waits for the new
// image to answer on the control socket.
const upgradeWaitTimeout = 30 * time.Second

func newUpgradeCommand() *cobra.Command {
	f := &controlFlags{}
	var wait bool
	cmd := clientCommand("upgrade", "Replace the master's binary in place, as SIGUSR2 does: same pid, same workers", noArgs, f)
	cmd.Long = `Upgrade has the running master exec the binary at its path (replace the file
with the new version first) under the same pid. The workers, listening sockets
and IPC connections cross the exec; no worker restarts and no connection is
refused. The new binary first runs in a check mode; if it is missing, not
executable, of another state version or fails its check, or if the cluster is
not steady (a worker starting, a reload or a stop running), nothing changes.
With --wait it waits for the new image and exits:
  0  upgraded: the same master pid runs the new binary
  3  not upgraded: the old binary keeps serving (the error says why)
  4  another upgrade is being prepared`
	cmd.Flags().BoolVar(&wait, "wait", false, "wait until the new binary serves, or say why the old one still does")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		out := cmd.OutOrStdout()
		ctx := cmd.Context()
		if !wait {
			if err := f.call(ctx, master.ControlRequest{Op: master.ControlUpgrade, Slot: -1}, &struct{}{}, nil); err != nil {
				return err
			}
			_, err := fmt.Fprintln(out, "upgrade started (the master's log says how it ended)")
			return err
		}
		var before master.ControlStatusReply
		if err := f.call(ctx, master.ControlRequest{Op: master.ControlStatus, Slot: -1}, &before, nil); err != nil {
			return err
		}
		err := f.call(ctx, master.ControlRequest{Op: master.ControlUpgrade, Wait: true, Slot: -1}, &struct{}{}, nil)
		var ce *controlError
		if err != nil && (errors.As(err, &ce) || !isConnectionEnd(err)) {
			return err
		}
		after, err := awaitUpgraded(ctx, f, before)
		if err != nil {
			return err
		}
		kept := 0
		old := make(map[int]bool)
		for _, w := range before.Workers {
			old[w.PID] = true
		}
		for _, w := range after.Workers {
			if old[w.PID] {
				kept++
			}
		}
		_, err = fmt.Fprintf(out, "upgrade completed: master pid %d runs %s (version %s, was %s); %d of %d workers kept\n",
			after.PID, after.Exe, after.Version, before.Version, kept, len(before.Workers))
		return err
	}
	return cmd
}

// isConnectionEnd reports whether err is the control connection ending
// without an answer, as the master's exec ends it.
func isConnectionEnd(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, errNoAnswer) ||
		errors.Is(err, syscall.ECONNRESET)
}

// awaitUpgraded asks the master's status until the new image answers
// (Upgrades grew), within upgradeWaitTimeout.
func awaitUpgraded(ctx context.Context, f *controlFlags, before master.ControlStatusReply) (master.ControlStatusReply, error) {
	ctx, cancel := context.WithTimeout(ctx, upgradeWaitTimeout)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var lastErr error
	for {
		var st master.ControlStatusReply
		err := f.call(ctx, master.ControlRequest{Op: master.ControlStatus, Slot: -1}, &st, nil)
		switch {
		case err == nil && st.PID != before.PID:
			return st, fmt.Errorf("the master at %s is now pid %d, not %d: the upgrade failed and the cluster was restarted", f.control, st.PID, before.PID)
		case err == nil && st.Upgrades > before.Upgrades:
			return st, nil
		case err == nil:
			lastErr = errors.New("the old image still answers")
		default:
			lastErr = err
		}
		select {
		case <-ctx.Done():
			return master.ControlStatusReply{}, &controlError{exitUpgradeFailed,
				fmt.Errorf("no upgraded master answered within %v (last: %v)", upgradeWaitTimeout, lastErr)}
		case <-tick.C:
		}
	}
}
