package main

import (
	"time"

	"golang.org/x/sys/unix"
)

// monoAt returns CLOCK_MONOTONIC, in ns, at the instant t (a time.Now
// reading), or a little after it, never before: a reading taken after a
// fresh time.Now, less the time between t and that time.Now. The error is
// the time between the two readings, so monoAt takes the best of a few
// tries: a thread descheduled between them would otherwise skew every
// slot and stamp by its pause. Go's monotonic clock is CLOCK_MONOTONIC
// too, but it does not expose its origin.
func monoAt(t time.Time) int64 {
	best, gap := int64(0), int64(-1)
	for range 16 {
		a := monoNow()
		now := time.Now()
		b := monoNow()
		if gap < 0 || b-a < gap {
			best, gap = b-int64(now.Sub(t)), b-a
		}
		if gap < int64(2*time.Microsecond) {
			break
		}
	}
	return best
}

func monoNow() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		panic("ringbench: clock_gettime(CLOCK_MONOTONIC): " + err.Error())
	}
	return ts.Nano()
}

// sleepUntil blocks the calling thread in clock_nanosleep until
// CLOCK_MONOTONIC reaches ns, retrying after signals (Go's preemption
// signals interrupt it).
func sleepUntil(ns int64) {
	ts := unix.NsecToTimespec(ns)
	for unix.ClockNanosleep(unix.CLOCK_MONOTONIC, unix.TIMER_ABSTIME, &ts, nil) == unix.EINTR {
	}
}
