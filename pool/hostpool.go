package pool

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// hostPool holds the connections to one origin through one proxy (or
// none): an idle list, the active conns, in-flight dials and a FIFO of
// requests waiting for a conn.
//
// Invariant: the idle list is empty whenever the queue is not, because a
// conn going idle is first offered to the oldest waiter.
type hostPool struct {
	// Set by newHostPool, read-only after.
	e      *Engine
	key    string
	scheme string
	host   string // lowercase, no brackets
	port   string
	addr   string       // host:port
	proxy  *url.URL     // nil when direct
	scope  *EgressScope // the egress rules its conns are dialled under; nil for the dialer's own

	// viaHTTPProxy says requests go to the proxy itself, in absolute
	// form; https goes through a CONNECT tunnel instead. proxyAuth is the
	// Proxy-Authorization they carry, from the proxy URL's credentials.
	viaHTTPProxy bool
	proxyAuth    string

	stats    hostCounters // atomics
	inflight atomic.Int64 // requests between enter and the end of roundTrip

	mu            sync.Mutex // guards the fields below and the hostPool fields of each conn
	snap          *policySnapshot
	eff           Effective
	conns         map[*conn]struct{} // every conn not yet closed, dialing ones included
	idle          []*conn            // least recently used first
	active        int                // conns checked out, retiring ones included
	dialing       int
	waiters       wantQueue
	waitingNoDial int  // queued requests with no dial of their own: what MaxPendingRequests bounds
	closed        bool // the engine closed: no dials, no idling
	// removed says the pool has left the engine's map: a request that
	// looked it up before must look again. unusedSince and unusedRequests
	// are when the sweeper first found the pool unused, and the request
	// count then; a request since resets them.
	removed        bool
	unusedSince    time.Time
	unusedRequests uint64
	// mux holds the active HTTP/2 conns, which take more streams while
	// they have room; learned is what the host's last dial spoke.
	mux     []*conn
	learned learnedProto
	// peerMaxHint is the stream limit the host's last HTTP/2 conn
	// announced, 0 before one did.
	peerMaxHint int
}

func newHostPool(e *Engine, key, scheme, host, port string, proxy *url.URL, snap *policySnapshot, eff Effective) *hostPool {
	hp := &hostPool{
		e: e, key: key, scheme: scheme, host: host, port: port, addr: hostPort(host, port), proxy: proxy,
		snap: snap, eff: eff, conns: make(map[*conn]struct{}),
	}
	if proxy != nil && scheme == "http" {
		hp.viaHTTPProxy, hp.proxyAuth = true, proxyAuth(proxy)
	}
	return hp
}

// enter admits a request to the pool and returns the policy in force,
// which the request reads once and keeps; ok is false when the pool was
// removed. The caller ends the visit with hp.inflight.Add(-1).
func (hp *hostPool) enter() (eff Effective, ok bool) {
	hp.mu.Lock()
	defer hp.mu.Unlock()
	if hp.removed {
		return Effective{}, false
	}
	// Counted and admitted under the lock the sweeper removes pools
	// under, so a pool is never removed under a request.
	hp.stats.requests.Add(1)
	hp.inflight.Add(1)
	return hp.eff, true
}

// matches reports whether the pool answers to q: its full key,
// "host:port" or a bare host name (any scheme and port).
func (hp *hostPool) matches(q string) bool {
	if q == "" || q == hp.key {
		return true
	}
	if strings.Contains(q, "://") {
		return false
	}
	if h, p, err := splitHostPortLoose(q); err == nil {
		return strings.EqualFold(h, hp.host) && p == hp.port
	}
	return strings.EqualFold(strings.Trim(q, "[]"), hp.host)
}

// getConn returns a conn for one request: a live idle one, else a fresh
// dial if the host has room, else the first conn to come free. Errors are
// *Error values.
func (hp *hostPool) getConn(ctx context.Context, tm *timing) (*conn, error) {
	start := time.Now()
	if ctx.Err() != nil {
		phase, err := ctxError(ctx, PhaseQueue)
		return nil, &Error{Phase: phase, Host: hp.key, Err: err}
	}
	for {
		hp.mu.Lock()
		if hp.closed {
			hp.mu.Unlock()
			return nil, &Error{Phase: PhaseQueue, Host: hp.key, Err: ErrClosed}
		}
		if c := hp.takeStreamLocked(); c != nil {
			hp.mu.Unlock()
			tm.gotConn(c, 0, start)
			return c, nil
		}
		c, idleFor, victims := hp.takeIdleLocked()
		if c != nil {
			hp.mu.Unlock()
			closeConns(victims)
			// The liveness peek is I/O, so it runs outside the lock on a
			// conn already marked active; a dead one is closed and the
			// search goes on.
			if reason, ok := c.checkAlive(); !ok {
				hp.discard(c, reason)
				continue
			}
			tm.gotConn(c, idleFor, start)
			return c, nil
		}
		// Nothing idle: dial if there is room, else wait. Deciding under
		// the same lock as the idle search means no conn can go idle
		// unseen in between.
		w := newWantConn(ctx)
		// Whatever holds the request back, a full host or the dial cap, it
		// counts against MaxPendingRequests while it waits, so the bound is
		// checked before it joins: against a black-holed upstream the
		// dial cap stays full for a whole dial timeout.
		cover := hp.h2CoverLocked()
		switch {
		case hp.waitingNoDial < cover:
			// A dial in flight will bring streams enough for it.
			hp.enqueueLocked(w)
		case hp.canDialLocked() && !hp.strictFullLocked():
			hp.startDialLocked(w)
			hp.enqueueLocked(w)
		case hp.waitingNoDial-cover >= int(hp.eff.MaxPendingRequests):
			hp.mu.Unlock()
			closeConns(victims)
			hp.stats.queueOverflows.Add(1)
			hp.e.emit(hp, EventQueueOverflow, 0, "", "")
			return nil, &Error{Phase: PhaseQueue, Host: hp.key, Err: ErrQueueFull}
		case !hp.closed && !hp.atConnLimitLocked():
			hp.enqueueLocked(w)
			hp.e.emit(hp, EventQueued, 0, "", "waiting for a dial slot")
		default:
			hp.enqueueLocked(w)
			hp.e.emit(hp, EventQueued, 0, "", "")
		}
		snap := hp.e.snap.Load()
		hp.mu.Unlock()
		closeConns(victims)
		c, err := hp.wait(ctx, w, snap)
		if err != nil {
			return nil, err
		}
		tm.gotConn(c, 0, start)
		return c, nil
	}
}

// wait parks until w is served or ctx ends. A policy swap wakes it to
// re-read the limits: a larger MaxConnsPerHost lets it dial.
func (hp *hostPool) wait(ctx context.Context, w *wantConn, snap *policySnapshot) (*conn, error) {
	for {
		select {
		case <-w.ready:
			if w.err != nil {
				return nil, w.err
			}
			if ctx.Err() == nil {
				return w.c, nil
			}
			// Served and canceled at once: the conn is still good for
			// the next request.
			hp.release(w.c, "")
			phase, err := ctxError(ctx, PhaseQueue)
			return nil, &Error{Phase: phase, Host: hp.key, Err: err}
		case <-ctx.Done():
			hp.abandon(w)
			phase, err := ctxError(ctx, PhaseQueue)
			return nil, &Error{Phase: phase, Host: hp.key, Err: err}
		case <-snap.changed:
			snap = hp.e.snap.Load()
			hp.mu.Lock()
			hp.dialForWaitersLocked()
			hp.mu.Unlock()
		}
	}
}

// abandon takes w out of the queue at once. If a conn reached w in the
// meantime it goes back to the pool unused.
func (hp *hostPool) abandon(w *wantConn) {
	hp.mu.Lock()
	if !w.done {
		w.done = true
		hp.dequeueLocked(w)
		hp.mu.Unlock()
		return
	}
	c := w.c
	hp.mu.Unlock()
	if c != nil {
		hp.release(c, "")
	}
}

// takeIdleLocked pops the most recently used idle conn that has not
// expired, marking it active. Expired ones are removed and returned as
// victims for the caller to close after unlocking.
func (hp *hostPool) takeIdleLocked() (c *conn, idleFor time.Duration, victims []*conn) {
	now := hp.e.now()
	for len(hp.idle) > 0 {
		c := hp.idle[len(hp.idle)-1]
		if reason := hp.expiredLocked(c, now); reason != "" {
			hp.removeLocked(c, reason)
			victims = append(victims, c)
			continue
		}
		if !c.proto.canTakeRequestLocked() {
			panic(fmt.Sprintf("pool: internal error: idle conn %d cannot take a request", c.id))
		}
		hp.idle = hp.idle[:len(hp.idle)-1]
		hp.e.idle.remove(c)
		hp.active++
		c.state = ConnActive
		c.lastUsed = now
		if c.h2 != nil {
			hp.activateH2Locked(c)
		}
		return c, now.Sub(c.idleSince), victims
	}
	return nil, 0, victims
}

// expiredLocked says why an idle conn must not be used, or "".
func (hp *hostPool) expiredLocked(c *conn, now time.Time) CloseReason {
	switch {
	case c.retire != "":
		return c.retire
	case hp.eff.MaxConnLifetime > 0 && now.Sub(c.created) >= hp.eff.MaxConnLifetime:
		return CloseMaxLifetime
	case hp.eff.IdleConnTimeout > 0 && now.Sub(c.idleSince) >= hp.eff.IdleConnTimeout:
		return CloseIdleTimeout
	case hp.scope != nil && hp.proxy == nil && hp.scope.deniesConn(hp.host, c):
		return CloseEgress
	}
	return ""
}

// handOffLocked gives a free conn to the oldest waiter, or puts it in the
// idle list. It returns conns to close after unlocking.
func (hp *hostPool) handOffLocked(c *conn) []*conn {
	for w := hp.firstWaiterLocked(); w != nil; w = hp.firstWaiterLocked() {
		if hp.deliverLocked(w, c, nil) {
			return nil
		}
	}
	return hp.putIdleLocked(c)
}

// putIdleLocked moves an active conn to the idle list, within the
// per-host idle limit: over it, the least recently used idle conn goes.
func (hp *hostPool) putIdleLocked(c *conn) []*conn {
	max := int(hp.eff.MaxIdleConnsPerHost)
	if max == 0 || hp.eff.DisableKeepAlives {
		hp.removeLocked(c, CloseIdleLimit)
		return []*conn{c}
	}
	var victims []*conn
	for len(hp.idle) >= max {
		old := hp.idle[0]
		hp.removeLocked(old, CloseIdleLimit)
		victims = append(victims, old)
	}
	now := hp.e.now()
	hp.active--
	c.state = ConnIdle
	c.idleSince, c.lastUsed = now, now
	hp.idle = append(hp.idle, c)
	hp.e.idle.add(c)
	hp.e.emit(hp, EventIdle, c.id, "", "")
	return victims
}

// removeLocked takes c out of the pool for good and counts the reason.
// The caller closes it after unlocking.
func (hp *hostPool) removeLocked(c *conn, reason CloseReason) {
	switch c.state {
	case ConnActive:
		hp.active--
	case ConnIdle:
		i := indexOf(hp.idle, c)
		if i < 0 {
			panic("pool: internal error: idle conn missing from the idle list")
		}
		hp.idle = append(hp.idle[:i], hp.idle[i+1:]...)
		hp.e.idle.remove(c)
	default:
		panic("pool: internal error: removing a conn in state " + c.state.String())
	}
	if c.h2 != nil {
		hp.dropMuxLocked(c)
		hp.e.h2conns.remove(c)
	}
	c.state = ConnClosing
	c.closeReason = reason
	delete(hp.conns, c)
	hp.stats.closed[reasonIndex(reason)].Add(1)
	hp.e.emit(hp, EventClosed, c.id, reason, "")
	hp.dialForWaitersLocked()
}

// release takes back a conn from a finished request. reason says why it
// cannot be reused, or "" if it can; the policy may still retire it.
func (hp *hostPool) release(c *conn, reason CloseReason) {
	if c.h2 != nil {
		hp.releaseStream(c, reason, false)
		return
	}
	now := hp.e.now()
	hp.mu.Lock()
	if c.state == ConnClosing {
		// Closed under the request (engine Close); already counted.
		hp.mu.Unlock()
		c.closeNow()
		return
	}
	if c.state != ConnActive {
		panic("pool: internal error: releasing a conn in state " + c.state.String())
	}
	c.lastUsed = now
	if reason == "" {
		reason = hp.retireReasonLocked(c, now)
	}
	if reason != "" {
		hp.removeLocked(c, reason)
		hp.mu.Unlock()
		c.closeNow()
		return
	}
	victims := hp.handOffLocked(c)
	hp.mu.Unlock()
	closeConns(victims)
	hp.e.evictIdle()
}

// retireReasonLocked says why a reusable conn must not serve again, or "".
func (hp *hostPool) retireReasonLocked(c *conn, now time.Time) CloseReason {
	switch {
	case c.retire != "":
		return c.retire
	case hp.closed:
		return CloseShutdown
	case hp.scope != nil && hp.proxy == nil && hp.scope.deniesConn(hp.host, c):
		return CloseEgress
	case hp.eff.DisableKeepAlives:
		return ClosePolicy
	case hp.eff.MaxRequestsPerConn > 0 && c.requests.Load() >= uint64(hp.eff.MaxRequestsPerConn):
		return CloseMaxRequests
	case hp.eff.MaxConnLifetime > 0 && now.Sub(c.created) >= hp.eff.MaxConnLifetime:
		return CloseMaxLifetime
	case hp.eff.MaxConnsPerHost > 0 && hp.active+len(hp.idle)+hp.dialing > int(hp.eff.MaxConnsPerHost):
		// MaxConnsPerHost shrank below what is open: excess conns leave
		// as their requests end.
		return ClosePolicy
	}
	return ""
}

// discard closes a checked-out conn found dead before use.
func (hp *hostPool) discard(c *conn, reason CloseReason) {
	hp.mu.Lock()
	if c.state != ConnClosing {
		hp.removeLocked(c, reason)
	}
	hp.mu.Unlock()
	c.closeNow()
}

// detach hands a conn to the caller for good (101 Switching Protocols):
// the pool forgets it without closing it.
func (hp *hostPool) detach(c *conn) {
	hp.mu.Lock()
	if c.state != ConnClosing {
		hp.removeLocked(c, CloseUnusable)
	}
	hp.mu.Unlock()
}

// shutdown closes every conn and fails every waiter; in-flight requests
// see their conn closed under them.
func (hp *hostPool) shutdown() {
	hp.mu.Lock()
	hp.closed = true
	var victims []*conn
	for c := range hp.conns {
		if c.state == ConnActive || c.state == ConnIdle {
			hp.removeLocked(c, CloseShutdown)
			victims = append(victims, c)
		}
	}
	for w := hp.waiters.head; w != nil; w = hp.waiters.head {
		hp.deliverLocked(w, nil, &Error{Phase: PhaseQueue, Host: hp.key, Err: ErrClosed})
	}
	hp.mu.Unlock()
	closeConns(victims)
}

// sweep closes idle conns past their idle timeout or lifetime, and says
// whether the pool has been unused for idleHost (never, when negative).
func (hp *hostPool) sweep(now time.Time, idleHost time.Duration) (removable bool) {
	hp.mu.Lock()
	var victims []*conn
	for _, c := range append([]*conn(nil), hp.idle...) {
		if reason := hp.expiredLocked(c, now); reason != "" {
			hp.removeLocked(c, reason)
			victims = append(victims, c)
		}
	}
	removable = idleHost >= 0 && hp.idleLongLocked(now, idleHost)
	hp.mu.Unlock()
	closeConns(victims)
	return removable
}

func closeConns(cs []*conn) {
	for _, c := range cs {
		c.closeNow()
	}
}

func indexOf(cs []*conn, c *conn) int {
	for i, x := range cs {
		if x == c {
			return i
		}
	}
	return -1
}
