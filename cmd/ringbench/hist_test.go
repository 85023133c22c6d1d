//go:build linux

package main

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// exactQuantile is the definition quantile approximates: the
// ceil(q*n)-th smallest value.
func exactQuantile(sorted []int64, q float64) int64 {
	rank := int(math.Ceil(q * float64(len(sorted))))
	rank = min(max(rank, 1), len(sorted))
	return sorted[rank-1]
}

func TestHistBuckets(t *testing.T) {
	prev := -1
	for v := int64(0); v < 1<<20; v++ {
		i := histIndex(v)
		if i != prev && i != prev+1 {
			t.Fatalf("index of %d is %d after %d: buckets skipped", v, i, prev)
		}
		prev = i
		lo, w := histBucket(i)
		if v < lo || v >= lo+w {
			t.Fatalf("value %d in bucket %d = [%d, %d)", v, i, lo, lo+w)
		}
		if v >= 2*histSub && float64(w)/float64(lo) > 1.0/histSub {
			t.Fatalf("bucket %d = [%d, %d) wider than 1/%d", i, lo, lo+w, histSub)
		}
	}
	for _, v := range []int64{1 << 30, 1<<30 + 12345, int64(time.Second), histMax - 1, histMax} {
		lo, w := histBucket(histIndex(v))
		if v < lo || v >= lo+w {
			t.Errorf("value %d in bucket [%d, %d)", v, lo, lo+w)
		}
	}
	if n := len(newHistogram().counts); n > 4000 {
		t.Errorf("%d buckets, want a few thousand", n)
	}
}

func TestHistQuantiles(t *testing.T) {
	uniform := func(r *rand.Rand) int64 { return 1 + r.Int64N(1_000_000) }
	// Log-uniform from 10 ns to 10 s, the range the histogram promises.
	logUniform := func(r *rand.Rand) int64 {
		return int64(math.Exp(math.Log(10) + r.Float64()*(math.Log(1e10)-math.Log(10))))
	}
	// A latency-like shape: a tight body near 300 ns and a long tail.
	latency := func(r *rand.Rand) int64 {
		if r.IntN(1000) == 0 {
			return 20_000 + r.Int64N(2_000_000)
		}
		return 250 + int64(r.ExpFloat64()*60)
	}
	small := func(r *rand.Rand) int64 { return r.Int64N(200) }
	tests := []struct {
		name string
		gen  func(*rand.Rand) int64
		n    int
	}{
		{"uniform", uniform, 200_000},
		{"log-uniform", logUniform, 200_000},
		{"latency", latency, 500_000},
		{"small-exact", small, 10_000},
		{"single", func(*rand.Rand) int64 { return 777 }, 1},
	}
	qs := []float64{0, 0.001, 0.1, 0.5, 0.9, 0.99, 0.999, 0.9999, 1}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := rand.New(rand.NewPCG(1, 2))
			h := newHistogram()
			vals := make([]int64, tt.n)
			for i := range vals {
				vals[i] = tt.gen(r)
				h.record(vals[i])
			}
			slices.Sort(vals)
			if h.count() != uint64(tt.n) {
				t.Fatalf("count %d, want %d", h.count(), tt.n)
			}
			for _, q := range qs {
				got, want := h.quantile(q), exactQuantile(vals, q)
				tol := float64(want) / (2 * histSub)
				if want < 2*histSub {
					tol = 0 // 1 ns buckets: exact
				}
				if math.Abs(float64(got-want)) > tol {
					t.Errorf("q%v = %d, want %d ± %.1f", q, got, want, tol)
				}
			}
		})
	}
}

func TestHistEdges(t *testing.T) {
	h := newHistogram()
	if got := h.quantile(0.5); got != 0 {
		t.Errorf("empty histogram: p50 = %d, want 0", got)
	}
	h.record(-5)
	h.record(3 * histMax)
	if h.overflow != 1 {
		t.Errorf("overflow = %d, want 1", h.overflow)
	}
	if got := h.quantile(0); got != 0 {
		t.Errorf("p0 = %d, want 0 (negative values count as 0)", got)
	}
	if got := h.quantile(1); got != histMax {
		t.Errorf("p100 = %d, want histMax %d", got, histMax)
	}
	h.reset()
	h.record(1000)
	if h.count() != 1 || h.quantile(0.999) != 1000 || h.overflow != 0 {
		t.Errorf("after reset: count %d, p999 %d, overflow %d", h.count(), h.quantile(0.999), h.overflow)
	}
}

func TestHistRecordAllocs(t *testing.T) {
	h := newHistogram()
	v := int64(1)
	if n := testing.AllocsPerRun(1000, func() { h.record(v); v = v*3 + 1 }); n != 0 {
		t.Errorf("record allocates %v times per call", n)
	}
}

func BenchmarkHistRecord(b *testing.B) {
	h := newHistogram()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		h.record(int64(200 + i&1023))
	}
}
