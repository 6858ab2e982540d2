package master

import (
	"bufio"
	"errors"
	"io"
	"os"
	"sync"
	"time"
)

// maxLineLength bounds a relayed line: a longer one is cut into pieces of
// this size, each with its own prefix, so a worker that writes without
// newlines cannot make the master buffer without limit.
const maxLineLength = 16 << 10

// outputs relays worker output. Each pipe has one reader goroutine that
// owns its read end and closes it at EOF; outputs waits for all of them.
type outputs struct {
	mu    sync.Mutex // serialises writes, so lines of different workers never interleave
	wg    sync.WaitGroup
	pipes map[*os.File]struct{} // read ends still open; guarded by mu
}

func newOutputs() *outputs {
	return &outputs{pipes: make(map[*os.File]struct{})}
}

// relay starts a goroutine that copies r to w: line by line with prefix, or
// untouched when prefix is "". It takes ownership of r.
func (o *outputs) relay(r *os.File, w io.Writer, prefix string) {
	o.mu.Lock()
	o.pipes[r] = struct{}{}
	o.mu.Unlock()
	o.wg.Add(1)
	go func() {
		defer o.wg.Done()
		if prefix == "" {
			o.copyRaw(r, w)
		} else {
			o.copyLines(r, w, prefix)
		}
		o.mu.Lock()
		delete(o.pipes, r)
		o.mu.Unlock()
		_ = r.Close() // a read end at EOF: nothing to report
	}()
}

func (o *outputs) copyLines(r io.Reader, w io.Writer, prefix string) {
	br := bufio.NewReaderSize(r, maxLineLength)
	buf := make([]byte, 0, 256)
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			buf = append(buf[:0], prefix...)
			buf = append(buf, line...)
			if buf[len(buf)-1] != '\n' {
				buf = append(buf, '\n') // cut long line or last line without newline
			}
			o.mu.Lock()
			_, _ = w.Write(buf) // output is best effort: a full disk must not stop supervision
			o.mu.Unlock()
		}
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return
		}
	}
}

func (o *outputs) copyRaw(r io.Reader, w io.Writer) {
	buf := make([]byte, 32<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			o.mu.Lock()
			_, _ = w.Write(buf[:n]) // best effort, as in copyLines
			o.mu.Unlock()
		}
		if err != nil {
			return
		}
	}
}

// wait waits for every reader to reach EOF, at most for grace; then it
// closes the pipes still held open (by processes that left the worker's
// process group) and waits for their readers to return.
func (o *outputs) wait(grace time.Duration) {
	done := make(chan struct{})
	go func() {
		o.wg.Wait()
		close(done)
	}()
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-done:
		return
	case <-t.C:
	}
	o.mu.Lock()
	for r := range o.pipes {
		_ = r.Close() // unblocks its reader; nothing to report
	}
	o.mu.Unlock()
	<-done
}
