package master

import (
	"errors"
	"fmt"
	"testing"
)

// TestShareGOMAXPROCS: the workers' GOMAXPROCS, from the option, Env and
// the master's environment.
func TestShareGOMAXPROCS(t *testing.T) {
	cpus := defaultWorkers().n
	tests := []struct {
		name    string
		option  int
		workers int
		env     []string
		master  string // the master's GOMAXPROCS
		want    string // the workers' entry, "" for none
	}{
		{"shared by one worker", 0, 1, nil, "", fmt.Sprintf("GOMAXPROCS=%d", cpus)},
		{"more workers than CPUs", 0, cpus + 3, nil, "", "GOMAXPROCS=1"},
		{"two per worker", 0, max(1, cpus/2), nil, "", fmt.Sprintf("GOMAXPROCS=%d", cpus/max(1, cpus/2))},
		{"Env sets it", 0, 1, []string{"A=1", "GOMAXPROCS=7"}, "", ""},
		{"the master's environment sets it", 0, 1, nil, "5", ""},
		{"given", 4, 2, nil, "5", "GOMAXPROCS=4"},
		{"left alone", -1, 64, nil, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &config{Options: Options{WorkerGOMAXPROCS: tt.option, Workers: tt.workers, Env: tt.env}}
			getenv := func(k string) string {
				if k == envGOMAXPROCS {
					return tt.master
				}
				return ""
			}
			if err := c.shareGOMAXPROCS(getenv); err != nil {
				t.Fatal(err)
			}
			if got := c.gomaxprocsEnv(); got != tt.want {
				t.Errorf("workers get %q, want %q (from %s)", got, tt.want, c.gomaxprocsFrom)
			}
		})
	}
	c := &config{Options: Options{WorkerGOMAXPROCS: 2, Workers: 1, Env: []string{"GOMAXPROCS=3"}}}
	var oe *OptionError
	if err := c.shareGOMAXPROCS(func(string) string { return "" }); !errors.As(err, &oe) || oe.Field != "WorkerGOMAXPROCS" {
		t.Errorf("the option and Env both set: error %v, want an OptionError for WorkerGOMAXPROCS", err)
	}
}
