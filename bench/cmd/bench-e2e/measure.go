package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"
)

// cellKey names one target at one body size.
type cellKey struct {
	target string
	size   int
}

// cell is everything measured for one target at one size, over every
// repetition. cpu and rps hold one value per repetition, in order, so that
// two targets can be compared repetition by repetition.
type cell struct {
	cpu      []float64 // CPU µs per request
	rps      []float64
	hist     histogram // latencies of every successful request
	ok, errs uint64
	firstErr string
	// seen is what the upstream counted in the measured windows, for a
	// target whose upstream counts requests by protocol.
	seen protoCounts
}

// results maps each target and size to what was measured.
type results map[cellKey]*cell

// sample is one measured window.
type sample struct {
	ok, errs uint64
	hist     histogram
	firstErr error
	seen     protoCounts // the upstream's counts over the window, if it keeps them
}

// measureAll runs every repetition: rep by rep, size by size, every target
// in turn, the order of targets rotated each repetition so that none is
// always first after a change of size.
func measureAll(ctx context.Context, cfg *config, targets []*target, log io.Writer) (results, error) {
	meter := cpuMeter{ticksPerSecond: clockTicks()}
	res := results{}
	for rep := range cfg.reps {
		for _, size := range cfg.sizes {
			for i := range targets {
				t := targets[(i+rep)%len(targets)]
				c := res[cellKey{t.name, size}]
				if c == nil {
					c = &cell{}
					res[cellKey{t.name, size}] = c
				}
				cpu, rps, s, err := measureOne(ctx, cfg, meter, t, size)
				if err != nil {
					return nil, fmt.Errorf("%s at %d B, repetition %d: %w", t.name, size, rep+1, err)
				}
				c.cpu = append(c.cpu, cpu)
				c.rps = append(c.rps, rps)
				c.hist.merge(&s.hist)
				c.ok += s.ok
				c.errs += s.errs
				c.seen.HTTP2 += s.seen.HTTP2
				c.seen.Older += s.seen.Older
				if c.firstErr == "" && s.firstErr != nil {
					c.firstErr = s.firstErr.Error()
				}
				fmt.Fprintf(log, "bench-e2e: rep %d %-14s %6d B  %7.1f µs/req  %8.0f req/s  %d errors\n",
					rep+1, t.name, size, cpu, rps, s.errs)
			}
		}
	}
	return res, nil
}

// measureOne warms a target up, then measures one window: CPU µs per
// request, requests per second, and the window's sample.
func measureOne(ctx context.Context, cfg *config, meter cpuMeter, t *target, size int) (cpuPerReq, rps float64, s *sample, err error) {
	d, err := t.open(ctx, size)
	if err != nil {
		return 0, 0, nil, err
	}
	defer d.close()
	if cfg.warmup > 0 {
		load(ctx, d, cfg.callers, cfg.warmup)
	}
	pids, err := t.pids()
	if err != nil {
		return 0, 0, nil, err
	}
	var seenBefore protoCounts
	if t.protoCounts != nil {
		if seenBefore, err = t.protoCounts(); err != nil {
			return 0, 0, nil, fmt.Errorf("upstream counters: %w", err)
		}
	}
	before, err := meter.cpu(pids)
	if err != nil {
		return 0, 0, nil, err
	}
	start := time.Now()
	s = load(ctx, d, cfg.callers, cfg.duration)
	elapsed := time.Since(start)
	after, err := meter.cpu(pids)
	if err != nil {
		return 0, 0, nil, err
	}
	// Read after the CPU, so that the upstream's answer costs the target
	// nothing; every request of the window has finished by now.
	if t.protoCounts != nil {
		seenAfter, err := t.protoCounts()
		if err != nil {
			return 0, 0, nil, fmt.Errorf("upstream counters: %w", err)
		}
		s.seen = protoCounts{HTTP2: seenAfter.HTTP2 - seenBefore.HTTP2, Older: seenAfter.Older - seenBefore.Older}
	}
	if err := ctx.Err(); err != nil {
		return 0, 0, nil, err
	}
	if !t.proc.alive() {
		return 0, 0, nil, fmt.Errorf("%s exited (%v)%s", t.name, t.proc.waitErr, t.proc.logTail())
	}
	if s.ok == 0 {
		return 0, 0, nil, fmt.Errorf("no request succeeded: %v", s.firstErr)
	}
	cpuPerReq = float64((after - before).Microseconds()) / float64(s.ok)
	return cpuPerReq, float64(s.ok) / elapsed.Seconds(), s, nil
}

// load runs callers closed-loop callers on d for dur: each sends a request,
// waits for its answer and sends the next until the time is up. A request
// in flight then is let finish and counted, rather than cancelled, so that
// every error is a real one and the CPU measured is for whole requests.
func load(ctx context.Context, d driver, callers int, dur time.Duration) *sample {
	end := time.Now().Add(dur)
	per := make([]sample, callers)
	var wg sync.WaitGroup
	for i := range callers {
		wg.Go(func() {
			s := &per[i]
			for ctx.Err() == nil && time.Now().Before(end) {
				start := time.Now()
				err := d.do(ctx, i)
				if ctx.Err() != nil {
					return // the run is aborted
				}
				if err != nil {
					s.errs++
					if s.firstErr == nil {
						s.firstErr = err
					}
					continue
				}
				s.ok++
				s.hist.record(time.Since(start))
			}
		})
	}
	wg.Wait()
	total := &sample{}
	for i := range per {
		total.ok += per[i].ok
		total.errs += per[i].errs
		total.hist.merge(&per[i].hist)
		if total.firstErr == nil {
			total.firstErr = per[i].firstErr
		}
	}
	return total
}

// maxErrorRate is the share of failed requests above which a target's
// numbers are not worth reporting: something is broken, not slow.
const maxErrorRate = 0.001

// problems lists the cells whose error rate says the run is not sound.
func (r results) problems(targets []*target, sizes []int) []error {
	var errs []error
	for _, t := range targets {
		for _, size := range sizes {
			c := r[cellKey{t.name, size}]
			if c == nil {
				continue
			}
			if total := c.ok + c.errs; c.errs > 0 && float64(c.errs) > maxErrorRate*float64(total) {
				errs = append(errs, fmt.Errorf("%s at %d B: %d of %d requests failed, first: %s", t.name, size, c.errs, total, c.firstErr))
			}
			if err := c.protocolProblem(t); err != nil {
				errs = append(errs, fmt.Errorf("%s at %d B: %w", t.name, size, err))
			}
		}
	}
	if len(errs) > 0 {
		errs = append([]error{errors.New("some targets failed requests or did not speak HTTP/2 as they should")}, errs...)
	}
	return errs
}

// protocolProblem says why the upstream's counts do not show that every
// request of a target whose upstream counts them came over HTTP/2: a
// request over an older version, or fewer HTTP/2 requests than answered
// (a retry may add some, so more are fine).
func (c *cell) protocolProblem(t *target) error {
	if t.protoCounts == nil {
		return nil
	}
	if c.seen.Older > 0 || c.seen.HTTP2 < c.ok {
		return fmt.Errorf("not all over HTTP/2: the upstream counted %d requests over HTTP/2 and %d over HTTP/1.x for %d answered", c.seen.HTTP2, c.seen.Older, c.ok)
	}
	return nil
}
