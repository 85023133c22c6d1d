//go:build linux

package main

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// A measurement runs in three phases. Loops read the phase once per frame
// (an atomic load of a word written twice per run) and snapshot
// their counters when it changes, so the window is cut at the same instant
// for every loop, give or take one frame.
const (
	phaseWarmup  = 0
	phaseMeasure = 1
	phaseDone    = 2
)

const (
	// readyTimeout bounds a child's start: exec, runtime start-up (slow
	// under -race on a loaded machine) and attaching.
	readyTimeout = 60 * time.Second
	// stopTimeout bounds the end of a run: the children's loops ending
	// once the parent closed its side, and their exit.
	stopTimeout = 30 * time.Second
	// stallGrace is how long after the window a loop may take to notice
	// that the run is over before the harness closes everything.
	stallGrace = 30 * time.Second
)

// measurement is what one scenario run returns.
type measurement struct {
	msgs    uint64        // frames (pingpong: round trips) in the window
	elapsed time.Duration // the window
	cpu     time.Duration // user+sys of every process over the window
	lat     *histogram    // round-trip times, or nil
	// subs: with harness.perChild, each child's own window count
	// (broadcast's subscribers), instead of adding to msgs.
	subs []uint64
	// parentCPU: the parent's own share of cpu (broadcast: the
	// publisher's).
	parentCPU time.Duration
	// ringSize: the data size of the ring the run used, when it is not
	// the run's ringSize (broadcast: the topic's, ipc's default unless
	// -ring-size was given); 0 otherwise.
	ringSize int
}

// Children that measure their own window (fanin's clients) report its
// messages and latencies with "done"; finish adds them to the parent's.

// harness is the parent's side of one measurement: its children, the clock
// that cuts the window, CPU accounting and teardown.
//
// CPU accounting: each process measures its own user+sys time
// (getrusage RUSAGE_SELF, all threads) at the two instants that bound the
// window, and cpu is the sum of the differences. The parent samples itself
// in the clock goroutine; each child samples itself when its control
// goroutine reads "mark", sent right after the parent's sample. The
// child's sample lags by a scheduling delay, but both of its samples lag
// alike, so the difference still covers one window's length. Lifetime
// figures (the children's rusage at Wait) would add exec, start-up and the
// warm-up, which is why they are not used.
type harness struct {
	rc       *runConfig
	children []*child // appended before the clock starts, read-only after
	// perChild: the children count what they received, each reported
	// on its own (measurement.subs), not added to the parent's msgs; set
	// before the first spawn.
	perChild bool
	phase    atomic.Int32

	mu      sync.Mutex
	at      [2]time.Time // window start and end
	selfCPU [2]time.Duration
	closers []func()

	clockStop chan struct{}
	stopOnce  sync.Once

	// ending: the parent is ending the window (set before the last marks
	// go out), so a child may end its loop; windowEnd is closed once the
	// phase is phaseDone.
	ending    atomic.Bool
	windowEnd chan struct{}

	// entered is closed once a parent loop has seen the window start
	// (meter.tick): the clock ends the window no sooner, so that it
	// holds at least one frame however long a loaded machine stalls the
	// loops. childMeters: the children count the window themselves
	// (fanin), so the clock does not wait for the parent's; set before
	// startClock.
	entered     chan struct{}
	enterOnce   sync.Once
	childMeters bool

	// stopping: the parent has ended the run and lets children exit;
	// until then a child's exit is a failure.
	stopping atomic.Bool

	aborted   chan struct{}
	abortOnce sync.Once
	abortErr  error // set before aborted is closed
}

func newHarness(rc *runConfig) *harness {
	return &harness{rc: rc, clockStop: make(chan struct{}), aborted: make(chan struct{}), windowEnd: make(chan struct{}),
		entered: make(chan struct{})}
}

// onAbort registers f to run when the measurement fails, from whichever
// goroutine notices: it must unblock the parent's loops (close a ring or a
// socket), and be safe to call concurrently with them.
func (h *harness) onAbort(f func()) {
	h.mu.Lock()
	h.closers = append(h.closers, f)
	h.mu.Unlock()
	if h.err() != nil {
		f()
	}
}

// abort fails the measurement with err (the first cause wins) and runs the
// closers so every loop returns.
func (h *harness) abort(err error) {
	h.abortOnce.Do(func() {
		h.mu.Lock()
		h.abortErr = err
		closers := h.closers
		h.mu.Unlock()
		close(h.aborted)
		for _, f := range closers {
			f()
		}
	})
}

// failIf aborts with a loop's error, if any. A loop calls it before it
// closes its side: the children's reactions to the close are echoes,
// and must not be taken for the cause.
func (h *harness) failIf(err error) {
	if err != nil {
		h.abort(err)
	}
}

// err returns the cause of an abort, or nil.
func (h *harness) err() error {
	select {
	case <-h.aborted:
		return h.abortErr
	default:
		return nil
	}
}

// waitReady waits until every child has attached.
func (h *harness) waitReady() error {
	timeout := time.NewTimer(readyTimeout)
	defer timeout.Stop()
	for _, c := range h.children {
		select {
		case <-c.ready:
		case <-h.aborted:
			return h.err()
		case <-timeout.C:
			h.abort(fmt.Errorf("%s not ready after %v", c.role, readyTimeout))
			return h.err()
		}
	}
	return nil
}

// startClock starts the warm-up; the window follows, then the run ends.
// The window lasts -duration, or until a parent loop's first frame in it
// if none came by then: a window that cut no frame would measure nothing
// (elapsed grows with it, so the figures stay per second of window).
func (h *harness) startClock() {
	go func() {
		for _, step := range []struct {
			after time.Duration
			phase int32
		}{{h.rc.warmup, phaseMeasure}, {h.rc.duration, phaseDone}} {
			t := time.NewTimer(step.after)
			select {
			case <-t.C:
			case <-h.clockStop:
				t.Stop()
				return
			}
			if step.phase == phaseDone && !h.childMeters && !h.waitEntered() {
				return
			}
			h.flip(step.phase)
		}
		t := time.NewTimer(stallGrace)
		defer t.Stop()
		select {
		case <-t.C:
			h.abort(fmt.Errorf("stalled: a loop did not end %v after the window", stallGrace))
		case <-h.clockStop:
		}
	}()
}

// waitEntered waits until a parent loop has seen the window start, and
// reports false if the run ended or stalled first.
func (h *harness) waitEntered() bool {
	t := time.NewTimer(stallGrace)
	defer t.Stop()
	select {
	case <-h.entered:
		return true
	case <-h.clockStop:
	case <-h.aborted:
	case <-t.C:
		h.abort(fmt.Errorf("stalled: no loop reached the window %v after its end was due", stallGrace))
	}
	return false
}

func (h *harness) flip(p int32) {
	now, cpu := time.Now(), cpuTime()
	h.mu.Lock()
	h.at[p-1], h.selfCPU[p-1] = now, cpu
	h.mu.Unlock()
	if p == phaseDone {
		// Children that measure their own window end on this mark.
		h.ending.Store(true)
	}
	// Marks go out before the phase changes: finish sends "exit" only
	// after the loops have seen the last phase, so the last mark is ahead
	// of it in every child's stdin.
	for _, c := range h.children {
		c.command("mark")
	}
	h.phase.Store(p)
	if p == phaseDone {
		close(h.windowEnd)
	}
}

// waitWindow waits until the window is over, for a parent with no loop
// of its own (the children measure it).
func (h *harness) waitWindow() error {
	select {
	case <-h.windowEnd:
		return nil
	case <-h.aborted:
		return h.err()
	}
}

func (h *harness) stopClock() { h.stopOnce.Do(func() { close(h.clockStop) }) }

// finish ends a measurement whose parent loops have returned (loopErr is
// the first of their errors) and whose parent side is closed, so that the
// children's loops end too. It collects the children and returns the
// window's figures.
func (h *harness) finish(loopErr error, meters ...*meter) (measurement, error) {
	h.stopClock()
	if err := h.err(); err != nil {
		return measurement{}, err // the cause; loopErr is likely its echo
	}
	if loopErr != nil {
		h.abort(loopErr)
		return measurement{}, loopErr
	}
	var m measurement
	for _, mt := range meters {
		if mt.seen != phaseDone {
			h.abort(errors.New("a loop ended before the window did"))
			return measurement{}, h.err()
		}
		m.msgs += mt.at[1] - mt.at[0]
	}
	deadline := time.NewTimer(stopTimeout)
	defer deadline.Stop()
	for _, c := range h.children {
		select {
		case <-c.done:
		case <-h.aborted:
			return measurement{}, h.err()
		case <-deadline.C:
			h.abort(fmt.Errorf("%s did not stop within %v", c.role, stopTimeout))
			return measurement{}, h.err()
		}
	}
	h.stopping.Store(true)
	for _, c := range h.children {
		c.command("exit")
	}
	var sent uint64
	h.mu.Lock()
	m.elapsed = h.at[1].Sub(h.at[0])
	m.cpu = h.selfCPU[1] - h.selfCPU[0]
	m.parentCPU = m.cpu
	h.mu.Unlock()
	for _, c := range h.children {
		// Wait can return before the last lines of the child's output
		// are read: wait for both.
		for _, ch := range []chan struct{}{c.exited, c.eof} {
			select {
			case <-ch:
			case <-deadline.C:
				return measurement{}, fmt.Errorf("%s did not exit within %v", c.role, stopTimeout)
			}
		}
		c.mu.Lock()
		werr, marks := c.waitErr, c.marks
		sent += c.sent
		if h.perChild {
			m.subs = append(m.subs, c.window)
		} else {
			m.msgs += c.window
		}
		if c.lat != nil {
			if m.lat == nil {
				m.lat = newHistogram()
			}
			m.lat.merge(c.lat)
		}
		c.mu.Unlock()
		if werr != nil {
			return measurement{}, fmt.Errorf("%s: %v", c.role, werr)
		}
		if len(marks) != 2 {
			return measurement{}, fmt.Errorf("%s answered %d CPU marks, want 2", c.role, len(marks))
		}
		m.cpu += marks[1] - marks[0]
	}
	if len(h.children) > 0 && !h.perChild && sent < m.msgs {
		return measurement{}, fmt.Errorf("the children wrote %d frames, the parent counted %d in the window", sent, m.msgs)
	}
	if m.msgs == 0 {
		return measurement{}, errors.New("no messages in the measured window")
	}
	return m, nil
}

// cleanup kills and reaps every child that is still running. Deferred
// right after newHarness, so it runs on every path.
func (h *harness) cleanup() {
	h.stopClock()
	h.stopping.Store(true)
	for _, c := range h.children {
		select {
		case <-c.exited:
		default:
			c.cmd.Process.Kill() //nolint:errcheck // it may have exited meanwhile
		}
	}
	for _, c := range h.children {
		<-c.exited
		c.ctl.Close()
	}
}

// meter counts one loop's frames and snapshots the count when the phase
// changes. It belongs to the loop's goroutine until the loop returns.
type meter struct {
	n    uint64
	seen int32
	at   [2]uint64 // n when the window started and ended
}

// tick counts a frame and reports whether the loop should go on. A caller
// that must act when the window starts compares seen before and after.
func (m *meter) tick(h *harness) bool {
	m.n++
	if p := h.phase.Load(); p != m.seen {
		if m.seen < phaseMeasure {
			m.at[0] = m.n
			if p == phaseMeasure {
				h.enterOnce.Do(func() { close(h.entered) })
			}
		}
		if p == phaseDone {
			m.at[1] = m.n
		}
		m.seen = p
	}
	return m.seen != phaseDone
}
