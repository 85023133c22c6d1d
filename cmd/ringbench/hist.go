//go:build linux

package main

import (
	"fmt"
	"math"
	"math/bits"
	"time"
)

// histogram counts latencies in nanoseconds in log-linear buckets, the
// scheme of HdrHistogram: each power of two is split into histSub equal
// buckets, so a bucket is never wider than 1/histSub (0.78%) of the values
// it holds. Below 2*histSub ns the buckets are 1 ns wide, i.e. exact.
//
// Bucket index of v, with s = max(0, bitlen(v) - (histSubBits+1)):
//
//	index = s*histSub + v>>s
//
//	v:      0 .. 255      256 .. 511      512 .. 1023    ...  2^k .. 2^(k+1)-1
//	width:  1             2               4                   2^(k-7)
//	index:  0 .. 255      256 .. 383      384 .. 511          (k-7)*128 + 128 ..
//
// Values above histMax are counted as histMax, and the overflow is kept so
// that a report can say so. Recording never allocates; a histogram is not
// safe for concurrent use.
type histogram struct {
	counts   []uint64
	total    uint64
	overflow uint64
	min, max int64
}

const (
	histSubBits = 7
	histSub     = 1 << histSubBits
	// histMax is the largest value told apart: 10 s, far beyond any
	// round trip this benchmark should see.
	histMax = int64(10 * time.Second)
)

func newHistogram() *histogram {
	h := &histogram{counts: make([]uint64, histIndex(histMax)+1)}
	h.reset()
	return h
}

func histIndex(v int64) int {
	s := bits.Len64(uint64(v)) - (histSubBits + 1)
	if s < 0 {
		s = 0
	}
	return s*histSub + int(uint64(v)>>uint(s))
}

// histBucket returns the smallest value of bucket i and the bucket's width.
func histBucket(i int) (lo, width int64) {
	s := i/histSub - 1
	if s < 0 {
		return int64(i), 1
	}
	return int64(i-s*histSub) << uint(s), 1 << uint(s)
}

func (h *histogram) reset() {
	clear(h.counts)
	h.total, h.overflow = 0, 0
	h.min, h.max = math.MaxInt64, 0
}

// record counts one value, in nanoseconds. Negative values count as 0.
func (h *histogram) record(v int64) {
	if v < 0 {
		v = 0
	}
	if v > histMax {
		v = histMax
		h.overflow++
	}
	h.counts[histIndex(v)]++
	h.total++
	if v < h.min {
		h.min = v
	}
	if v > h.max {
		h.max = v
	}
}

// count returns the number of values recorded since the last reset.
func (h *histogram) count() uint64 { return h.total }

// quantile returns the value at quantile q in [0, 1]: the value of the
// ceil(q*count)-th smallest recording (at least the first), reported as the
// middle of its bucket and kept within the exact minimum and maximum. It is
// within half a bucket width (0.4%) of the true value, and 0 when empty.
func (h *histogram) quantile(q float64) int64 {
	if h.total == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.total)))
	if rank < 1 {
		rank = 1
	}
	if rank > h.total {
		rank = h.total
	}
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen < rank {
			continue
		}
		lo, w := histBucket(i)
		v := lo + (w-1)/2
		return min(max(v, h.min), h.max)
	}
	return h.max // unreachable: the counts add up to total
}

// merge adds the recordings of o to h.
func (h *histogram) merge(o *histogram) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.total += o.total
	h.overflow += o.overflow
	h.min = min(h.min, o.min)
	h.max = max(h.max, o.max)
}

// histWire is a histogram as a child sends it to the parent: its non-empty
// buckets as (index, count) pairs.
type histWire struct {
	Buckets  [][2]uint64 `json:"buckets"`
	Overflow uint64      `json:"overflow"`
	Min      int64       `json:"min"`
	Max      int64       `json:"max"`
}

func (h *histogram) wire() *histWire {
	w := &histWire{Overflow: h.overflow, Min: h.min, Max: h.max}
	for i, c := range h.counts {
		if c != 0 {
			w.Buckets = append(w.Buckets, [2]uint64{uint64(i), c})
		}
	}
	return w
}

// histogram rebuilds the histogram, refusing a bucket out of range.
func (w *histWire) histogram() (*histogram, error) {
	h := newHistogram()
	for _, b := range w.Buckets {
		if b[0] >= uint64(len(h.counts)) {
			return nil, fmt.Errorf("histogram bucket %d out of range", b[0])
		}
		h.counts[b[0]] += b[1]
		h.total += b[1]
	}
	h.overflow = w.Overflow
	if h.total > 0 {
		h.min, h.max = w.Min, w.Max
	}
	return h, nil
}
