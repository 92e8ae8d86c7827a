package pool

import "sort"

// Totals returns the engine's counters in a form that never goes down, for
// metrics: one HostStats for each of the first Options.CountedHosts keys
// the engine has seen, sorted by key, summing the counters of the key's
// live pool and of its removed ones (gauges are the live pool's, zero
// when it has none), then one with Key "" for every other pool, live or
// removed. Unlike Hosts, a pool's removal changes none of these counts.
func (e *Engine) Totals() []HostStats {
	e.mu.RLock()
	live := make([]*hostPool, 0, len(e.hosts))
	for _, hp := range e.hosts {
		live = append(live, hp)
	}
	byKey := make(map[string]*HostStats, len(e.counted))
	for k, c := range e.counted {
		byKey[k] = &HostStats{Key: k, Counters: c.clone()}
	}
	other := &HostStats{Counters: e.other.clone()}
	e.mu.RUnlock()
	// Each pool is read after the removed ones were copied: a pool removed
	// in between is counted once, here, with its final counts.
	for _, hp := range live {
		s := hp.snapshot()
		sum := byKey[s.Key]
		if sum == nil {
			sum = other
		} else {
			sum.Scheme, sum.Addr, sum.Proxy, sum.Policy = s.Scheme, s.Addr, s.Proxy, s.Policy
		}
		sum.Active += s.Active
		sum.Idle += s.Idle
		sum.Dialing += s.Dialing
		sum.Pending += s.Pending
		sum.H2Conns += s.H2Conns
		sum.Streams += s.Streams
		sum.Counters.add(s.Counters)
	}
	out := make([]HostStats, 0, len(byKey)+1)
	for _, s := range byKey {
		out = append(out, *s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return append(out, *other)
}

// add adds k's counts to c.
func (c *HostCounters) add(k HostCounters) {
	c.Requests += k.Requests
	c.Dials += k.Dials
	c.DialErrors += k.DialErrors
	c.Reused += k.Reused
	c.Retries += k.Retries
	c.QueueOverflows += k.QueueOverflows
	c.Timeouts += k.Timeouts
	c.Errors += k.Errors
	c.Streams += k.Streams
	c.GoAways += k.GoAways
	c.RefusedStreams += k.RefusedStreams
	c.PingFailures += k.PingFailures
	if c.Closed == nil {
		c.Closed = make(map[CloseReason]uint64, len(k.Closed))
	}
	if c.TimeoutsByPhase == nil {
		c.TimeoutsByPhase = make(map[Phase]uint64, len(k.TimeoutsByPhase))
	}
	for r, n := range k.Closed {
		c.Closed[r] += n
	}
	for p, n := range k.TimeoutsByPhase {
		c.TimeoutsByPhase[p] += n
	}
}

// clone returns a copy of c that shares no map with it.
func (c *HostCounters) clone() HostCounters {
	var out HostCounters
	out.add(*c)
	return out
}
