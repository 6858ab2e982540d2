package sockshare_test

import (
	"fmt"
	"log"
	"net/http"
	"os"
	"os/exec"

	"github.com/clusterd/clusterd/sockshare"
)

func ExampleParseSpec() {
	for _, s := range []string{":8080", "web=tcp4://127.0.0.1:0", "unix:///run/app.sock", "admin=unix://@clusterd"} {
		spec, err := sockshare.ParseSpec(s)
		if err != nil {
			fmt.Println(err)
			continue
		}
		fmt.Printf("%-28s name=%q network=%s address=%s\n", spec, spec.Name, spec.Network, spec.Address)
	}
	_, err := sockshare.ParseSpec("tcp://:http")
	fmt.Println(err)
	// Output:
	// tcp://:8080                  name="" network=tcp address=:8080
	// web=tcp4://127.0.0.1:0       name="web" network=tcp4 address=127.0.0.1:0
	// unix:///run/app.sock         name="" network=unix address=/run/app.sock
	// admin=unix://@clusterd       name="admin" network=unix address=@clusterd
	// listen address "tcp://:http": tcp address ":http": port "http" is not a decimal number
}

func ExampleListenEnv() {
	fmt.Println(sockshare.ListenEnv([]string{"web", "admin"}))
	// Output:
	// [LISTEN_FDS=2 LISTEN_FDNAMES=web:admin]
}

// A parent binds an address and starts a child with the socket at descriptor 3.
// The child (which sets LISTEN_PID to its own pid before running the server, as
// clusterd's exec-worker step does) finds it with [sockshare.Listeners].
func ExampleListen() {
	spec, err := sockshare.ParseSpec("web=tcp://127.0.0.1:8080")
	if err != nil {
		log.Fatal(err)
	}
	f, err := sockshare.Listen(spec, sockshare.ListenOptions{ReusePort: true})
	if err != nil {
		log.Fatal(err)
	}
	defer f.Close()

	cmd := exec.Command("./server")
	cmd.ExtraFiles = []*os.File{f} // Fd on a Listen result keeps it non-blocking
	cmd.Env = append(sockshare.StripListenEnv(os.Environ()), sockshare.ListenEnv([]string{spec.Name})...)
	if err := cmd.Start(); err != nil {
		log.Fatal(err)
	}
}

// A server started by systemd or clusterd serves on the sockets it was given.
func ExampleListeners() {
	socks, err := sockshare.Listeners(true)
	if err != nil {
		log.Fatal(err)
	}
	if len(socks) == 0 || socks[0].Listener == nil {
		log.Fatal("no listening socket passed")
	}
	log.Fatal(http.Serve(socks[0].Listener, nil))
}
