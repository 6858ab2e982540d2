package master

import (
	"os"
	"slices"
	"testing"

	"github.com/clusterd/clusterd/sockshare"
	"github.com/hashicorp/go-hclog"
)

func TestFDStoreMax(t *testing.T) {
	for _, tc := range []struct {
		env  map[string]string
		want int
	}{
		{map[string]string{}, -1}, // systemd < 254 does not say: offer them
		{map[string]string{"FDSTORE": "8"}, 8},
		{map[string]string{"FDSTORE": "0"}, 0},
		{map[string]string{"FDSTORE": "many"}, 0},
		{map[string]string{"FDSTORE": "-1"}, 0},
	} {
		lookup := func(k string) (string, bool) { v, ok := tc.env[k]; return v, ok }
		if got := fdStoreMax(lookup); got != tc.want {
			t.Errorf("fdStoreMax(%v) = %d, want %d", tc.env, got, tc.want)
		}
	}
}

// TestStorable: only listeners that can be matched back go to the fd
// store (a name, or a fixed address), and never an activated one, which
// the service manager holds already.
func TestStorable(t *testing.T) {
	act, _ := activatedSocket(t, "tcp", "127.0.0.1:0", "held")
	fixed, fixedAddr := activatedSocket(t, "tcp", "127.0.0.1:0", "probe")
	fixed.Close() // only its port was wanted: free again for Listen
	cfg, err := normalize(Options{
		Command: []string{"/bin/true"}, Workers: 1,
		Listen: []sockshare.Spec{
			mustSpec(t, "web=tcp://127.0.0.1:0"),
			mustSpec(t, "tcp://127.0.0.1:0"),
			mustSpec(t, "tcp://"+fixedAddr.String()),
			mustSpec(t, "held=tcp://127.0.0.1:1"),
		},
		Activated: []*os.File{act},
	})
	if err != nil {
		t.Fatal(err)
	}
	ls := newListeners(cfg, hclog.NewNullLogger())
	t.Cleanup(func() { ls.closeAll() })
	if err := ls.bind(); err != nil {
		t.Fatal(err)
	}
	files, names := ls.storable()
	if !slices.Equal(names, []string{"web", ""}) || len(files) != 2 || files[0] != ls.shared[0] || files[1] != ls.shared[2] {
		t.Errorf("storable = %v %q, want the named listener (FDNAME=web) and the one on %s (no FDNAME)", files, names, fixedAddr)
	}
}
