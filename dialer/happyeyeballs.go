package dialer

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"time"
)

// defaultAttemptDelay is RFC 8305's Connection Attempt Delay: how long one
// attempt runs alone before the next address is tried alongside it.
const defaultAttemptDelay = 250 * time.Millisecond

// attempt is the outcome of connecting to one address.
type attempt struct {
	addr netip.AddrPort
	conn *net.TCPConn
	err  error
}

// race connects to addrs, which are already in interleave order, RFC 8305
// style: attempts start delay apart, or at once when the previous one
// fails; the first to connect wins and every other is canceled and closed.
// It returns only after every attempt it started has finished, so no
// goroutine or socket outlives the call.
//
// On failure it returns the address and error worth reporting: the attempt
// the deadline cut short when the context ended, else the first failure.
func race(ctx context.Context, nd *net.Dialer, addrs []netip.AddrPort, delay time.Duration) (*net.TCPConn, netip.AddrPort, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	// Buffered for every attempt, so a finished attempt never waits for the
	// loop to take its result.
	results := make(chan attempt, len(addrs))
	next, running := 0, 0
	start := func() {
		ap := addrs[next]
		next++
		running++
		go func() {
			c, err := nd.DialContext(ctx, "tcp", ap.String())
			if err != nil {
				results <- attempt{addr: ap, err: err}
				return
			}
			results <- attempt{addr: ap, conn: c.(*net.TCPConn)}
		}()
	}

	timer := time.NewTimer(delay)
	defer timer.Stop()
	start()

	var failures []attempt
	for running > 0 {
		// A nil channel never fires: with every address started, only
		// results are left to wait for.
		var stagger <-chan time.Time
		if next < len(addrs) {
			stagger = timer.C
		}
		select {
		case r := <-results:
			running--
			if r.err == nil {
				cancel()
				// Wait for the losers so none leaks; canceled dials return
				// promptly, and one that connected anyway is closed.
				for ; running > 0; running-- {
					if l := <-results; l.conn != nil {
						l.conn.Close()
					}
				}
				return r.conn, r.addr, nil
			}
			failures = append(failures, r)
			if next < len(addrs) {
				start()
				timer.Reset(delay)
			}
		case <-stagger:
			start()
			timer.Reset(delay)
		}
	}
	ap, err := pickFailure(ctx, failures)
	return nil, ap, err
}

// pickFailure chooses the failure to report. When the dial's context ended,
// the attempt it interrupted explains the outcome better than an earlier
// refusal; otherwise the first failure is what RFC 8305 clients report.
func pickFailure(ctx context.Context, failures []attempt) (netip.AddrPort, error) {
	if cause := ctx.Err(); cause != nil {
		for _, f := range failures {
			if errors.Is(f.err, cause) {
				return f.addr, f.err
			}
		}
		last := failures[len(failures)-1]
		return last.addr, ctxErr(ctx, last.err)
	}
	return failures[0].addr, failures[0].err
}
