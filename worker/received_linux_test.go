package worker

import (
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// tcpPair returns the server end and the client end of a loopback TCP
// connection.
func tcpPair(t *testing.T) (server, client net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	server, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Close() })
	return server, client
}

// The drain closes a connection that has been idle past the grace only if
// no byte has reached it since it first looked: a request that arrived, in
// the kernel's queue or already read by net/http, keeps it open.
func TestCloseIfQuietSeesArrivingRequest(t *testing.T) {
	const grace = time.Minute
	start := time.Now()
	later := start.Add(2 * grace)
	for _, read := range []bool{false, true} {
		server, client := tcpPair(t)
		e := &connEntry{st: http.StateIdle}
		if _, ok := e.closeIfQuiet(server, start, grace, start); !ok || !e.sampled || e.closed {
			t.Fatalf("first look within the grace: sampled %v, closed %v; want a sample and the connection open", e.sampled, e.closed)
		}
		if _, err := io.WriteString(client, "POST / HTTP/1.1\r\n"); err != nil {
			t.Fatal(err)
		}
		if read {
			// net/http has the bytes in its buffer, not yet the header.
			buf := make([]byte, 64)
			if _, err := server.Read(buf); err != nil {
				t.Fatal(err)
			}
		} else if _, pending, known := received(server); !known || !pending {
			// Loopback delivers a write before it returns.
			t.Fatalf("received after a write: pending %v, known %v; want both", pending, known)
		}
		if _, ok := e.closeIfQuiet(server, start, grace, later); !ok || e.closed {
			t.Errorf("after the grace with a request arriving (read by the server %v): closed %v, want open", read, e.closed)
		}
		if read {
			// Nothing more arrives: the next look past the grace closes it.
			if _, ok := e.closeIfQuiet(server, start, grace, later.Add(2*grace)); ok || !e.closed {
				t.Errorf("after the grace with nothing new: closed %v, want closed", e.closed)
			}
			if _, err := client.Read(make([]byte, 1)); err != io.EOF {
				t.Errorf("client read after the drain closed the connection = %v, want EOF", err)
			}
		}
	}
}

func TestCloseIfQuietLeavesActive(t *testing.T) {
	server, _ := tcpPair(t)
	e := &connEntry{st: http.StateActive}
	start := time.Now()
	if _, ok := e.closeIfQuiet(server, start, time.Millisecond, start.Add(time.Hour)); ok || e.closed {
		t.Errorf("active connection: closed %v, want open and no timer", e.closed)
	}
}

// A connection of a balanced listener (the master handed it over) is
// checked like one the server accepted itself: without that, the drain
// closed an idle keep-alive connection of a balanced worker at the end of
// the grace even with a request in its receive queue.
func TestReceivedSeesBalancedConn(t *testing.T) {
	server, client := tcpPair(t)
	c := &handedConn{Conn: server, h: &handoff{kick: make(chan struct{}, 1)}}
	if _, err := io.WriteString(client, "POST / HTTP/1.1\r\n"); err != nil {
		t.Fatal(err)
	}
	if n, pending, known := received(c); !known || !pending || n == 0 {
		t.Errorf("received of a balanced connection with a request queued: %d bytes, pending %v, known %v; want all", n, pending, known)
	}
}
