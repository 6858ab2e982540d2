package master

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// dirFS serves cgroup files from a test directory: the path "/sys/fs/..."
// is read under root.
type dirFS string

func (d dirFS) readFile(name string) ([]byte, error) {
	return os.ReadFile(filepath.Join(string(d), name))
}

func writeCgroupFiles(t *testing.T, root string, files map[string]string) dirFS {
	t.Helper()
	for name, body := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dirFS(root)
}

const (
	mountinfoV2 = "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
	mountinfoV1 = "35 30 0:30 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct\n" +
		"36 30 0:31 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory\n"
	// A container's view: the mount shows the hierarchy from /docker/abc.
	mountinfoV1Container = "35 30 0:30 /docker/abc /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"
)

func TestDefaultCPUs(t *testing.T) {
	for _, tc := range []struct {
		name      string
		mountinfo string
		cgroup    string
		files     map[string]string
		affinity  int
		want      int
		source    string
	}{
		{"v2 quota rounded up", mountinfoV2, "0::/app\n",
			map[string]string{"/sys/fs/cgroup/app/cpu.max": "150000 100000\n"}, 8, 2, "cgroup v2 /sys/fs/cgroup/app/cpu.max: 150000 100000"},
		{"v2 no quota", mountinfoV2, "0::/app\n",
			map[string]string{"/sys/fs/cgroup/app/cpu.max": "max 100000\n"}, 8, 8, "affinity mask"},
		{"v2 parent lower", mountinfoV2, "0::/a/b\n",
			map[string]string{"/sys/fs/cgroup/a/b/cpu.max": "400000 100000\n", "/sys/fs/cgroup/a/cpu.max": "100000 100000\n"}, 8, 1, "cgroup v2 /sys/fs/cgroup/a/cpu.max: 100000 100000"},
		{"v2 quota above affinity", mountinfoV2, "0::/app\n",
			map[string]string{"/sys/fs/cgroup/app/cpu.max": "800000 100000\n"}, 2, 2, "affinity mask"},
		{"v2 tiny quota is one", mountinfoV2, "0::/app\n",
			map[string]string{"/sys/fs/cgroup/app/cpu.max": "1000 100000\n"}, 4, 1, "cgroup v2"},
		{"v1 quota", mountinfoV1, "4:memory:/x\n3:cpu,cpuacct:/svc\n",
			map[string]string{"/sys/fs/cgroup/cpu,cpuacct/svc/cpu.cfs_quota_us": "250000\n", "/sys/fs/cgroup/cpu,cpuacct/svc/cpu.cfs_period_us": "100000\n"},
			8, 3, "cgroup v1 /sys/fs/cgroup/cpu,cpuacct/svc: cpu.cfs_quota_us 250000 / cpu.cfs_period_us 100000"},
		{"v1 unlimited", mountinfoV1, "3:cpu,cpuacct:/svc\n",
			map[string]string{"/sys/fs/cgroup/cpu,cpuacct/svc/cpu.cfs_quota_us": "-1\n", "/sys/fs/cgroup/cpu,cpuacct/svc/cpu.cfs_period_us": "100000\n"}, 8, 8, "affinity mask"},
		{"v1 container root", mountinfoV1Container, "3:cpu:/docker/abc\n",
			map[string]string{"/sys/fs/cgroup/cpu/cpu.cfs_quota_us": "200000\n", "/sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000\n"}, 16, 2, "cgroup v1 /sys/fs/cgroup/cpu:"},
		{"no cgroup files", mountinfoV2, "0::/gone\n", nil, 4, 4, "affinity mask"},
		{"garbage", mountinfoV2, "0::/app\n", map[string]string{"/sys/fs/cgroup/app/cpu.max": "lots\n"}, 4, 4, "affinity mask"},
		{"no affinity count", "", "", nil, 0, 1, "affinity mask"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs := writeCgroupFiles(t, t.TempDir(), tc.files)
			got := defaultCPUs(tc.affinity, findCPUCgroups(tc.mountinfo, tc.cgroup), fs)
			if got.n != tc.want || !strings.HasPrefix(got.source, tc.source) {
				t.Errorf("defaultCPUs = %d from %q, want %d from %q...", got.n, got.source, tc.want, tc.source)
			}
		})
	}
}

func TestUnescapeMount(t *testing.T) {
	for in, want := range map[string]string{`/a\040b`: "/a b", `/plain`: "/plain", `/x\0`: `/x\0`, `\134`: `\`} {
		if got := unescapeMount(in); got != want {
			t.Errorf("unescapeMount(%q) = %q, want %q", in, got, want)
		}
	}
}
