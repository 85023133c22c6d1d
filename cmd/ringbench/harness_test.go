//go:build linux

package main

import (
	"runtime"
	"testing"
	"time"
)

// A loop stalled past the whole window (a loaded machine) still counts a
// frame in it: the clock ends the window no sooner than a parent loop's
// first frame in it, instead of leaving it empty ("no messages in the
// measured window"). The stall is simulated by a sleep several windows
// long; the assertion holds whatever its length, and without the wait
// for the loop the clock would usually have ended the window meanwhile.
func TestWindowWaitsForALoop(t *testing.T) {
	const window = time.Millisecond
	h := newHarness(&runConfig{warmup: time.Microsecond, duration: window})
	defer h.cleanup()
	h.startClock()
	for h.phase.Load() != phaseMeasure {
		runtime.Gosched()
	}
	time.Sleep(20 * window) // the stall
	var m meter
	for m.tick(h) {
	}
	res, err := h.finish(nil, &m)
	if err != nil {
		t.Fatal(err)
	}
	if res.msgs == 0 || res.elapsed < window {
		t.Fatalf("%d messages in a window of %v", res.msgs, res.elapsed)
	}
}
