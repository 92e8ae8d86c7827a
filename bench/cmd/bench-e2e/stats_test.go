package main

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

func TestMedian(t *testing.T) {
	tests := []struct {
		in   []float64
		want float64
	}{
		{[]float64{3}, 3},
		{[]float64{3, 1, 2}, 2},
		{[]float64{4, 1, 3, 2}, 2.5},
		{[]float64{5, 5, 1}, 5},
	}
	for _, tt := range tests {
		in := slices.Clone(tt.in)
		if got := median(in); got != tt.want {
			t.Errorf("median(%v) = %v, want %v", tt.in, got, tt.want)
		}
		if !slices.Equal(in, tt.in) {
			t.Errorf("median reordered its input to %v", in)
		}
	}
	if got := median(nil); !math.IsNaN(got) {
		t.Errorf("median(nil) = %v, want NaN", got)
	}
	if lo, hi := minMax([]float64{2, 9, 4}); lo != 2 || hi != 9 {
		t.Errorf("minMax = %v, %v, want 2, 9", lo, hi)
	}
}

func TestBucketsCoverEveryValue(t *testing.T) {
	// Consecutive buckets must tile the number line with no gap or overlap.
	var next uint64
	for i := range 40 << subBits {
		lo, hi := bucketRange(i)
		if lo != next || hi < lo {
			t.Fatalf("bucket %d = [%d, %d], want it to start at %d", i, lo, hi, next)
		}
		if bucketOf(lo) != i || bucketOf(hi) != i {
			t.Fatalf("bucket %d = [%d, %d] but bucketOf gives %d and %d", i, lo, hi, bucketOf(lo), bucketOf(hi))
		}
		next = hi + 1
	}
}

func TestQuantile(t *testing.T) {
	var h histogram
	if got := h.quantile(0.5); got != 0 {
		t.Errorf("empty quantile = %v, want 0", got)
	}
	// 1..1000 µs: the p50 is 500 µs and the p99 990 µs, within a bucket's
	// width (about 3%).
	var a, b histogram
	for i := 1; i <= 1000; i++ {
		d := time.Duration(i) * time.Microsecond
		if i%2 == 0 {
			a.record(d)
		} else {
			b.record(d)
		}
	}
	h.merge(&a)
	h.merge(&b)
	for _, c := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 500 * time.Microsecond}, {0.99, 990 * time.Microsecond}, {1, 1000 * time.Microsecond}} {
		got := h.quantile(c.q)
		if diff := math.Abs(float64(got-c.want)) / float64(c.want); diff > 0.04 {
			t.Errorf("quantile(%v) = %v, want %v ± 4%%", c.q, got, c.want)
		}
	}
}

func TestQuantileMatchesSort(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	var h histogram
	vals := make([]float64, 5000)
	for i := range vals {
		d := time.Duration(r.ExpFloat64() * float64(time.Millisecond))
		vals[i] = float64(d)
		h.record(d)
	}
	slices.Sort(vals)
	for _, q := range []float64{0.5, 0.9, 0.99} {
		want := vals[int(math.Ceil(q*float64(len(vals))))-1]
		got := float64(h.quantile(q))
		if math.Abs(got-want)/want > 0.04 {
			t.Errorf("quantile(%v) = %v, want %v ± 4%%", q, time.Duration(got), time.Duration(want))
		}
	}
}
