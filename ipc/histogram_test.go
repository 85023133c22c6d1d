//go:build linux

package ipc

import (
	"testing"
	"time"
)

// Known durations land in the bucket whose bound is the first one not
// below them, and Count and Sum add up.
func TestHistogramBuckets(t *testing.T) {
	var h histogram
	in := []struct {
		d      time.Duration
		bucket int
	}{
		{-5, 0}, // a clock step back counts as 0
		{0, 0},
		{256, 0},
		{257, 1},
		{512, 1},
		{513, 2},
		{time.Microsecond, 2}, // 1000 ns <= 1024 ns
		{time.Millisecond, 12},
		{BucketBound(HistogramBuckets - 2), HistogramBuckets - 2},
		{BucketBound(HistogramBuckets-2) + 1, HistogramBuckets - 1},
		{time.Hour, HistogramBuckets - 1},
	}
	var sum time.Duration
	want := make([]uint64, HistogramBuckets)
	for _, c := range in {
		if got := bucketOf(c.d); got != c.bucket {
			t.Errorf("bucketOf(%v) = %d, want %d", c.d, got, c.bucket)
		}
		if c.d > BucketBound(c.bucket) || (c.bucket > 0 && c.d > 0 && c.d <= BucketBound(c.bucket-1)) {
			t.Errorf("%v is not within the bounds of bucket %d", c.d, c.bucket)
		}
		h.observe(c.d)
		sum += max(c.d, 0)
		want[c.bucket]++
	}
	s := h.snapshot()
	if s.Count != uint64(len(in)) || s.Sum != sum {
		t.Errorf("count %d sum %v, want %d and %v", s.Count, s.Sum, len(in), sum)
	}
	for i := range want {
		if s.Counts[i] != want[i] {
			t.Errorf("bucket %d: %d, want %d", i, s.Counts[i], want[i])
		}
	}
	if n := testing.AllocsPerRun(100, func() { h.observe(time.Microsecond) }); n != 0 {
		t.Errorf("observe allocates %v times", n)
	}
}
