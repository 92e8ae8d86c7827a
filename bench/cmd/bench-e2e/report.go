package main

import (
	"fmt"
	"io"
	"math"
	"runtime"
	"time"
)

// goal is a ratio of two targets' CPU per request that poold aims to stay
// at or under.
type goal struct {
	a, b  string
	size  int
	limit float64
}

// goals are poold's targets against the baselines.
var goals = []goal{
	{targetPoold, targetHopFastHTTP, 100, 1.0},
	{targetPoold, targetHopNetHTTP, 16384, 0.85},
	{targetPooldStream, targetNginx, 100, 1.0},
	{targetPooldH2, targetHopNetHTTPH2, 100, 0.8},
	{targetPooldH2, targetHopNetHTTPH2, 16384, 0.8},
}

// writeReport writes the Markdown table and the ratios.
func writeReport(w io.Writer, cfg *config, targets []*target, r results) {
	fmt.Fprintf(w, "\n%s, %d CPUs, %s; %d callers on %d gRPC conns, %v per window after %v warm-up, %d interleaved repetitions\n\n",
		time.Now().UTC().Format("2006-01-02"), runtime.NumCPU(), runtime.Version(), cfg.callers, cfg.conns, cfg.duration, cfg.warmup, cfg.reps)
	fmt.Fprintln(w, "| target | body | CPU µs/req (median, min–max) | req/s (median) | p50 | p99 | errors |")
	fmt.Fprintln(w, "| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
	for _, size := range cfg.sizes {
		for _, t := range targets {
			c := r[cellKey{t.name, size}]
			if c == nil {
				continue
			}
			lo, hi := minMax(c.cpu)
			fmt.Fprintf(w, "| %s | %s | %.1f (%.1f–%.1f) | %.0f | %s | %s | %d |\n",
				t.name, byteSize(size), median(c.cpu), lo, hi, median(c.rps),
				latency(c.hist.quantile(0.5)), latency(c.hist.quantile(0.99)), c.errs)
		}
	}

	first := true
	for _, size := range cfg.sizes {
		for _, t := range targets {
			c := r[cellKey{t.name, size}]
			if c == nil || t.protoCounts == nil {
				continue
			}
			if first {
				fmt.Fprintln(w, "\nProtocol, as the HTTP/2 upstream counted the requests of the measured windows:")
				fmt.Fprintln(w)
				first = false
			}
			verdict := "all HTTP/2"
			if c.protocolProblem(t) != nil {
				verdict = "NOT all HTTP/2"
			}
			fmt.Fprintf(w, "- %s at %s: %d answered; %d over HTTP/2, %d over HTTP/1.x: %s\n", t.name, byteSize(size), c.ok, c.seen.HTTP2, c.seen.Older, verdict)
		}
	}

	fmt.Fprintln(w, "\nCPU per request, ratio of medians (and of each repetition's pair, min–max):")
	fmt.Fprintln(w)
	for _, g := range goals {
		if m, lo, hi, ok := ratio(r, g.a, g.b, g.size); ok {
			verdict := "holds"
			if m > g.limit {
				verdict = "does not hold"
			}
			if !r.protocolSound(targets, g.a, g.size) || !r.protocolSound(targets, g.b, g.size) {
				verdict = "not measured: not every request went over HTTP/2"
			}
			fmt.Fprintf(w, "- %s / %s at %s: %.2f (%.2f–%.2f); goal ≤ %.2f %s\n", g.a, g.b, byteSize(g.size), m, lo, hi, g.limit, verdict)
		}
	}
	for _, t := range targets {
		if t.baseline == "" {
			continue
		}
		for _, size := range cfg.sizes {
			if m, lo, hi, ok := ratio(r, t.name, t.baseline, size); ok {
				fmt.Fprintf(w, "- %s / %s at %s: %.2f (%.2f–%.2f)\n", t.name, t.baseline, byteSize(size), m, lo, hi)
			}
		}
	}
}

// ratio compares two targets' CPU per request at one size: the ratio of
// their medians, and the range of the ratios repetition by repetition,
// which were measured moments apart and so share the machine's mood.
func ratio(r results, a, b string, size int) (med, lo, hi float64, ok bool) {
	ca, cb := r[cellKey{a, size}], r[cellKey{b, size}]
	if ca == nil || cb == nil || len(ca.cpu) != len(cb.cpu) {
		return 0, 0, 0, false
	}
	pairs := make([]float64, len(ca.cpu))
	for i := range ca.cpu {
		pairs[i] = ca.cpu[i] / cb.cpu[i]
	}
	lo, hi = minMax(pairs)
	return median(ca.cpu) / median(cb.cpu), lo, hi, true
}

// byteSize writes a body size the way the tables do: 100 B, 16 KiB.
func byteSize(n int) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d B", n)
}

// latency writes a duration in µs or ms, three significant digits.
func latency(d time.Duration) string {
	us := float64(d) / float64(time.Microsecond)
	if us >= 1000 {
		return fmt.Sprintf("%.3g ms", us/1000)
	}
	return fmt.Sprintf("%.3g µs", math.Round(us))
}

// protocolSound tells whether the named target's cell at size shows no
// protocol problem (true for a target whose upstream counts nothing).
func (r results) protocolSound(targets []*target, name string, size int) bool {
	c := r[cellKey{name, size}]
	for _, t := range targets {
		if t.name == name && c != nil {
			return c.protocolProblem(t) == nil
		}
	}
	return true
}
