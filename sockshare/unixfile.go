package sockshare

import (
	"fmt"
	"os/user"
	"strconv"
)

// withUnixFile returns opts with the socket-file options of a unix spec
// (mode=, owner=, group=) in place of opts' own, user and group names
// resolved to ids. Fields spec does not set keep opts' values.
func withUnixFile(spec Spec, opts ListenOptions) (ListenOptions, error) {
	if spec.Network != "unix" || spec.IsAbstract() {
		return opts, nil
	}
	if spec.UnixMode != 0 {
		opts.UnixMode = spec.UnixMode
	}
	if spec.UnixOwner == "" && spec.UnixGroup == "" {
		return opts, nil
	}
	owner := Owner{UID: -1, GID: -1}
	if opts.UnixOwner != nil {
		owner = *opts.UnixOwner
	}
	if spec.UnixOwner != "" {
		uid, err := lookupID(spec.UnixOwner, false)
		if err != nil {
			return opts, fmt.Errorf("unix socket owner %q: %w", spec.UnixOwner, err)
		}
		owner.UID = uid
	}
	if spec.UnixGroup != "" {
		gid, err := lookupID(spec.UnixGroup, true)
		if err != nil {
			return opts, fmt.Errorf("unix socket group %q: %w", spec.UnixGroup, err)
		}
		owner.GID = gid
	}
	opts.UnixOwner = &owner
	return opts, nil
}

// lookupID resolves a user (or group) name to its id; a decimal number is an
// id already and is not looked up, so that ids without an account work.
func lookupID(name string, group bool) (int, error) {
	if id, err := strconv.ParseUint(name, 10, 31); err == nil {
		return int(id), nil
	}
	var ids string
	if group {
		g, err := user.LookupGroup(name)
		if err != nil {
			return 0, err
		}
		ids = g.Gid
	} else {
		u, err := user.Lookup(name)
		if err != nil {
			return 0, err
		}
		ids = u.Uid
	}
	id, err := strconv.Atoi(ids)
	if err != nil {
		return 0, fmt.Errorf("id %q is not a number", ids)
	}
	return id, nil
}
