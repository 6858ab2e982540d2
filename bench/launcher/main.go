// Command launcher is the floor of bench/compare.sh: the least a
// multi-process server needs, with no supervision at all. It binds one
// socket, starts N copies of a command that each inherit it as fd 3
// (LISTEN_FDS=1), passes SIGTERM and SIGINT on to them and exits when they
// have all exited. It restarts nothing and reloads nothing.
//
//	go build -o bench/bin/ ./bench/launcher ./bench/goserver
//	bench/bin/launcher -addr 127.0.0.1:8080 -n 2 -- bench/bin/goserver
package main

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "address to listen on")
	n := flag.Int("n", 2, "processes to start")
	flag.Parse()
	if err := run(*addr, *n, flag.Args()); err != nil {
		fmt.Fprintf(os.Stderr, "launcher: %v\n", err)
		os.Exit(1)
	}
}

func run(addr string, n int, argv []string) error {
	if len(argv) == 0 {
		return errors.New("no command given after the flags")
	}
	if n < 1 {
		return fmt.Errorf("-n %d: want at least 1", n)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		return err
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	var cmds []*exec.Cmd
	for range n {
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		cmd.ExtraFiles = []*os.File{f}
		cmd.Env = append(os.Environ(), "LISTEN_FDS=1")
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			for _, c := range cmds {
				c.Process.Kill()
				c.Wait()
			}
			return err
		}
		cmds = append(cmds, cmd)
	}
	go func() {
		for sig := range sigs {
			for _, c := range cmds {
				c.Process.Signal(sig)
			}
		}
	}()
	for _, c := range cmds {
		c.Wait()
	}
	return nil
}
