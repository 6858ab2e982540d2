package master

import (
	"strings"
	"testing"
)

func TestParseSize(t *testing.T) {
	good := map[string]int64{
		"48M": 48 << 20, "512MiB": 512 << 20, "512mb": 512 << 20, "1G": 1 << 30, "1.5G": 3 << 29,
		"65536": 65536, "64K": 64 << 10, "2T": 2 << 40, "100B": 100, " 7M ": 7 << 20,
	}
	for in, want := range good {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v, want %d", in, got, err, want)
		}
	}
	bad := map[string]string{
		"": "empty", "M": "want a number", "12X": "want a number", "1MG": "want a number",
		"-5M": "at least one byte", "0": "at least one byte", "0.1": "at least one byte",
		"9000000T": "too large", "NaN": "want a number", "1e400": "want a number", "1 2M": "want a number",
	}
	for in, want := range bad {
		if got, err := ParseSize(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseSize(%q) = %d, %v, want an error containing %q", in, got, err, want)
		}
	}
}

func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"48M", "512MiB", "1G", "1.5g", "65536", "", "-1", "1e3K"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseSize(s)
		if err == nil && n < 1 {
			t.Fatalf("ParseSize(%q) = %d, nil: want a positive size", s, n)
		}
	})
}
