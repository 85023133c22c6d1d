//go:build linux

package ipc

import (
	"context"
	"runtime"
	"time"

	"github.com/ringipc/ringipc/ring"
)

// Waiting. Every blocking ring operation of this package goes through
// peek and reserve below instead of the ring's own Peek and Reserve, for
// two reasons the ring's generic loop cannot know about:
//
//   - A connection is a handful of goroutines that all spin (server loop,
//     client reader, dispatch reader, callers waiting for space), and
//     client and server often share a process. On a machine with few
//     CPUs a spinner that keeps its P starves the very goroutine that
//     would end its wait, so the loop yields now and then (the ring's
//     own loop yields every 1024 polls, tens of µs with its per-poll
//     context check: long enough to stall a pipelined client). Not on
//     every poll either: runtime.Gosched takes the scheduler's lock,
//     which two yielding Ps contend for, and with an idle P it wakes
//     another thread to look for work.
//   - Polling costs one atomic load of the peer's position; checking the
//     context (a lock in a cancelCtx) and the clock every poll costs
//     more than that, so they are looked at every few dozen polls.
//
// Sleeping follows the ring's protocol exactly (docs/ipc.md §6): set the
// word, re-check, then wait for a token; the peer clears the word and
// sends the token after it publishes.

const (
	pollsPerCheck = 64                   // ctx and clock every this many polls
	yieldEvery    = 2 * time.Microsecond // runtime.Gosched at most this often

)

// spinner bounds a polling loop by time.
type spinner struct {
	budget time.Duration
	done   <-chan struct{} // ctx.Done(); nil: never
	start  time.Time
	yield  time.Duration // since start, when to yield next
	n      int
}

func newSpinner(ctx context.Context, budget time.Duration) spinner {
	return spinner{budget: budget, done: ctx.Done(), yield: yieldEvery}
}

// again reports whether to poll once more; false means sleep (or, if ctx
// ended, return its error, which the sleeping path does).
func (s *spinner) again() bool {
	if s.budget <= 0 {
		return false
	}
	s.n++
	if s.n == 1 {
		s.start = time.Now()
		return true
	}
	if s.n%pollsPerCheck != 0 {
		return true
	}
	if s.done != nil {
		select {
		case <-s.done:
			return false
		default:
		}
	}
	d := time.Since(s.start)
	if d >= s.yield {
		runtime.Gosched()
		s.yield = d + yieldEvery
	}
	return d < s.budget
}

// peek returns cons's next record, waiting on local word i until one is
// committed, ctx ends or the ring is closed and drained. The record's
// Commit happens before peek returns it (the ring's tail store and load).
func (w *sockWaker) peek(ctx context.Context, cons *ring.Consumer, i int) (ring.Record, error) {
	rec, err := cons.TryPeek()
	if err != ring.ErrEmpty {
		return rec, err
	}
	for sp := newSpinner(ctx, w.spin); sp.again(); {
		if rec, err = cons.TryPeek(); err != ring.ErrEmpty {
			return rec, err
		}
	}
	for {
		if err := ctx.Err(); err != nil {
			return ring.Record{}, err
		}
		// TryPeek that finds the ring empty has handed back every
		// consumed byte, so a producer waiting for space never waits on
		// a sleeping consumer. Withdrawing the word after a hit costs at
		// most a spurious token, which the next sleep absorbs.
		w.arm(i)
		if rec, err = cons.TryPeek(); err != ring.ErrEmpty {
			w.disarm(i)
			return rec, err
		}
		if err := w.sleep(ctx, i); err != nil {
			w.disarm(i)
			return ring.Record{}, err
		}
	}
}

// reserve claims room for a record in p, waiting on local word i until
// there is room, ctx ends or the ring is closed.
func (w *sockWaker) reserve(ctx context.Context, p *ring.Producer, i int, typ uint32, n int) (ring.Reservation, error) {
	r, err := p.TryReserve(typ, n)
	if err != ring.ErrFull {
		return r, err
	}
	return w.waitRoom(ctx, i, func() (ring.Reservation, error) { return p.TryReserve(typ, n) })
}

// waitRoom is the waiting part of a reservation: it calls try (a
// TryReserve, however the caller guards its producer) until it no longer
// reports ErrFull, spinning, then sleeping on local word i by the ring's
// protocol (docs/ipc.md §6: announce, re-check, sleep), until ctx ends.
func (w *sockWaker) waitRoom(ctx context.Context, i int, try func() (ring.Reservation, error)) (ring.Reservation, error) {
	for sp := newSpinner(ctx, w.spin); sp.again(); {
		if r, err := try(); err != ring.ErrFull {
			return r, err
		}
	}
	for {
		if err := ctx.Err(); err != nil {
			return ring.Reservation{}, err
		}
		w.arm(i)
		if r, err := try(); err != ring.ErrFull {
			w.disarm(i)
			return r, err
		}
		if err := w.sleep(ctx, i); err != nil {
			w.disarm(i)
			return ring.Reservation{}, err
		}
	}
}

// pollReserve polls p for room for up to budget, without sleeping:
// ErrFull if there is still none.
func (w *sockWaker) pollReserve(p *ring.Producer, typ uint32, n int, budget time.Duration) (ring.Reservation, error) {
	r, err := p.TryReserve(typ, n)
	for sp := newSpinner(context.Background(), budget); err == ring.ErrFull && sp.again(); {
		r, err = p.TryReserve(typ, n)
	}
	return r, err
}

// write copies one record into p, waiting as reserve does.
func (w *sockWaker) write(ctx context.Context, p *ring.Producer, i int, typ uint32, b []byte) error {
	r, err := w.reserve(ctx, p, i, typ, len(b))
	if err != nil {
		return err
	}
	copy(r.Bytes(), b)
	return r.Commit()
}
