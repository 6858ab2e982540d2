package master

import (
	"testing"
)

func FuzzParseReadyMode(f *testing.F) {
	for _, s := range []string{"exec", "notify", "ipc", "delay=500ms", "delay=1h2m3s", "delay=-1s", "delay=", "delay=1e9h"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		m, err := ParseReadyMode(s)
		if err != nil {
			return
		}
		if m.Kind == ReadyDelay && m.Delay <= 0 {
			t.Fatalf("ParseReadyMode(%q) = %v with a non-positive delay", s, m)
		}
		again, err := ParseReadyMode(m.String())
		if err != nil || again != m {
			t.Fatalf("ParseReadyMode(%q) = %v, %v; want %v", m.String(), again, err, m)
		}
	})
}

func FuzzParseNotify(f *testing.F) {
	for _, s := range []string{"READY=1", "STATUS=x\nREADY=1\n", "STOPPING=1\nWATCHDOG=1", "", "\n\n", "READY=1\x00"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		evs := parseNotify(msg)
		if len(evs) > len(msg)/len("READY=1")+1 {
			t.Fatalf("parseNotify(%q) = %d events", msg, len(evs))
		}
		for _, e := range evs {
			if e.kind == evReady && e.source != ReadyNotify {
				t.Fatalf("parseNotify(%q): ready event with source %v", msg, e.source)
			}
		}
	})
}
