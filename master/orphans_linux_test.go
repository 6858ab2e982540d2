package master

import "testing"

// The worker an environment names, as /proc/PID/environ holds it.
func TestWorkerOfEnv(t *testing.T) {
	for _, tt := range []struct {
		env  string
		want workerKey
		ok   bool
	}{
		{"PATH=/bin\x00CLUSTERD_WORKER_ID=3\x00CLUSTERD_WORKER_GEN=7\x00", workerKey{3, 7}, true},
		{"CLUSTERD_WORKER_GEN=12\x00HOME=/\x00CLUSTERD_WORKER_ID=0", workerKey{0, 12}, true},
		{"CLUSTERD_WORKER_ID=3\x00", workerKey{}, false},                           // no generation
		{"CLUSTERD_WORKER_ID=x\x00CLUSTERD_WORKER_GEN=1\x00", workerKey{}, false},  // not a number
		{"XCLUSTERD_WORKER_ID=1\x00CLUSTERD_WORKER_GEN=1\x00", workerKey{}, false}, // another variable
		{"", workerKey{}, false},
	} {
		got, ok := workerOfEnv([]byte(tt.env))
		if ok != tt.ok || (ok && got != tt.want) {
			t.Errorf("workerOfEnv(%q) = %v, %v; want %v, %v", tt.env, got, ok, tt.want, tt.ok)
		}
	}
}
