//go:build !linux

package master

import (
	"context"
	"errors"
	"fmt"
	"runtime"
)

// The master supervises on Linux only (process groups, the parent-death
// signal, SCM_RIGHTS and SO_PEERCRED, /proc). Elsewhere the package
// compiles, so that a program that is both master and worker builds
// everywhere, and New says why it cannot run.

var errUnsupported = fmt.Errorf("master: supervising workers needs Linux, not %s: %w", runtime.GOOS, errors.ErrUnsupported)

func supported() error { return errUnsupported }

func (m *Master) run(ctx context.Context) error { return errUnsupported }

// ExecWorker is the exec-worker mode; off Linux it returns an error
// wrapping [errors.ErrUnsupported].
func ExecWorker(args []string) error { return fmt.Errorf("exec-worker: %w", errUnsupported) }

// Guardian is the guardian mode of Options.Contain; off Linux it returns an
// error wrapping [errors.ErrUnsupported].
func Guardian() error { return fmt.Errorf("guardian: %w", errUnsupported) }

// upgrader is the in-place upgrade's state; off Linux there is none.
type upgrader struct{ st *execStarter }

type execStarter struct{}

type upgradeFiles map[int]any

func (c *upgradeCmd) apply(l *loop) {
	if c.reply != nil {
		c.reply <- ErrUpgradeUnsupported
	}
}

func (l *loop) adoptSlots(st *upgradeState, files upgradeFiles) {}
