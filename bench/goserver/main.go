// Command goserver is the plain Go HTTP server of bench/compare.sh: it knows
// nothing of clusterd. It serves on the socket it inherits as fd 3
// (LISTEN_FDS, systemd's protocol, which clusterd and bench/launcher both
// speak) or on -addr alone, answers "pid=N", and on SIGTERM or SIGINT does
// what most Go servers do: http.Server.Shutdown, which stops accepting and
// closes idle keep-alive connections at once.
//
//	go build -o bench/bin/ ./bench/goserver
//	bench/bin/goserver -addr 127.0.0.1:8080
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "address to listen on when no socket is inherited")
	flag.Parse()
	if err := run(*addr); err != nil {
		fmt.Fprintf(os.Stderr, "goserver: %v\n", err)
		os.Exit(1)
	}
}

func run(addr string) error {
	ln, err := listener(addr)
	if err != nil {
		return err
	}
	pid := os.Getpid()
	body := []byte("pid=" + strconv.Itoa(pid) + "\n")
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Write(body)
	})}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case err := <-served:
		return err
	case <-stop:
	}
	if err := srv.Shutdown(context.Background()); err != nil {
		return err
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// listener takes the inherited fd 3 when LISTEN_FDS says there is one
// (LISTEN_PID, when set, must be this process), else binds addr.
func listener(addr string) (net.Listener, error) {
	n, _ := strconv.Atoi(os.Getenv("LISTEN_FDS"))
	if p := os.Getenv("LISTEN_PID"); n < 1 || (p != "" && p != strconv.Itoa(os.Getpid())) {
		return net.Listen("tcp", addr)
	}
	f := os.NewFile(3, "LISTEN_FD_3")
	ln, err := net.FileListener(f)
	f.Close() // FileListener made its own copy
	if err != nil {
		return nil, fmt.Errorf("inherited fd 3: %w", err)
	}
	return ln, nil
}
