//go:build linux

package main

import (
	"encoding/binary"
	"time"
)

// pacer keeps one sender on an absolute schedule of rate messages (or
// calls) per second: slot k is at base + offset + k/rate. A sender ahead
// of its schedule sleeps until its slot; a late one sends at once and does
// not move the schedule, so that lateness is neither slept away nor
// hidden (a stream's latency counts from the slot, see stamps).
//
// The pause is one clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME) system
// call to the slot's instant (sleepUntil): the calling thread blocks in
// the kernel, the goroutine keeps its place, and no CPU is spent waiting.
// A paced message costs its sender one system call and one wake-up more,
// alike for every transport, so CPU per message stays comparable, if not
// the transport's alone: on the development VM, a loop doing nothing but
// wait took 43 µs of CPU per wait at 1,000/s and 22 µs at 10,000/s, about
// what time.Sleep costs there.
// time.Sleep is not used: with the netpoller in use, Go's timers wake
// through epoll_wait, whose timeout has a granularity of one millisecond,
// so a 100 µs pause takes about 1.1 ms (measured on the development VM)
// and 10,000/s would turn into bursts of ten.
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

// monoSlot returns the slot's instant on CLOCK_MONOTONIC, in ns: what a
// paced stream stamps into each frame, so that the receiver, in another
// process, can time the frame from the moment it was due.
func (p *pacer) monoSlot(slot time.Duration) int64 { return p.mono + int64(slot) }

// stamps is a stream receiver's latency meter: each frame of a paced
// stream carries its slot's CLOCK_MONOTONIC instant at byte off, and its
// latency runs from there to its receipt, so a late sender's lateness
// counts. It belongs to the receiving loop's goroutine.
type stamps struct {
	off  int
	base time.Time
	mono int64 // CLOCK_MONOTONIC at base
	lat  *histogram
}

// newStamps returns the meter of a stream sent at rate (nil when
// unpaced: its frames carry no stamp).
func newStamps(rate, off int) *stamps {
	if rate == 0 {
		return nil
	}
	s := &stamps{off: off, base: time.Now(), lat: newHistogram()}
	s.mono = monoAt(s.base)
	return s
}

// observe records frame's latency, forgetting the warm-up's when the
// window has just started (was is the meter's phase before its tick,
// now after). A nil meter observes nothing.
func (s *stamps) observe(frame []byte, was, now int32) {
	if s == nil {
		return
	}
	t := s.mono + int64(time.Since(s.base))
	if was == phaseWarmup && now != phaseWarmup {
		s.lat.reset()
	}
	s.lat.record(t - int64(binary.LittleEndian.Uint64(frame[s.off:])))
}

// histogram returns the latencies, nil for an unpaced stream.
func (s *stamps) histogram() *histogram {
	if s == nil {
		return nil
	}
	return s.lat
}
