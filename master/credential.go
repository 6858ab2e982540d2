package master

import (
	"errors"
	"fmt"
	"os"
	"os/user"
	"strconv"
	"syscall"
)

// User and group lookup for Options.User and Options.Group.

// lookupCredential resolves user and group names or numeric ids.
func lookupCredential(userName, groupName string) (*syscall.Credential, error) {
	if userName == "" && groupName == "" {
		return nil, nil
	}
	cred := &syscall.Credential{Uid: uint32(os.Getuid()), Gid: uint32(os.Getgid()), NoSetGroups: true}
	if userName != "" {
		u, err := lookupUser(userName)
		if err != nil {
			return nil, err
		}
		uid, err := strconv.ParseUint(u.Uid, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("user %s: uid %q: %w", userName, u.Uid, err)
		}
		gid, err := strconv.ParseUint(u.Gid, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("user %s: gid %q: %w", userName, u.Gid, err)
		}
		cred.Uid, cred.Gid = uint32(uid), uint32(gid)
		if groupName == "" {
			// Like initgroups(3): the user's supplementary groups too.
			ids, err := u.GroupIds()
			if err != nil {
				return nil, fmt.Errorf("user %s: groups: %w", userName, err)
			}
			for _, id := range ids {
				g, err := strconv.ParseUint(id, 10, 32)
				if err != nil {
					return nil, fmt.Errorf("user %s: group id %q: %w", userName, id, err)
				}
				cred.Groups = append(cred.Groups, uint32(g))
			}
			cred.NoSetGroups = false
		}
	}
	if groupName != "" {
		g, err := lookupGroup(groupName)
		if err != nil {
			return nil, err
		}
		gid, err := strconv.ParseUint(g.Gid, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("group %s: gid %q: %w", groupName, g.Gid, err)
		}
		cred.Gid = uint32(gid)
		cred.Groups = []uint32{uint32(gid)}
		cred.NoSetGroups = false
	}
	if int(cred.Uid) == os.Geteuid() && int(cred.Gid) == os.Getegid() && (cred.NoSetGroups || os.Geteuid() != 0) {
		// Nothing to change (and an unprivileged master could not call
		// setgroups(2) anyway).
		return nil, nil
	}
	return cred, nil
}

func lookupUser(name string) (*user.User, error) {
	if _, err := strconv.ParseUint(name, 10, 32); err == nil {
		u, err := user.LookupId(name)
		if err == nil {
			return u, nil
		}
		// A numeric uid without a passwd entry is still a valid identity.
		var unknown user.UnknownUserIdError
		if errors.As(err, &unknown) {
			return &user.User{Uid: name, Gid: name, Username: name}, nil
		}
		return nil, fmt.Errorf("user %s: %w", name, err)
	}
	u, err := user.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("user %s: %w", name, err)
	}
	return u, nil
}

func lookupGroup(name string) (*user.Group, error) {
	if _, err := strconv.ParseUint(name, 10, 32); err == nil {
		g, err := user.LookupGroupId(name)
		if err == nil {
			return g, nil
		}
		var unknown user.UnknownGroupIdError
		if errors.As(err, &unknown) {
			return &user.Group{Gid: name, Name: name}, nil
		}
		return nil, fmt.Errorf("group %s: %w", name, err)
	}
	g, err := user.LookupGroup(name)
	if err != nil {
		return nil, fmt.Errorf("group %s: %w", name, err)
	}
	return g, nil
}
