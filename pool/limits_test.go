package pool

import (
	"context"
	"errors"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

func TestMaxConnsPerHostIsNeverExceededAndEveryRequestCompletes(t *testing.T) {
	// The server holds every request until all 50 are in, so that they
	// pile up behind the limit.
	release := make(chan struct{})
	u := newUpstream(t, stallHeaders(release, "ok"))
	e := newTestEngine(t, Options{}, func(p *Policy) { p.MaxConnsPerHost = ptr(uint32(3)) })

	var wg sync.WaitGroup
	errs := make(chan error, 50)
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := do(e, newRequest(t, context.Background(), "GET", u.URL, ""))
			if err == nil && r.body != "ok" {
				err = errors.New("bad body " + r.body)
			}
			errs <- err
		}()
	}
	// Three requests hold the three conns; the rest must queue, not dial.
	eventually(t, "three requests held and 47 queued", func() bool {
		return u.requests.Load() == 3 && hostStats(t, e, u).Pending == 47
	})
	if a := u.accepted.Load(); a != 3 {
		t.Errorf("server accepted %d conns with 47 requests queued, want 3", a)
	}
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if m := u.maxOpen.Load(); m > 3 {
		t.Errorf("server saw %d conns at once, limit 3", m)
	}
	if a := u.accepted.Load(); a > 3 {
		t.Errorf("server accepted %d conns, limit 3", a)
	}
	h := hostStats(t, e, u)
	if h.Counters.Requests != 50 || h.Active+h.Idle+h.Dialing > 3 || h.Pending != 0 {
		t.Errorf("stats %+v", h)
	}
}

func TestAFullWaitQueueFailsFastWithErrQueueFull(t *testing.T) {
	release := make(chan struct{})
	u := newUpstream(t, stallPath("/slow", release))
	e := newTestEngine(t, Options{}, func(p *Policy) {
		p.MaxConnsPerHost = ptr(uint32(1))
		p.MaxPendingRequests = ptr(uint32(1))
	})
	done := make(chan error, 2)
	go func() {
		_, err := do(e, newRequest(t, context.Background(), "GET", u.URL+"/slow", ""))
		done <- err
	}()
	eventually(t, "the first request to hold the conn", func() bool { return u.requests.Load() == 1 })
	go func() {
		_, err := do(e, newRequest(t, context.Background(), "GET", u.URL+"/queued", ""))
		done <- err
	}()
	eventually(t, "the second request to queue", func() bool { return hostStats(t, e, u).Pending == 1 })

	start := time.Now()
	_, err := do(e, newRequest(t, context.Background(), "GET", u.URL+"/overflow", ""))
	if pe := poolError(t, err, PhaseQueue); !errors.Is(pe, ErrQueueFull) {
		t.Errorf("error %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("overflow took %v, want at once", d)
	}
	if n := hostStats(t, e, u).Counters.QueueOverflows; n != 1 {
		t.Errorf("queue overflows = %d", n)
	}
	close(release)
	for range 2 {
		if err := <-done; err != nil {
			t.Error(err)
		}
	}
}

func TestNoPendingAllowedFailsAtOnceAtTheConnLimit(t *testing.T) {
	release := make(chan struct{})
	u := newUpstream(t, stallPath("/slow", release))
	e := newTestEngine(t, Options{}, func(p *Policy) {
		p.MaxConnsPerHost = ptr(uint32(1))
		p.MaxPendingRequests = ptr(uint32(0))
	})
	done := make(chan error, 1)
	go func() {
		_, err := do(e, newRequest(t, context.Background(), "GET", u.URL+"/slow", ""))
		done <- err
	}()
	eventually(t, "the first request to hold the conn", func() bool { return u.requests.Load() == 1 })
	_, err := do(e, newRequest(t, context.Background(), "GET", u.URL, ""))
	if !errors.Is(err, ErrQueueFull) {
		t.Errorf("error %v", err)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestConnsAreClosedForIdleTimeoutLifetimeAndRequestCountWithTheirReason(t *testing.T) {
	tests := []struct {
		name     string
		edit     func(*Policy)
		requests int
		expiry   time.Duration // how long the conn lives, on the engine's clock; 0 = not timed
		reason   CloseReason
	}{
		{"idle timeout", func(p *Policy) { p.IdleConnTimeout = ptr(time.Minute) }, 1, time.Minute, CloseIdleTimeout},
		{"max lifetime", func(p *Policy) { p.MaxConnLifetime = ptr(time.Minute) }, 1, time.Minute, CloseMaxLifetime},
		{"max requests", func(p *Policy) { p.MaxRequestsPerConn = ptr(uint32(2)) }, 2, 0, CloseMaxRequests},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u := newUpstream(t, respond("ok"))
			clock := newFakeClock()
			e := newTestEngine(t, Options{Now: clock.Now}, tt.edit)
			for range tt.requests {
				mustGet(t, e, u.URL)
			}
			if tt.expiry > 0 {
				// A sweep just before the conn expires keeps it; the first
				// sweep after closes it.
				clock.Advance(tt.expiry - time.Nanosecond)
				sweepNow(e)
				if h := hostStats(t, e, u); h.Idle != 1 || len(h.Counters.Closed) != 0 {
					t.Fatalf("a sweep %v before expiry: idle %d, closed %v; want the conn kept", time.Nanosecond, h.Idle, h.Counters.Closed)
				}
				clock.Advance(time.Nanosecond)
				sweepNow(e)
			}
			eventually(t, "the conn to close as "+string(tt.reason), func() bool {
				return hostStats(t, e, u).Counters.Closed[tt.reason] == 1
			})
			eventually(t, "the server to see the close", func() bool { return u.closed.Load() == 1 })
			h := hostStats(t, e, u)
			if h.Idle != 0 || h.Active != 0 || len(h.Counters.Closed) != 1 {
				t.Errorf("stats %+v", h)
			}
		})
	}
}

// The reaper itself: on its own ticker, with nobody calling sweepNow, it
// closes an idle conn at the first tick after the conn expires, and not
// before. The engine runs in a synctest bubble, so the ticker and the clock
// are fake; the upstream runs outside it, and the bubble only dials it and
// sends it one request, which holds no goroutine once the conn is idle.
func TestTheReaperClosesExpiredIdleConnsOnItsOwn(t *testing.T) {
	u := newUpstream(t, respond("ok"))
	synctest.Test(t, func(t *testing.T) {
		e := newTestEngine(t, Options{SweepInterval: time.Second}, func(p *Policy) { p.IdleConnTimeout = ptr(10 * time.Second) })
		mustGet(t, e, u.URL)
		// Ticks at 1s, 2s, ... 9s find the conn within its idle timeout.
		time.Sleep(10*time.Second - time.Nanosecond)
		synctest.Wait()
		if h := hostStats(t, e, u); h.Idle != 1 || len(h.Counters.Closed) != 0 {
			t.Fatalf("before the idle timeout: idle %d, closed %v; want the conn kept", h.Idle, h.Counters.Closed)
		}
		// The tick at 10s finds it expired.
		time.Sleep(time.Nanosecond)
		synctest.Wait()
		if h := hostStats(t, e, u); h.Idle != 0 || h.Counters.Closed[CloseIdleTimeout] != 1 || len(h.Counters.Closed) != 1 {
			t.Fatalf("a tick after the idle timeout: idle %d, closed %v; want it closed as %s", h.Idle, h.Counters.Closed, CloseIdleTimeout)
		}
	})
}

func TestAnExpiredIdleConnIsNotUsedBetweenSweeps(t *testing.T) {
	clock := newFakeClock()
	u := newUpstream(t, respond("ok"))
	e := newTestEngine(t, Options{Now: clock.Now}, func(p *Policy) { p.IdleConnTimeout = ptr(time.Minute) })
	first := mustGet(t, e, u.URL)
	clock.Advance(2 * time.Minute)
	second := mustGet(t, e, u.URL)
	if second.timing.ConnID == first.timing.ConnID {
		t.Error("expired idle conn was used")
	}
	if n := hostStats(t, e, u).Counters.Closed[CloseIdleTimeout]; n != 1 {
		t.Errorf("closed[idle_timeout] = %d", n)
	}
}

func TestIdleLimitsClosePerHostAndAcrossHosts(t *testing.T) {
	release := make(chan struct{})
	a := newUpstream(t, stallPath("/hold", release))
	b := newUpstream(t, respond("ok"))
	e := newTestEngine(t, Options{}, func(p *Policy) {
		p.MaxIdleConnsPerHost = ptr(uint32(2))
		p.MaxIdleConns = ptr(uint32(3))
	})
	// Four conns to a at once; three go idle over a per-host limit of two.
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			mustGet(t, e, a.URL+"/hold")
		}()
	}
	eventually(t, "four conns to a", func() bool { return a.requests.Load() == 4 })
	close(release)
	wg.Wait()
	if h := hostStats(t, e, a); h.Idle != 2 || h.Counters.Closed[CloseIdleLimit] != 2 {
		t.Errorf("a: idle %d, closed %v; want 2 idle, 2 idle_limit", h.Idle, h.Counters.Closed)
	}
	// Two idle conns to b make four in all, over the global three: the
	// least recently used, one of a's, goes.
	var wg2 sync.WaitGroup
	hold := make(chan struct{})
	b.setHandler(stallPath("/hold", hold))
	for range 2 {
		wg2.Add(1)
		go func() {
			defer wg2.Done()
			mustGet(t, e, b.URL+"/hold")
		}()
	}
	eventually(t, "two conns to b", func() bool { return b.requests.Load() == 2 })
	close(hold)
	wg2.Wait()
	ha, hb := hostStats(t, e, a), hostStats(t, e, b)
	if ha.Idle != 1 || hb.Idle != 2 || ha.Counters.Closed[CloseIdleLimit] != 3 {
		t.Errorf("idle a=%d b=%d, a closed %v; want 1, 2, 3 idle_limit", ha.Idle, hb.Idle, ha.Counters.Closed)
	}
}
