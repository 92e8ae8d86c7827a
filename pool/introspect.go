package pool

import (
	"net"
	"sort"
)

// Hosts returns a snapshot of every host pool, sorted by key.
func (e *Engine) Hosts() []HostStats {
	list := e.hostList()
	out := make([]HostStats, 0, len(list))
	for _, hp := range list {
		out = append(out, hp.snapshot())
	}
	return out
}

// Host returns the pool named by key: a full key
// ("https://api.example.com:443"), "host:port", or a bare host name, which
// prefers https over http. ok is false when no pool matches.
func (e *Engine) Host(key string) (HostStats, bool) {
	var best *hostPool
	for _, hp := range e.hostList() {
		if hp.key == key {
			return hp.snapshot(), true
		}
		if hp.matches(key) && (best == nil || (best.scheme != "https" && hp.scheme == "https")) {
			best = hp
		}
	}
	if best == nil {
		return HostStats{}, false
	}
	return best.snapshot(), true
}

func (hp *hostPool) snapshot() HostStats {
	s := HostStats{Key: hp.key, Scheme: hp.scheme, Addr: hp.addr, Proxy: proxyLabel(hp.proxy)}
	hp.mu.Lock()
	s.Active, s.Idle, s.Dialing, s.Pending = hp.active, len(hp.idle), hp.dialing, hp.waiters.n
	s.Policy = hp.eff.Source
	s.H2Conns = len(hp.mux)
	for _, c := range hp.mux {
		s.Streams += c.streams
	}
	for _, c := range hp.idle {
		if c.h2 != nil {
			s.H2Conns++
		}
	}
	hp.mu.Unlock()
	s.Counters = hp.stats.snapshot()
	return s
}

// Conns returns a snapshot of the connections f selects, sorted by ID.
func (e *Engine) Conns(f ConnFilter) []ConnInfo {
	var out []ConnInfo
	for _, hp := range e.hostList() {
		if !hp.matches(f.Host) {
			continue
		}
		hp.mu.Lock()
		for c := range hp.conns {
			if ci := c.infoLocked(); f.State == 0 || ci.State == f.State {
				out = append(out, ci)
			}
		}
		hp.mu.Unlock()
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// CloseIdle closes the idle conns of the pools matching host ("" = all),
// counted as drain, and returns how many it closed.
func (e *Engine) CloseIdle(host string) int {
	n, _ := e.drain(host, false)
	return n
}

// Drain closes the idle conns of the pools matching host ("" = all) and
// retires the active ones after their current response, all counted as
// drain. New requests still get conns: Drain renews a pool, it does not
// block it.
func (e *Engine) Drain(host string) (closedIdle, draining int) {
	return e.drain(host, true)
}

func (e *Engine) drain(host string, active bool) (closedIdle, draining int) {
	for _, hp := range e.hostList() {
		if !hp.matches(host) {
			continue
		}
		hp.mu.Lock()
		victims := append([]*conn(nil), hp.idle...)
		for _, c := range victims {
			hp.removeLocked(c, CloseDrain)
		}
		var goAway []*conn
		if active {
			for c := range hp.conns {
				if c.state == ConnActive && c.retire == "" {
					c.retire = CloseDrain
					draining++
					if c.h2 != nil {
						goAway = append(goAway, c)
					}
				}
			}
		}
		hp.mu.Unlock()
		closeConns(victims)
		for _, c := range goAway {
			c.h2.goAway()
		}
		closedIdle += len(victims)
	}
	return closedIdle, draining
}

// splitHostPortLoose splits "host:port", accepting "[v6]:port".
func splitHostPortLoose(s string) (host, port string, err error) {
	return net.SplitHostPort(s)
}
