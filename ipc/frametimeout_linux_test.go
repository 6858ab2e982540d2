package ipc

import (
	"errors"
	"testing"
	"time"
)

// quiet waits d to show that something does not happen in that time: the
// one place these tests sleep.
func quiet(d time.Duration) { time.Sleep(d) }

func TestFrameTimeoutOptions(t *testing.T) {
	t.Parallel()
	o, err := Options{}.withDefaults()
	if err != nil || o.FrameTimeout != DefaultFrameTimeout {
		t.Errorf("Options{}.withDefaults() FrameTimeout = %v, %v; want %v", o.FrameTimeout, err, DefaultFrameTimeout)
	}
	for _, d := range []time.Duration{-time.Millisecond, MaxFrameTimeout + 1} {
		if _, err := (Options{FrameTimeout: d}).withDefaults(); err == nil {
			t.Errorf("Options{FrameTimeout: %v}.withDefaults() = nil error", d)
		}
	}
}

// TestFrameTimeoutHalfFrame plays a peer that sends half of a 1 MiB frame
// and stops: the connection fails with ErrFrameTimeout.
func TestFrameTimeoutHalfFrame(t *testing.T) {
	t.Parallel()
	const timeout = 200 * time.Millisecond
	c, raw := rawPair(t, Options{FrameTimeout: timeout})
	frame := frameBytes(KindUser, 1, 0, 0, binBody(t, DefaultMaxFrameSize-64))
	start := time.Now()
	sendRaw(t, raw, frame[:len(frame)/2])
	_, err := c.Recv()
	took := time.Since(start)
	if !errors.Is(err, ErrFrameTimeout) {
		t.Fatalf("Recv after half a frame = %v, want ErrFrameTimeout", err)
	}
	if took < timeout {
		t.Errorf("frame timed out after %v, before its timeout %v", took, timeout)
	}
	if !errors.Is(c.Err(), ErrFrameTimeout) {
		t.Errorf("Err() = %v, want ErrFrameTimeout", c.Err())
	}
	t.Logf("half-sent frame failed after %v (timeout %v): %v", took, timeout, err)
}

// TestFrameTimeoutTrickle: a peer that keeps sending a byte now and then
// still has to finish the frame within the timeout.
func TestFrameTimeoutTrickle(t *testing.T) {
	t.Parallel()
	const timeout = 300 * time.Millisecond
	c, raw := rawPair(t, Options{FrameTimeout: timeout})
	frame := frameBytes(KindUser, 1, 0, 0, binBody(t, 100))
	errc := make(chan error, 1)
	go func() {
		_, err := c.Recv()
		errc <- err
	}()
	for i := 0; i < len(frame)-1; i++ {
		if _, err := raw.Write(frame[i : i+1]); err != nil {
			// The Conn timed out and closed its end before this
			// goroutine saw Recv's error (a loaded machine runs it
			// late): the error tells what happened.
			if err := <-errc; !errors.Is(err, ErrFrameTimeout) {
				t.Fatalf("Recv after the peer closed = %v, want ErrFrameTimeout", err)
			}
			return
		}
		select {
		case err := <-errc:
			if !errors.Is(err, ErrFrameTimeout) {
				t.Fatalf("Recv = %v, want ErrFrameTimeout", err)
			}
			return
		case <-time.After(timeout / 10):
		}
	}
	t.Fatalf("a frame trickled over %v did not time out (timeout %v)", time.Duration(len(frame))*timeout/10, timeout)
}

// TestFrameTimeoutIdleAndSlowReader: the timeout bounds a frame, not the
// silence between frames, nor the time this end takes to call Recv.
func TestFrameTimeoutIdleAndSlowReader(t *testing.T) {
	t.Parallel()
	const timeout = 100 * time.Millisecond
	c, raw := rawPair(t, Options{FrameTimeout: timeout, QueueLen: 1})
	var stream []byte
	for i := range 200 {
		stream = append(stream, frameBytes(KindUser, uint64(i+1), 0, 0, intBody(i))...)
	}
	// Half the stream: the reader holds a partial frame while its queue is
	// full, for longer than the timeout, before the rest arrives.
	half := len(stream)/2 + 3
	sendRaw(t, raw, stream[:half])
	quiet(3 * timeout)
	sendRaw(t, raw, stream[half:])
	for i := range 200 {
		m, err := c.Recv()
		if err != nil {
			t.Fatalf("Recv %d after a slow reader = %v", i, err)
		}
		if m.ID != uint64(i+1) {
			t.Fatalf("Recv %d = id %d", i, m.ID)
		}
	}
	quiet(3 * timeout) // idle between frames
	sendRaw(t, raw, frameBytes(KindUser, 999, 0, 0, intBody(1)))
	if m, err := c.Recv(); err != nil || m.ID != 999 {
		t.Fatalf("Recv after an idle spell = %v, %v", m, err)
	}
}
