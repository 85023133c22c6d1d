package main

import (
	"time"

	"golang.org/x/sys/unix"
)

// monoAt returns CLOCK_MONOTONIC, in ns, at the instant t (a time.Now
// reading), or up to a microsecond after it, never before: a reading
// taken after a fresh time.Now, less the time between t and that
// time.Now. Go's monotonic clock is CLOCK_MONOTONIC too, but it does not
// expose its origin.
func monoAt(t time.Time) int64 {
	now := time.Now()
	return monoNow() - int64(now.Sub(t))
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
