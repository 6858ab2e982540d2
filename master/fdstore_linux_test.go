package master

import "testing"

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
