//go:build linux

package ipc

import (
	"sync/atomic"
	"time"
)

// Which stores write a large body. The side that reads a body next reads
// it right after, on its own CPU; where that CPU shares a cache with the
// writer's, cached stores leave the body where the reader finds it
// quickly, and where it does not, every cached store must first take its
// line back from the reader's cache (the reader read the segment last)
// and the reader must then fetch every line from the writer's, so
// non-temporal stores, which put the body in memory, win by 2-3x
// (docs/design.md §3.6). Which holds changes while a connection lives:
// the hypervisor, or the scheduler, moves the CPUs.
//
// So respondInNotes measures it as it goes: after the first note of a
// response it watches the response ring's head until the client releases the
// note (the client's reader, polling for its answer, releases a note
// before it copies the piece): a round trip of one cache line each way
// and a few loads. On the AMD guest, whose two phases these are, the
// round trips were 0.2-0.6 µs (most 0.4-0.5) while the two vCPUs shared a
// cache and 0.5-1.1 µs (most 0.6-0.9) while they did not. The two
// overlap, and a wrong "near" costs more (cached stores across chiplets
// took twice as long) than a wrong "far", so one round trip does not
// decide: the median of the last nearSamples does, against nearRoundTrip.
// A note not released within nearWatch (a client that slept and must be
// woken, to read on whichever CPU) gives no sample. Only one noted
// response in nearEvery is timed: a far client costs about a round trip
// of watching per nearEvery responses, a sleeping one nearWatch.
// The notes carry the verdict (noteNear) to the client, which writes its
// own large requests accordingly.
const (
	nearRoundTrip = 600 * time.Nanosecond
	nearWatch     = 1200 * time.Nanosecond
	nearSamples   = 5
	nearEvery     = 4
)

// nearJudge keeps a connection's last round trips and its verdict. It
// belongs to the connection's loop (respondInNotes).
type nearJudge struct {
	rt     [nearSamples]time.Duration // a ring of the last round trips
	n      int                        // round trips taken
	near   bool                       // the verdict: cached stores
	bodies uint32                     // noted responses, for nearEvery
}

// take records a round trip and updates the verdict: near once the median
// of the last nearSamples is below nearRoundTrip (far until there are
// that many).
func (j *nearJudge) take(rt time.Duration) {
	j.rt[j.n%nearSamples] = rt
	j.n++
	if j.n < nearSamples {
		return
	}
	below := 0
	for _, d := range j.rt {
		if d < nearRoundTrip {
			below++
		}
	}
	j.near = below > nearSamples/2
}

// nearTest, set by tests only, overrides the verdict: 1 near, -1 far, 0
// none.
var nearTest atomic.Int32

// judgeNear watches the response ring, for at most nearWatch, until the
// client has released the record ending at end (a progress note just
// committed), and gives nearJ the round trip if it did.
func (c *Conn) judgeNear(end uint64) {
	start := monoNow()
	for i := 1; ; i++ {
		if c.respP.Released(end) {
			c.nearJ.take(monoNow() - start)
			return
		}
		if i%4 == 0 && monoNow()-start >= nearWatch {
			return
		}
	}
}

// copyPiece copies src into dst with the stores near calls for: cached
// ones in pieces (copyBody: memmove alone goes non-temporal from 1 MiB
// up), or non-temporal ones.
func copyPiece(dst, src []byte, near bool) int {
	if near {
		return copyBody(dst, src)
	}
	return streamCopy(dst, src)
}
