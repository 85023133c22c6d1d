//go:build linux

package ipc

import (
	"time"

	"golang.org/x/sys/unix"
)

// Deadlines on the wire (reqDeadline) are CLOCK_MONOTONIC nanoseconds.
// That clock is one for every process of a Linux host (outside time
// namespaces, see ctlClock), never steps (settimeofday and NTP steps move
// CLOCK_REALTIME, under which a deadline in flight would expire early or
// late), and is the clock Go's runtime keeps its timers and the
// monotonic reading of a time.Time on. So a context's deadline converts
// without reading any clock (monoAt), and a server's check reads the
// clock once (monoClockNow).

// monoClockBase is CLOCK_MONOTONIC, in ns, at monoEpoch (histogram.go):
// read on both sides of a monotonic reading of Go's own, so it is off by
// at most the time one clock_gettime takes.
var monoClockBase = func() int64 {
	var a, b unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &a) //nolint:errcheck // cannot fail for this clock
	since := int64(monoNow())
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &b) //nolint:errcheck
	return (a.Nano()+b.Nano())/2 - since
}()

// monoClockNow reads CLOCK_MONOTONIC, in ns.
func monoClockNow() int64 { return monoClockBase + int64(monoNow()) }

// monoAt is t on CLOCK_MONOTONIC, in ns. A t with a monotonic reading
// (any deadline made from time.Now, as context.WithTimeout's) converts
// exactly; another goes by the wall clock.
func monoAt(t time.Time) int64 { return monoClockBase + int64(t.Sub(monoEpoch)) }

// monoTime is the time.Time of CLOCK_MONOTONIC ns (with a monotonic
// reading, so that time.Until and timers use that clock).
func monoTime(ns int64) time.Time { return monoEpoch.Add(time.Duration(ns - monoClockBase)) }

// clockOffset is how far the server's CLOCK_MONOTONIC is ahead of the
// client's, given the server's reading srv (ctlClock) and the client's
// readings before it sent its hello (sent) and after it had the reply
// (got). On one clock srv lies between the two: the offset is 0, exactly.
// Outside (the server runs in another time namespace), the offset is
// srv minus the middle of [sent, got], off by at most half the
// handshake's duration.
func clockOffset(srv, sent, got int64) int64 {
	if srv >= sent && srv <= got {
		return 0
	}
	return srv - (sent + (got-sent)/2)
}
