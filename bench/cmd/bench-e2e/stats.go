package main

import (
	"math"
	"math/bits"
	"slices"
	"time"
)

// median returns the median of xs, the mean of the middle two for an even
// count, and NaN for none. xs is not modified.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	m := len(s) / 2
	if len(s)%2 == 1 {
		return s[m]
	}
	return (s[m-1] + s[m]) / 2
}

// minMax returns the smallest and largest of xs, NaN for none.
func minMax(xs []float64) (lo, hi float64) {
	if len(xs) == 0 {
		return math.NaN(), math.NaN()
	}
	return slices.Min(xs), slices.Max(xs)
}

// subBits sets the histogram's precision: 2^subBits buckets per power of
// two, so a bucket is at most 1/32 (about 3%) of its value wide.
const subBits = 5

// histBuckets covers every uint64 value: bit lengths up to 64.
const histBuckets = (65 - subBits) << subBits

// histogram is a log-linear latency histogram in the manner of HDR
// histograms: fixed size, no allocation per value, mergeable. Each caller
// fills its own, so recording takes no lock.
type histogram struct {
	counts [histBuckets]uint64
	n      uint64
}

// bucketOf maps a value to its bucket: exact below 2^(subBits+1), then the
// top subBits+1 significant bits.
func bucketOf(v uint64) int {
	const sub = 1 << subBits
	if v < 2*sub {
		return int(v)
	}
	l := bits.Len64(v)
	m := v >> (l - subBits - 1) // in [sub, 2*sub)
	return (l-subBits)*sub + int(m) - sub
}

// bucketRange returns the smallest and largest value bucket i holds.
func bucketRange(i int) (lo, hi uint64) {
	const sub = 1 << subBits
	if i < 2*sub {
		return uint64(i), uint64(i)
	}
	g := i / sub
	m := uint64(i%sub + sub)
	shift := g - 1
	return m << shift, (m+1)<<shift - 1
}

// record adds one latency.
func (h *histogram) record(d time.Duration) {
	if d < 0 {
		d = 0
	}
	h.counts[bucketOf(uint64(d))]++
	h.n++
}

// merge adds every value of o.
func (h *histogram) merge(o *histogram) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
}

// quantile returns the value below which a fraction q of the values lie,
// as the midpoint of its bucket; 0 for an empty histogram.
func (h *histogram) quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.n)))
	rank = max(rank, 1)
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			lo, hi := bucketRange(i)
			return time.Duration(lo + (hi-lo)/2)
		}
	}
	lo, hi := bucketRange(histBuckets - 1)
	return time.Duration(lo + (hi-lo)/2)
}
