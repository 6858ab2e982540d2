//go:build !linux

package sockshare

import (
	"errors"
	"fmt"
	"os"
)

// Files returns the sockets passed to this process by socket activation. It is
// implemented on Linux only; elsewhere it returns an error wrapping
// [errors.ErrUnsupported] when the environment says the process was activated, and
// an empty result otherwise.
func Files(unsetEnv bool) ([]*os.File, error) {
	n, _, err := ParseListenEnv(os.LookupEnv, os.Getpid())
	if unsetEnv {
		err = errors.Join(err, unsetListenEnv())
	}
	if err != nil {
		return nil, fmt.Errorf("socket activation: %w", err)
	}
	if n == 0 {
		return nil, nil
	}
	return nil, fmt.Errorf("socket activation: %w", errUnsupported)
}
