package master

import (
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"sync"
	"time"
)

// supported reports whether the master can run here: on Linux, always.
func supported() error { return nil }

// run is Run on Linux.
func (m *Master) run(ctx context.Context) (err error) {
	defer close(m.done)
	loopEnded := sync.OnceFunc(func() { close(m.loopEnded) })
	defer loopEnded() // when Run fails before the loop
	defer m.hub.close()
	cfg, log := m.cfg, m.log
	// An upgrade of the previous image under this pid left its state.
	up, err := takeUpgradeState()
	if err != nil {
		return err
	}
	files := upgradeFiles{}
	ls := newListeners(cfg, log)
	cs := newClusterSockets(ls)
	defer func() {
		cerr := errors.Join(ls.closeAll(), cs.closeRuntime())
		if cerr != nil && err == nil {
			err = cerr
		}
	}()
	if cfg.PIDFile != "" {
		if err := writePIDFile(cfg.PIDFile); err != nil {
			return err
		}
		defer removePIDFile(cfg.PIDFile, log)
	}
	if up != nil {
		if err := ls.fromUpgrade(up.Listeners, files); err != nil {
			return err
		}
		cs.restore(up, files)
	} else if err := ls.bind(); err != nil {
		return err
	}
	sd := newSDNotifier(os.Getenv("NOTIFY_SOCKET"), log.Named("notify"))
	defer sd.close()
	// After an upgrade these sockets are stored already: systemd keeps one
	// of each (it removes duplicates), and storing them again lets a
	// healed listener be stored anew.
	if max := fdStoreMax(os.LookupEnv); max != 0 {
		if n, err := ls.store(sd, max); err != nil {
			log.Warn("listeners not all kept by the service manager", "stored", n, "error", err)
		} else if n > 0 {
			log.Info("listeners kept by the service manager", "stored", n)
		}
	}
	m.addrs = ls.addrs
	close(m.listening)
	if len(m.addrs) == 0 {
		// A server that binds its own port then crash-loops on "address
		// already in use" in every worker but one: say why up front.
		log.Warn("no listen address: workers get no sockets from clusterd")
	}

	r, err := startReaper(!cfg.Subreaper)
	if err != nil {
		return err
	}
	defer r.stop()
	// Before any worker: the guardian must know of every one.
	var cont *containment
	if up != nil {
		cont, err = restoreContainment(cfg, r, up, log)
	} else {
		cont, err = newContainment(cfg, r, log)
	}
	if err != nil {
		return err
	}
	defer cont.close()
	events := make(chan workerEvent)
	done := make(chan struct{})
	closeDone := sync.OnceFunc(func() { close(done) })
	defer closeDone()
	var nd *notifyDir
	if cfg.speaksNotify() {
		if up != nil && up.NotifyDir != "" {
			nd, err = adoptNotifyDir(up.NotifyDir, cfg.credential)
		} else {
			nd, err = newNotifyDir(cfg.credential)
		}
		if err != nil {
			return err
		}
		defer func() {
			if rerr := nd.remove(); rerr != nil {
				log.Warn("runtime directory not removed", "error", rerr)
			}
		}()
	}
	out, err := newOutputs(cfg.Stdout, cfg.Stderr, log.Named("output"))
	if err != nil {
		return err
	}
	defer func() {
		// Every pipe is at its end now: quote the crashing worker's very
		// last line, which the relay may have read after the loop decided.
		var ie *IntensityError
		if errors.As(err, &ie) && ie.tail != nil {
			ie.Output = ie.tail.String()
		}
	}()
	defer out.wait()
	var bal *balancer
	if cfg.Balance.overIPC() {
		bal = newBalancer(cfg.Balance, cfg.ConnQueue, cfg.HeartbeatInterval, log.Named("balance"))
		ls.healed = bal.healed // its accepters follow a healed listener
		bal.deaf = func() { askListenerCheck(m.cmds, done) }
		// After the loop and the sessions (deferred before st.close): no
		// worker is left to take what the master still holds.
		defer bal.close()
		if up != nil {
			if err := bal.restore(up, files); err != nil {
				return err
			}
		}
	}
	st, err := newExecStarter(cfg, log, nd, out, r, cont, events, m.cmds, done)
	if err != nil {
		return err
	}
	st.logs, st.ipc, st.slots = m.logs, &m.ipc, &m.slots
	st.balance, st.dispatcher, st.dispatch = bal, m.jobs, m.dispatch
	if bal != nil {
		st.announced = ls.announced()
	}
	defer st.close()
	u := &upgrader{
		cfg: cfg, log: log, ls: ls, cs: cs, cont: cont, nd: nd, st: st, balance: bal,
		cmds: m.cmds, done: done, started: time.Now(),
	}
	if up != nil {
		u.started, u.upgrades = time.Unix(0, up.Started), up.Upgrades
	}
	m.started, m.upgrades = u.started, u.upgrades
	if cfg.ControlSocket != "" {
		var inherited *os.File // the previous image's listener, after an upgrade
		if up != nil && up.Control > 0 && up.ControlPath == cfg.ControlSocket {
			inherited = files.file(up.Control, up.ControlPath)
		}
		ctl, lerr := listenControl(m, cfg.ControlSocket, log.Named("control"), inherited)
		if lerr != nil {
			return lerr
		}
		u.ctl = ctl
		// Closed once the loop has ended (deferred after loopEnded below
		// runs): a stop request is answered when every worker is reaped.
		defer func() {
			if cerr := ctl.close(); cerr != nil && err == nil {
				err = cerr
			}
		}()
	}
	// Deferred last, so they run first: the loop has ended, and goroutines
	// still sending it events must give up before they are waited for.
	defer r.loopEnded()
	defer closeDone()

	l := newLoop(cfg, log, loopDeps{
		starter:        st,
		sockets:        cs,
		exits:          r.exits,
		events:         events,
		cluster:        cont,
		output:         out.takeTail,
		sdNotify:       sd.notify,
		memory:         newMemorySampler().sample,
		oomKills:       oomKillCount,
		threads:        recordThreads,
		ready:          func() { close(m.ready) },
		jitter:         rand.Float64,
		watchdog:       watchdogInterval(os.LookupEnv, os.Getpid()),
		commands:       m.cmds,
		hub:            m.hub,
		routes:         &m.routes,
		sdStatus:       sd.statusFunc(),
		balance:        bal,
		jobs:           m.jobs,
		checkListeners: ls.check,
		upgrader:       u,
		adopt:          up,
		adoptFiles:     files,
	})
	err = l.run(ctx)
	m.routes.Store(nil)
	loopEnded()
	return err
}
