package master

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
)

func TestControlSocketPath(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		uid  int
		want string
	}{
		{"systemd", map[string]string{"RUNTIME_DIRECTORY": "/run/app", "XDG_RUNTIME_DIR": "/run/user/1000"}, 1000, "/run/app/web.sock"},
		{"systemd, several", map[string]string{"RUNTIME_DIRECTORY": "/run/a:/run/b"}, 0, "/run/a/web.sock"},
		{"root", map[string]string{"XDG_RUNTIME_DIR": "/run/user/0"}, 0, "/run/clusterd/web.sock"},
		{"user", map[string]string{"XDG_RUNTIME_DIR": "/run/user/1000"}, 1000, "/run/user/1000/clusterd/web.sock"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ControlSocketPath("web", func(k string) string { return tc.env[k] }, tc.uid)
			if err != nil || got != tc.want {
				t.Errorf("ControlSocketPath(web) = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
	none := func(string) string { return "" }
	if got, err := ControlSocketPath("web", none, 1000); err == nil || !strings.Contains(err.Error(), "XDG_RUNTIME_DIR") {
		t.Errorf("ControlSocketPath without a runtime dir = %q, %v; want an error naming XDG_RUNTIME_DIR", got, err)
	}
	for _, bad := range []string{"", ".", "..", "a/b", "a\x00"} {
		if got, err := ControlSocketPath(bad, none, 0); err == nil {
			t.Errorf("ControlSocketPath(%q) = %q, want an error", bad, got)
		}
	}
}

func TestLogRingKeepsLastLines(t *testing.T) {
	r := newLogRing(3)
	tee := &logTee{ring: r, slot: 1, pid: 42, stream: "stdout"}
	other := &logTee{ring: r, slot: 2, pid: 43, stream: "stderr"}
	_, f := r.snapshotAndFollow(1)
	defer r.unfollow(f)
	for i := range 5 {
		tee.feed(fmt.Appendf(nil, "line %d\n", i))
	}
	// Raw output comes in pieces: lines are cut at newlines, not writes.
	other.feed([]byte("a partial "))
	other.feed([]byte("line\nnext"))
	var got []string
	for _, l := range r.lines(1) {
		got = append(got, l.Text)
	}
	if want := "line 2|line 3|line 4"; strings.Join(got, "|") != want {
		t.Errorf("lines(1) = %q, want %q", strings.Join(got, "|"), want)
	}
	all := r.lines(-1)
	if len(all) != 4 || all[3].Text != "a partial line" || all[3].Stream != "stderr" || all[3].PID != 43 {
		t.Errorf("lines(-1) = %+v, want slot 1's three and slot 2's one line", all)
	}
	other.flush() // the pipe's end records its last line
	if all := r.lines(2); len(all) != 2 || all[1].Text != "next" {
		t.Errorf("lines(2) after the end of the pipe = %+v, want its last line too", all)
	}
	// The follower of slot 1 got its five lines, not slot 2's.
	if n := len(f.c); n != 5 {
		t.Errorf("follower of slot 1 holds %d lines, want 5", n)
	}
}

func TestLogRingOneReadOfManyLines(t *testing.T) {
	r := newLogRing(3)
	tee := &logTee{ring: r, slot: 3, pid: 7, stream: "stdout"}
	tee.feed([]byte("a\nb\nc\nd\ne\nf"))
	var got []string
	for _, l := range r.lines(3) {
		got = append(got, l.Text)
	}
	if strings.Join(got, "") != "cde" {
		t.Errorf("after one read of a..e: kept %q, want the last three, c d e", got)
	}
	_, f := r.snapshotAndFollow(3)
	defer r.unfollow(f)
	tee.feed([]byte("g\nh\ni\nj\n"))
	if n := len(f.c); n != 4 {
		t.Errorf("a follower got %d of one read's 4 lines, want all", n)
	}
	if l := <-f.c; l.Text != "fg" {
		t.Errorf("first followed line %q, want the partial line completed, fg", l.Text)
	}
}

func TestLogRingNeverWaitsForAFollower(t *testing.T) {
	r := newLogRing(10)
	_, f := r.snapshotAndFollow(-1) // never read
	defer r.unfollow(f)
	tee := &logTee{ring: r, slot: 0, pid: 1, stream: "stdout"}
	for range followBuffer + 7 {
		tee.feed([]byte("x\n"))
	}
	if d := f.dropped.Load(); d != 7 {
		t.Errorf("follower dropped %d lines, want 7", d)
	}
}

func TestLogTeeCutsLongLines(t *testing.T) {
	r := newLogRing(10)
	tee := &logTee{ring: r, slot: 0, pid: 1, stream: "stdout"}
	long := bytes.Repeat([]byte("y"), maxLineLength+10)
	tee.feed(long)
	tee.feed([]byte("\n"))
	tee.feed([]byte("z\n"))
	ls := r.lines(0)
	if len(ls) != 2 || len(ls[0].Text) != maxLineLength+10 || ls[1].Text != "z" {
		var lens []int
		for _, l := range ls {
			lens = append(lens, len(l.Text))
		}
		t.Errorf("a line longer than %d, then \"z\": recorded lines of lengths %v, want %d and 1", maxLineLength, lens, maxLineLength+10)
	}
}

// BenchmarkLogTee feeds the recorder 64 KiB reads of 64-byte lines, as the
// relay does for a chatty worker, with no follower.
func BenchmarkLogTee(b *testing.B) {
	r := newLogRing(DefaultLogLines)
	tee := &logTee{ring: r, slot: 0, pid: 1, stream: "stdout"}
	line := append(bytes.Repeat([]byte("x"), 63), '\n')
	read := bytes.Repeat(line, 1024)
	b.SetBytes(int64(len(read)))
	for b.Loop() {
		tee.feed(read)
	}
}
