//go:build linux

package ipc

import (
	"math/bits"
	"sync/atomic"
	"time"
)

// HistogramBuckets is the number of buckets of a Histogram: fixed
// log-scale bounds, 256 ns doubling up to about 2.1 s, and a last bucket
// for anything longer.
const HistogramBuckets = 25

// histMinShift: the first bucket's bound is 1<<histMinShift ns (256 ns),
// below which a Go handler's time is noise from the clock itself.
const histMinShift = 8

// BucketBound returns the upper bound (inclusive) of bucket i of a
// Histogram; the last bucket has no bound and returns the largest
// time.Duration.
func BucketBound(i int) time.Duration {
	if i >= HistogramBuckets-1 {
		return time.Duration(1<<63 - 1)
	}
	return time.Duration(1) << (histMinShift + i)
}

// Histogram is a snapshot of a latency distribution. Counts are per
// bucket, not cumulative: Counts[i] holds the observations d with
// BucketBound(i-1) < d <= BucketBound(i). Like Stats, the fields are read
// one by one while observations go on, so Count may differ slightly from
// the sum of Counts.
type Histogram struct {
	Counts [HistogramBuckets]uint64
	Count  uint64
	Sum    time.Duration
}

// monoEpoch anchors monoNow.
var monoEpoch = time.Now()

// monoNow reads the monotonic clock only: time.Since of a time with a
// monotonic reading skips the wall clock that time.Now also reads, which
// halves the cost of a reading where the clock is slow (kvm-clock).
func monoNow() time.Duration { return time.Since(monoEpoch) }

// histogram records durations with three atomic adds and no lock or
// allocation, so that connection loops can share one per service. The
// bucket index is a bit length, not a search.
type histogram struct {
	counts [HistogramBuckets]atomic.Uint64
	count  atomic.Uint64
	sum    atomic.Int64
}

// bucketOf returns the bucket of d: the smallest i with d <= BucketBound(i).
func bucketOf(d time.Duration) int {
	if d <= 1<<histMinShift {
		return 0
	}
	i := bits.Len64(uint64(d-1)) - histMinShift
	return min(i, HistogramBuckets-1)
}

func (h *histogram) observe(d time.Duration) {
	d = max(d, 0) // a clock step back is not a negative time
	h.counts[bucketOf(d)].Add(1)
	h.count.Add(1)
	h.sum.Add(int64(d))
}

func (h *histogram) snapshot() Histogram {
	var s Histogram
	for i := range h.counts {
		s.Counts[i] = h.counts[i].Load()
	}
	s.Count = h.count.Load()
	s.Sum = time.Duration(h.sum.Load())
	return s
}
