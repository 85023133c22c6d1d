//go:build linux

package main

import "time"

// pacer keeps one sender on an absolute schedule of rate messages (or
// calls) per second: slot k is at base + offset + k/rate. A sender ahead
// of its schedule sleeps until its slot; a late one sends at once and does
// not move the schedule, so that lateness is neither slept away nor
// hidden (a stream's latency counts from the slot, see sched).
//
// The pause is one clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME) system
// call to the slot's instant (sleepUntil): the calling thread blocks in
// the kernel, the goroutine keeps its place, and no CPU is spent waiting,
// so that CPU per message stays the transport's. time.Sleep is not used:
// with the netpoller in use, Go's timers wake through epoll_wait, whose
// timeout has a granularity of one millisecond, so a 100 µs pause takes
// about 1.1 ms (measured on the development VM) and 10,000/s would turn
// into bursts of ten.
//
// A pacer belongs to its sender's goroutine.
type pacer struct {
	period time.Duration // 0: not paced
	base   time.Time     // the sender's time origin (Go's monotonic clock)
	mono   int64         // CLOCK_MONOTONIC at base, in ns
	next   time.Duration // the next slot, after base
}

// newPacer starts a schedule of rate per second (0: none) whose first slot
// is offset after now. Senders that share a rate give themselves
// different offsets so that their slots interleave.
func newPacer(rate int, offset time.Duration) pacer {
	p := pacer{base: time.Now()}
	if rate > 0 {
		p.period = time.Second / time.Duration(rate)
		p.mono = monoAt(p.base)
		p.next = offset
	}
	return p
}

// paced reports whether the sender follows a schedule.
func (p *pacer) paced() bool { return p.period > 0 }

// since returns the time elapsed since the pacer's origin.
func (p *pacer) since() time.Duration { return time.Since(p.base) }

// wait sleeps until the next slot unless it has passed, moves the schedule
// on by one period, and returns the slot, after base. Unpaced, it returns
// the current time.
func (p *pacer) wait() time.Duration {
	if p.period == 0 {
		return p.since()
	}
	slot := p.next
	p.next += p.period
	// One sleep in practice: mono is never early (see monoAt), so the
	// loop only guards the promise that no send precedes its slot.
	for p.since() < slot {
		sleepUntil(p.mono + int64(slot))
	}
	return slot
}
