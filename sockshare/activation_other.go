//go:build !linux

package sockshare

import (
	"fmt"
	"os"
)

// Files returns the sockets passed to this process by socket activation. It is
// implemented on Linux only; elsewhere it returns an error wrapping
// [errors.ErrUnsupported] when the environment says the process was activated, and
// an empty result otherwise.
func Files(unsetEnv bool) ([]*os.File, error) {
	n, _, err := activationEnv(unsetEnv)
	if err != nil || n == 0 {
		return nil, err
	}
	return nil, fmt.Errorf("socket activation: %w", errUnsupported)
}
