package master

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/clusterd/clusterd/ipc"
	"github.com/clusterd/clusterd/sockshare"
)

// Run-time listeners: a worker asks the master for a listener by address
// (worker.Listen, ipc KindListenRequest), as a Node cluster worker's
// listen() does. There is one socket per address for the whole cluster
// (one per slot and address under BalanceReusePort), created when the first
// worker asks and handed to every worker that asks after it; the master
// holds it across restarts and reloads and closes it when Run ends.
// Addresses are matched as written: every worker asking for
// "tcp://127.0.0.1:0" gets the one socket the first request bound, on the
// port the kernel chose (as in a Node cluster), and the bound address
// ("tcp://127.0.0.1:41234") names it too. An address of Options.Listen or
// an activated socket (the same spec, as given or as bound, or the same
// name) is answered with that listener. Like the listeners, it is used by
// the loop goroutine only.

// clusterSockets are the master's listeners plus the run-time ones.
type clusterSockets struct {
	*listeners
	byKey   map[string]*runtimeListener // requested and bound spec strings
	created int                         // run-time addresses opened (the limit's count)
	refused map[int]int                 // per pid: requests refused for the limit
}

// runtimeListener is one address opened at a worker's request.
type runtimeListener struct {
	spec   sockshare.Spec // as bound: port 0 replaced by the chosen port
	shared *os.File       // nil when per slot
	slots  map[int]*os.File
}

// maxLimitRefusals is how many requests past Options.MaxListeners one
// worker may make before it is treated as broken (a protocol error).
const maxLimitRefusals = 8

// listenError is why a listen request failed, with the ipc code the worker
// gets.
type listenError struct {
	code string
	err  error
}

func (e *listenError) Error() string { return e.err.Error() }
func (e *listenError) Unwrap() error { return e.err }

func newClusterSockets(ls *listeners) *clusterSockets {
	return &clusterSockets{listeners: ls, byKey: make(map[string]*runtimeListener), refused: make(map[int]int)}
}

var _ sockets = (*clusterSockets)(nil)

// listen returns the socket for spec in slot (owned by cs), opening it if
// no worker asked for it before.
func (cs *clusterSockets) listen(slot, pid int, spec sockshare.Spec) (*os.File, error) {
	if f, ok, err := cs.static(slot, spec); ok || err != nil {
		return f, err
	}
	reuse := cs.cfg.Balance == BalanceReusePort && spec.Network != "unix"
	if rl, ok := cs.byKey[specKey(spec)]; ok {
		if !reuse {
			return rl.shared, nil
		}
		if f, ok := rl.slots[slot]; ok {
			return f, nil
		}
		opts := cs.cfg.ListenOptions
		opts.ReusePort = true
		f, err := sockshare.Listen(rl.spec, opts)
		if err != nil {
			return nil, &listenError{ipc.CodeListen, fmt.Errorf("worker %d: %w", slot, err)}
		}
		rl.slots[slot] = f
		return f, nil
	}
	if cs.cfg.AllowListen != nil {
		if err := cs.cfg.AllowListen(spec); err != nil {
			return nil, &listenError{ipc.CodeForbidden, fmt.Errorf("listen %s: %w", spec, err)}
		}
	}
	if cs.created >= cs.cfg.MaxListeners {
		cs.refused[pid]++
		err := fmt.Errorf("listen %s: the cluster has %d run-time listeners, the most Options.MaxListeners allows",
			spec, cs.created)
		if cs.refused[pid] > maxLimitRefusals {
			return nil, &listenError{"", fmt.Errorf("%w: worker kept asking for listeners past the limit: %w", ipc.ErrProtocol, err)}
		}
		return nil, &listenError{ipc.CodeLimit, err}
	}
	opts := cs.cfg.ListenOptions
	opts.ReusePort = opts.ReusePort || reuse
	f, err := sockshare.Listen(spec, opts)
	if err != nil {
		return nil, &listenError{ipc.CodeListen, err} // sockshare's error names the address
	}
	rl := &runtimeListener{spec: spec}
	if a, err := sockshare.Addr(f); err == nil {
		rl.spec = withPort(spec, a)
	}
	if reuse {
		rl.slots = map[int]*os.File{slot: f}
	} else {
		rl.shared = f
	}
	cs.created++
	cs.byKey[specKey(spec)] = rl
	cs.byKey[specKey(rl.spec)] = rl
	cs.log.Info("listening", "addr", rl.spec.String(), "worker", slot, "pid", pid)
	return f, nil
}

// static returns the Options.Listen (or activated) listener that spec
// names: the same network and address, as given or as bound, or the same
// name.
func (cs *clusterSockets) static(slot int, spec sockshare.Spec) (*os.File, bool, error) {
	for i, bound := range cs.specs {
		same := spec.Name != "" && spec.Name == cs.names[i]
		if spec.Address != "" {
			same = same || (bound.Address != "" && specKey(spec) == specKey(bound)) ||
				(i < len(cs.cfg.Listen) && specKey(spec) == specKey(cs.cfg.Listen[i])) ||
				(i < len(cs.addrs) && spec.Address == cs.addrs[i].String() &&
					strings.HasPrefix(spec.Network, cs.addrs[i].Network()))
		}
		if !same {
			continue
		}
		files, _, err := cs.forSlot(slot)
		if err != nil {
			return nil, true, &listenError{ipc.CodeListen, err}
		}
		return files[i], true, nil
	}
	return nil, false, nil
}

// specKey identifies an address regardless of its name.
func specKey(s sockshare.Spec) string { return s.Network + "://" + s.Address }

// dropSlot closes a removed slot's sockets, run-time ones included.
func (cs *clusterSockets) dropSlot(slot int) {
	cs.listeners.dropSlot(slot)
	for _, rl := range cs.uniqueRuntime() {
		if f, ok := rl.slots[slot]; ok {
			delete(rl.slots, slot)
			if err := f.Close(); err != nil {
				cs.log.Warn("close listener", "worker", slot, "addr", rl.spec.String(), "error", err)
			}
		}
	}
}

func (cs *clusterSockets) uniqueRuntime() []*runtimeListener {
	seen := make(map[*runtimeListener]bool)
	var out []*runtimeListener
	for _, rl := range cs.byKey {
		if !seen[rl] {
			seen[rl] = true
			out = append(out, rl)
		}
	}
	return out
}

// closeRuntime closes every run-time listener; called once when Run ends.
func (cs *clusterSockets) closeRuntime() error {
	var errs []error
	closeOne := func(f *os.File) {
		if err := f.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
			errs = append(errs, fmt.Errorf("close listener %s: %w", f.Name(), err))
		}
	}
	for _, rl := range cs.uniqueRuntime() {
		if rl.shared != nil {
			closeOne(rl.shared)
		}
		for _, f := range rl.slots {
			closeOne(f)
		}
	}
	clear(cs.byKey)
	return errors.Join(errs...)
}

// listenCmd is a worker's listen request, from its IPC session.
type listenCmd struct {
	pid   int
	spec  sockshare.Spec
	reply chan listenReply
}

type listenReply struct {
	f    *os.File // owned by the master; the session sends a copy
	addr string   // its bound address
	err  error    // a *listenError
	// balanced: the master keeps f and hands out its connections, as
	// listener id.
	balanced bool
	id       uint8
}

func (c *listenCmd) apply(l *loop) {
	w := l.byPID[c.pid]
	if w == nil || w.state == stateExited {
		c.reply <- listenReply{err: &listenError{ipc.CodeGone, fmt.Errorf("worker pid %d: %w", c.pid, ErrNoWorker)}}
		return
	}
	if l.sockets == nil {
		c.reply <- listenReply{err: &listenError{ipc.CodeUnsupported, errors.New("no run-time listeners")}}
		return
	}
	f, err := l.sockets.listen(w.slot.id, w.pid, c.spec)
	if err != nil {
		c.reply <- listenReply{err: err}
		return
	}
	addr := c.spec.Address
	if a, err := sockshare.Addr(f); err == nil {
		addr = a.String()
	}
	r := listenReply{f: f, addr: addr}
	if l.balance != nil {
		if r.id, err = l.balance.listenerID(f, addr); err != nil {
			c.reply <- listenReply{err: err}
			return
		}
		r.balanced = true
	}
	c.reply <- r
	l.emit(EventListening, w, func(e *Event) { e.Addr = addr })
}
