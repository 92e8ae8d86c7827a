package pool

import (
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// totalsFor returns the Totals entry for key ("" for the sum of the rest).
func totalsFor(t *testing.T, e *Engine, key string) HostStats {
	t.Helper()
	for _, h := range e.Totals() {
		if h.Key == key {
			return h
		}
	}
	t.Fatalf("no totals for %q in %+v", key, e.Totals())
	return HostStats{}
}

func routeCount(e *Engine) int {
	snap := e.snap.Load()
	snap.routesMu.RLock()
	defer snap.routesMu.RUnlock()
	return len(snap.routes)
}

func TestUnusedHostPoolIsRemovedAndItsCountersKept(t *testing.T) {
	u := newUpstream(t, respond("ok"))
	clock := newFakeClock()
	e := newTestEngine(t, Options{Now: clock.Now, IdleHostTimeout: 5 * time.Minute},
		func(p *Policy) { p.IdleConnTimeout = ptr(time.Minute) })
	mustGet(t, e, u.URL)
	mustGet(t, e, u.URL)
	key := hostStats(t, e, u).Key

	steps := []struct {
		advance time.Duration
		pools   int
	}{
		{0, 1},               // an idle conn: in use
		{time.Minute, 1},     // the conn idles out; the pool is first seen unused
		{4 * time.Minute, 1}, // unused for 4 minutes: kept
		{time.Minute, 0},     // 5 minutes: removed
		{time.Hour, 0},       // and nothing comes back by itself
	}
	for i, s := range steps {
		clock.Advance(s.advance)
		sweepNow(e)
		if n := len(e.Hosts()); n != s.pools {
			t.Fatalf("step %d (+%v): %d pools, want %d", i, s.advance, n, s.pools)
		}
	}
	if n := routeCount(e); n != 0 {
		t.Errorf("%d routes cached for removed pools", n)
	}
	before := totalsFor(t, e, key)
	if before.Counters.Requests != 2 || before.Counters.Reused != 1 || before.Counters.Closed[CloseIdleTimeout] != 1 || before.Idle != 0 {
		t.Errorf("totals after removal %+v", before)
	}

	// Reached again: a fresh pool, and the totals go on from where they were.
	mustGet(t, e, u.URL)
	if h := hostStats(t, e, u); h.Counters.Requests != 1 || h.Counters.Dials != 1 {
		t.Errorf("fresh pool counters %+v", h.Counters)
	}
	after := totalsFor(t, e, key)
	if after.Counters.Requests != 3 || after.Counters.Dials != 2 || after.Idle != 1 {
		t.Errorf("totals after the host came back %+v", after)
	}
}

func TestPoolWhoseDialsFailedGoesAtTheNextSweeps(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens: the dial is refused
	clock := newFakeClock()
	e := newTestEngine(t, Options{Now: clock.Now, IdleHostTimeout: time.Hour})
	if _, err := do(e, newRequest(t, context.Background(), "GET", "http://"+addr+"/", "")); err == nil {
		t.Fatal("request to a closed port succeeded")
	}
	sweepNow(e) // seen unused
	if n := len(e.Hosts()); n != 1 {
		t.Fatalf("%d pools after one sweep, want 1", n)
	}
	sweepNow(e) // still unused, never connected: gone without waiting the hour
	if n := len(e.Hosts()); n != 0 {
		t.Fatalf("%d pools after two sweeps, want 0", n)
	}
	if c := totalsFor(t, e, "http://"+addr).Counters; c.Requests != 1 || c.DialErrors != 1 || c.Errors != 1 {
		t.Errorf("totals %+v", c)
	}
}

func TestPoolInUseIsNeverRemoved(t *testing.T) {
	release := make(chan struct{})
	u := newUpstream(t, stallPath("/slow", release))
	clock := newFakeClock()
	e := newTestEngine(t, Options{Now: clock.Now, IdleHostTimeout: time.Minute},
		func(p *Policy) { p.MaxConnsPerHost = ptr(uint32(1)) })

	// One request holds the only conn; a second waits in the queue.
	done := make(chan error, 2)
	for range 2 {
		go func() {
			_, err := do(e, newRequest(t, context.Background(), "GET", u.URL+"/slow", ""))
			done <- err
		}()
	}
	eventually(t, "a request queued", func() bool {
		h, ok := e.Host(u.host)
		return ok && h.Active == 1 && h.Pending == 1
	})
	for range 3 {
		clock.Advance(time.Hour)
		sweepNow(e)
	}
	if n := len(e.Hosts()); n != 1 {
		t.Fatalf("%d pools while requests run, want 1", n)
	}
	close(release)
	for range 2 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}

func TestNegativeIdleHostTimeoutKeepsEveryPool(t *testing.T) {
	u := newUpstream(t, respond("ok"))
	clock := newFakeClock()
	e := newTestEngine(t, Options{Now: clock.Now, IdleHostTimeout: -1},
		func(p *Policy) { p.IdleConnTimeout = ptr(time.Minute) })
	mustGet(t, e, u.URL)
	for range 3 {
		clock.Advance(24 * time.Hour)
		sweepNow(e)
	}
	if n := len(e.Hosts()); n != 1 {
		t.Fatalf("%d pools, want 1", n)
	}
}

func TestTotalsCountTheFirstHostsAndSumTheRest(t *testing.T) {
	var urls []string
	for range 3 {
		urls = append(urls, newUpstream(t, respond("ok")).URL)
	}
	clock := newFakeClock()
	e := newTestEngine(t, Options{Now: clock.Now, CountedHosts: 2, IdleHostTimeout: time.Minute},
		func(p *Policy) { p.IdleConnTimeout = ptr(time.Minute) })
	for _, u := range urls {
		mustGet(t, e, u)
	}
	check := func(when string) {
		t.Helper()
		totals := e.Totals()
		if len(totals) != 3 || totals[2].Key != "" {
			t.Fatalf("%s: totals %+v, want two hosts and the rest", when, totals)
		}
		for _, h := range totals {
			if h.Counters.Requests != 1 || h.Counters.Dials != 1 {
				t.Errorf("%s: %q counters %+v", when, h.Key, h.Counters)
			}
		}
	}
	check("live")
	for range 3 {
		clock.Advance(time.Minute)
		sweepNow(e)
	}
	if n := len(e.Hosts()); n != 0 {
		t.Fatalf("%d pools left", n)
	}
	check("removed")
}

// A request that looked a pool up before the sweeper removed it finds a
// fresh one, and the stale route goes.
func TestRequestRoutedToARemovedPoolFindsAFreshOne(t *testing.T) {
	u := newUpstream(t, respond("ok"))
	clock := newFakeClock()
	e := newTestEngine(t, Options{Now: clock.Now, IdleHostTimeout: time.Minute},
		func(p *Policy) { p.DisableKeepAlives = ptr(true) })
	mustGet(t, e, u.URL)
	snap := e.snap.Load()
	o := origin{"http", "127.0.0.1", strconv.Itoa(u.ln.Addr().(*net.TCPAddr).Port), nil}
	snap.routesMu.RLock()
	old := snap.routes[o]
	snap.routesMu.RUnlock()
	if old == nil {
		t.Fatalf("no route cached for %+v", o)
	}
	for range 2 {
		clock.Advance(time.Minute)
		sweepNow(e)
	}
	old.mu.Lock()
	removed := old.removed
	old.mu.Unlock()
	if !removed {
		t.Fatal("pool not removed")
	}
	// As if the lookup had happened just before the removal.
	snap.routesMu.Lock()
	snap.routes[o] = old
	snap.routesMu.Unlock()

	mustGet(t, e, u.URL)
	snap.routesMu.RLock()
	cur := snap.routes[o]
	snap.routesMu.RUnlock()
	if cur == nil || cur == old {
		t.Errorf("route after the request = %p, want a fresh pool (old %p)", cur, old)
	}
	if c := totalsFor(t, e, "http://"+u.host).Counters; c.Requests != 2 {
		t.Errorf("totals count %d requests, want 2", c.Requests)
	}
}

// Requests and sweeps at once: rounds of concurrent requests, each round
// starting while the sweeper removes the pool the last round left unused,
// so requests route to a pool as it goes. No request fails and none is
// lost from the totals.
func TestRemovalRacesRequests(t *testing.T) {
	u := newUpstream(t, respond("ok"))
	clock := newFakeClock()
	var removed atomic.Int64
	e := newTestEngine(t, Options{Now: clock.Now, IdleHostTimeout: time.Nanosecond, AfterSweep: func(n int) { removed.Add(int64(n)) }},
		func(p *Policy) { p.DisableKeepAlives = ptr(true) })
	const rounds, workers = 100, 4
	var failed atomic.Int64
	for range rounds {
		sweepNow(e) // the pool is seen unused once
		var wg sync.WaitGroup
		for range workers {
			wg.Go(func() {
				resp, err := e.RoundTrip(newRequest(t, context.Background(), "GET", u.URL, ""))
				if err != nil {
					t.Error(err)
					failed.Add(1)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			})
		}
		clock.Advance(time.Second)
		sweepNow(e) // and again, unless a request got in first
		wg.Wait()
	}
	t.Logf("%d pools removed while requests ran", removed.Load())
	if removed.Load() == 0 {
		t.Error("no pool was removed: the race was not exercised")
	}
	key := fmt.Sprintf("http://%s", u.host)
	if c := totalsFor(t, e, key).Counters; c.Requests != rounds*workers {
		t.Errorf("totals count %d requests, want %d", c.Requests, rounds*workers)
	}
}
