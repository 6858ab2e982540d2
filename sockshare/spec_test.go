package sockshare

import (
	"os"
	"strings"
	"testing"
)

func TestParseSpec(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want Spec
		str  string // canonical form; "" means in
	}{
		{"tcp://127.0.0.1:8080", Spec{Network: "tcp", Address: "127.0.0.1:8080"}, ""},
		{"tcp://:8080", Spec{Network: "tcp", Address: ":8080"}, ""},
		{"tcp://localhost:0", Spec{Network: "tcp", Address: "localhost:0"}, ""},
		{"tcp://[::1]:443", Spec{Network: "tcp", Address: "[::1]:443"}, ""},
		{"tcp://[fe80::1%eth0]:80", Spec{Network: "tcp", Address: "[fe80::1%eth0]:80"}, ""},
		{"tcp4://0.0.0.0:80", Spec{Network: "tcp4", Address: "0.0.0.0:80"}, ""},
		{"tcp4://:80", Spec{Network: "tcp4", Address: ":80"}, ""},
		{"tcp6://[::]:80", Spec{Network: "tcp6", Address: "[::]:80"}, ""},
		{"tcp6://:80", Spec{Network: "tcp6", Address: ":80"}, ""},
		{"udp://127.0.0.1:53", Spec{Network: "udp", Address: "127.0.0.1:53"}, ""},
		{"udp4://:53", Spec{Network: "udp4", Address: ":53"}, ""},
		{"udp6://[::1]:53", Spec{Network: "udp6", Address: "[::1]:53"}, ""},
		{"unix:///run/app.sock", Spec{Network: "unix", Address: "/run/app.sock"}, ""},
		{"unix://relative/app.sock", Spec{Network: "unix", Address: "relative/app.sock"}, ""},
		{"unix://@clusterd-test", Spec{Network: "unix", Address: "@clusterd-test"}, ""},
		{"unix:///tmp/a=b", Spec{Network: "unix", Address: "/tmp/a=b"}, ""},
		{"unix://" + "/" + strings.Repeat("p", MaxUnixPathLen-1), Spec{Network: "unix", Address: "/" + strings.Repeat("p", MaxUnixPathLen-1)}, ""},
		{":8080", Spec{Network: "tcp", Address: ":8080"}, "tcp://:8080"},
		{"example.com:80", Spec{Network: "tcp", Address: "example.com:80"}, "tcp://example.com:80"},
		{"[::1]:80", Spec{Network: "tcp", Address: "[::1]:80"}, "tcp://[::1]:80"},
		{"web=tcp://:80", Spec{Name: "web", Network: "tcp", Address: ":80"}, ""},
		{"web=:80", Spec{Name: "web", Network: "tcp", Address: ":80"}, "web=tcp://:80"},
		{"admin api=unix:///run/a=b.sock", Spec{Name: "admin api", Network: "unix", Address: "/run/a=b.sock"}, ""},
		{"a/b=unix://@x", Spec{Name: "a/b", Network: "unix", Address: "@x"}, ""},
		{strings.Repeat("n", MaxNameLen) + "=:1", Spec{Name: strings.Repeat("n", MaxNameLen), Network: "tcp", Address: ":1"}, strings.Repeat("n", MaxNameLen) + "=tcp://:1"},
		{"TCP://:80", Spec{Network: "tcp", Address: ":80"}, "tcp://:80"},
		{"Unix:///s", Spec{Network: "unix", Address: "/s"}, "unix:///s"},
		{"tcp://:080", Spec{Network: "tcp", Address: ":80"}, "tcp://:80"},
		{"tcp://:65535", Spec{Network: "tcp", Address: ":65535"}, ""},
		{"tcp://[localhost]:80", Spec{Network: "tcp", Address: "localhost:80"}, "tcp://localhost:80"},
		{"tcp://my_host.example.:80", Spec{Network: "tcp", Address: "my_host.example.:80"}, ""},
		{"unix:///run/app.sock?mode=0660&owner=www-data&group=www-data", Spec{Network: "unix", Address: "/run/app.sock",
			UnixMode: 0o660, UnixOwner: "www-data", UnixGroup: "www-data"}, ""},
		{"unix:///s?group=web&mode=660", Spec{Network: "unix", Address: "/s", UnixMode: 0o660, UnixGroup: "web"},
			"unix:///s?mode=0660&group=web"},
		{"api=unix:///s?owner=1000", Spec{Name: "api", Network: "unix", Address: "/s", UnixOwner: "1000"}, ""},
		{"unix:///s?mode=2770", Spec{Network: "unix", Address: "/s", UnixMode: 0o770 | os.ModeSetgid}, ""},
		{"unix:///s?mode=7777", Spec{Network: "unix", Address: "/s", UnixMode: 0o777 | os.ModeSetuid | os.ModeSetgid | os.ModeSticky}, ""},
		{"unix:///a=b?owner=m$", Spec{Network: "unix", Address: "/a=b", UnixOwner: "m$"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseSpec(tt.in)
			if err != nil {
				t.Fatalf("ParseSpec(%q) error: %v", tt.in, err)
			}
			if got != tt.want {
				t.Fatalf("ParseSpec(%q) = %#v, want %#v", tt.in, got, tt.want)
			}
			str := tt.str
			if str == "" {
				str = tt.in
			}
			if got.String() != str {
				t.Errorf("ParseSpec(%q).String() = %q, want %q", tt.in, got.String(), str)
			}
			again, err := ParseSpec(got.String())
			if err != nil || again != got {
				t.Errorf("ParseSpec(%q) = %#v, %v; want %#v", got.String(), again, err, got)
			}
		})
	}
}

func TestParseSpecErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in      string
		wantErr string // a part of the message that names what is wrong
	}{
		{"", "empty"},
		{"8080", "missing port"},
		{"tcp://", "tcp address is empty"},
		{"tcp://localhost", "missing port"},
		{"tcp://:", "empty port"},
		{"tcp://:http", `port "http" is not a decimal number`},
		{"tcp://:-1", `port "-1" is not a decimal number`},
		{"tcp://:65536", `port "65536" out of range`},
		{"tcp://:123456", `port "123456" out of range`},
		{"tcp://::1:80", "too many colons"},
		{"tcp://[::1:80", "missing ']'"},
		{"tcp4://[::1]:80", `host "::1" is not an IPv4 address`},
		{"udp4://[::1]:80", `host "::1" is not an IPv4 address`},
		{"tcp6://127.0.0.1:80", `host "127.0.0.1" is not an IPv6 address`},
		{"udp6://127.0.0.1:80", `host "127.0.0.1" is not an IPv6 address`},
		{"tcp://[fe80::zz]:80", `host "fe80::zz" is not a valid IP address`},
		{"tcp://bad host:80", `character ' ' is not allowed in a host name`},
		{"tcp://a..b:80", `label ""`},
		{"tcp://-a:80", `label "-a" starts or ends with '-'`},
		{"tcp://" + strings.Repeat("a", 64) + ":80", "label"},
		{"tcp://" + strings.Repeat("a.", 127) + "a:80", "not a valid host name"},
		{"http://:80", `unknown scheme "http"`},
		{"://:80", "empty scheme"},
		{"unix://", "unix socket path is empty"},
		{"unix://@", "abstract unix socket name is empty"},
		{"unix:///" + strings.Repeat("p", MaxUnixPathLen), "longer than 107"},
		{"unix:///a\x00b", "NUL byte"},
		{"/run/app.sock", "has no scheme"},
		{"=tcp://:80", "empty name"},
		{"=:80", "empty name"},
		{strings.Repeat("n", MaxNameLen+1) + "=:80", "longer than 255"},
		{"a\tb=:80", `character '\t' is not allowed`},
		{"caf\xc3\xa9=:80", `is not allowed`},
		{"a=b=tcp://:80", `unknown scheme "b=tcp"`},
		{"unix:///s?", `unix socket option "": want key=value`},
		{"unix:///s?mode", `unix socket option "mode": want key=value`},
		{"unix:///s?mode=", `mode= is empty`},
		{"unix:///s?mode=0999", `mode=0999: want octal`},
		{"unix:///s?mode=10000", `mode=10000: want octal`},
		{"unix:///s?mode=+660", `mode=+660: want octal`},
		{"unix:///s?mode=0", `no permission at all`},
		{"unix:///s?mode=0600&mode=0660", `mode= given twice`},
		{"unix:///s?user=x", `unknown unix socket option "user"`},
		{"unix:///s?owner=a b", `character ' ' is not allowed`},
		{"unix:///s?owner=-x", `not a user or group name`},
		{"unix:///s?group=" + strings.Repeat("g", 257), "longer than 256"},
		{"unix://@abs?mode=0600", "an abstract socket has no file"},
		{"unix://?mode=0600", "unix socket path is empty"},
		{"tcp://:80?mode=0600", "apply to unix socket files only"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseSpec(tt.in)
			if err == nil {
				t.Fatalf("ParseSpec(%q) = %#v, want an error containing %q", tt.in, got, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseSpec(%q) error = %q, want it to contain %q", tt.in, err, tt.wantErr)
			}
			if !strings.HasPrefix(err.Error(), "listen address ") {
				t.Errorf("ParseSpec(%q) error = %q, want it to name the address", tt.in, err)
			}
			if got != (Spec{}) {
				t.Errorf("ParseSpec(%q) = %#v with an error, want the zero Spec", tt.in, got)
			}
		})
	}
}

func TestSpecKinds(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in               string
		stream, abstract bool
	}{
		{"tcp://:1", true, false},
		{"tcp4://:1", true, false},
		{"tcp6://:1", true, false},
		{"udp://:1", false, false},
		{"udp4://:1", false, false},
		{"udp6://:1", false, false},
		{"unix:///s", true, false},
		{"unix://@s", true, true},
	}
	for _, tt := range tests {
		s, err := ParseSpec(tt.in)
		if err != nil {
			t.Fatal(err)
		}
		if s.IsStream() != tt.stream || s.IsAbstract() != tt.abstract {
			t.Errorf("ParseSpec(%q): IsStream = %v, IsAbstract = %v; want %v, %v", tt.in, s.IsStream(), s.IsAbstract(), tt.stream, tt.abstract)
		}
	}
}

func FuzzParseSpec(f *testing.F) {
	for _, s := range []string{
		"tcp://127.0.0.1:8080", ":8080", "web=tcp6://[::1]:0", "unix:///run/x.sock",
		"unix://@abs", "udp4://:53", "n=unix:///a=b", "[fe80::1%eth0]:1", "TCP://h:01",
		"unix:///run/app.sock?mode=0660&owner=www-data&group=www-data", "unix:///s?group=1&mode=4755",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		spec, err := ParseSpec(s)
		if err != nil {
			if spec != (Spec{}) {
				t.Fatalf("ParseSpec(%q) = %#v with error %v", s, spec, err)
			}
			return
		}
		str := spec.String()
		again, err := ParseSpec(str)
		if err != nil {
			t.Fatalf("ParseSpec(%q) = %#v, but ParseSpec of its String %q: %v", s, spec, str, err)
		}
		if again != spec {
			t.Fatalf("ParseSpec(%q) = %#v, ParseSpec(%q) = %#v", s, spec, str, again)
		}
		if again.String() != str {
			t.Fatalf("String not stable: %q then %q", str, again.String())
		}
	})
}
