package master

import (
	"errors"
	"net"
	"testing"

	"github.com/clusterd/clusterd/sockshare"
	"golang.org/x/sys/unix"
)

// TestRelisten: a TCP listener (bound to port 0) that a worker shut down
// listens again in place on its address; one that a worker then bound to
// another port cannot, and is reported so (the master replaces it).
func TestRelisten(t *testing.T) {
	for _, tc := range []struct {
		name   string
		rebind bool
	}{{"shut down", false}, {"bound elsewhere", true}} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := sockshare.Listen(sockshare.Spec{Network: "tcp", Address: "127.0.0.1:0"}, sockshare.ListenOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			a, err := sockshare.Addr(f)
			if err != nil {
				t.Fatal(err)
			}
			fd := int(f.Fd())
			if err := unix.Shutdown(fd, unix.SHUT_RD); err != nil {
				t.Fatal(err)
			}
			if tc.rebind {
				if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
					t.Fatal(err)
				}
			}
			if ok, err := listening(f, false); ok || err != nil {
				t.Fatalf("listening = %v, %v after the shutdown, want false", ok, err)
			}
			err = relisten(f, a, 16, false)
			if tc.rebind {
				if !errors.Is(err, errCannotRelisten) {
					t.Fatalf("relisten: %v, want errCannotRelisten", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			c, err := net.Dial("tcp", a.String())
			if err != nil {
				t.Fatalf("dial %s after relisten: %v", a, err)
			}
			c.Close()
		})
	}
}
