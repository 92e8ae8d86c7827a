package pool

import "time"

// A host pool costs a few KB however little it is used, so a caller that
// reaches many hosts once each (a webhook sender) would grow without
// bound if pools lived forever. The sweeper removes pools nobody uses;
// their counters live on in Totals.

// unusedLocked says whether nothing holds the pool: no conns (dialing
// ones included), no waiters and no request inside roundTrip.
func (hp *hostPool) unusedLocked() bool {
	return len(hp.conns) == 0 && hp.active == 0 && hp.dialing == 0 && hp.waiters.n == 0 &&
		hp.inflight.Load() == 0 && !hp.closed
}

// idleLongLocked tracks how long the pool has been unused and says
// whether it has been for timeout. A pool whose every dial failed (DNS,
// egress, a refused port) never held a conn worth keeping warm, so it
// goes as soon as it has been seen unused twice.
func (hp *hostPool) idleLongLocked(now time.Time, timeout time.Duration) bool {
	requests := hp.stats.requests.Load()
	if !hp.unusedLocked() {
		hp.unusedSince = time.Time{}
		return false
	}
	if hp.unusedSince.IsZero() || requests != hp.unusedRequests {
		hp.unusedSince, hp.unusedRequests = now, requests
		return false
	}
	if hp.stats.dials.Load() == hp.stats.dialErrors.Load() {
		return true
	}
	return now.Sub(hp.unusedSince) >= timeout
}

// removeIdleHosts removes the pools among candidates that are still
// unused, folding their counters into the engine's totals, and returns
// how many it removed.
func (e *Engine) removeIdleHosts(candidates []*hostPool) int {
	if len(candidates) == 0 {
		return 0
	}
	removed := candidates[:0]
	e.mu.Lock()
	for _, hp := range candidates {
		hp.mu.Lock()
		// Checked again under both locks: a request may have entered
		// since the sweep looked.
		if !hp.unusedLocked() || hp.stats.requests.Load() != hp.unusedRequests || e.hosts[hp.key] != hp {
			hp.mu.Unlock()
			continue
		}
		hp.removed = true
		hp.mu.Unlock()
		delete(e.hosts, hp.key)
		final := hp.stats.snapshot()
		if c := e.counted[hp.key]; c != nil {
			c.add(final)
		} else {
			e.other.add(final)
		}
		removed = append(removed, hp)
	}
	e.hosts = shrunk(e.hosts, &e.hostsPeak)
	e.mu.Unlock()
	// A route cached for the generation in force would keep the pool's
	// memory alive; a route cached for an older generation goes with it,
	// and one cached while this ran is dropped when a request finds the
	// pool removed. The generation is read only now, so that one put in
	// force during the removal is the one cleaned.
	snap := e.snap.Load()
	snap.routesMu.Lock()
	for _, hp := range removed {
		o := origin{hp.scheme, hp.host, hp.port, hp.scope}
		if snap.routes[o] == hp {
			delete(snap.routes, o)
		}
	}
	snap.routes = shrunk(snap.routes, &snap.routesPeak)
	snap.routesMu.Unlock()
	return len(removed)
}

// shrunk returns m, or a copy of it once it holds a quarter of what it
// held at its peak: a Go map keeps the memory of its largest size, so
// after a burst of hosts the map would otherwise hold on to what their
// removal freed.
func shrunk[K comparable, V any](m map[K]V, peak *int) map[K]V {
	if *peak < 1024 || len(m) > *peak/4 {
		return m
	}
	c := make(map[K]V, len(m))
	for k, v := range m {
		c[k] = v
	}
	*peak = len(c)
	return c
}

// forgetRoute drops a removed pool from the current generation's routes.
func (e *Engine) forgetRoute(hp *hostPool) {
	snap := e.snap.Load()
	o := origin{hp.scheme, hp.host, hp.port, hp.scope}
	snap.routesMu.Lock()
	if snap.routes[o] == hp {
		delete(snap.routes, o)
	}
	snap.routesMu.Unlock()
}
