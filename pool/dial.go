package pool

import (
	"context"
	"fmt"
	"time"

	"github.com/poold/poold/dialer"
)

// canDialLocked reports whether MaxConnsPerHost leaves room for one more
// conn, dials in flight counted, and the engine's dial cap for one more dial.
func (hp *hostPool) canDialLocked() bool {
	return !hp.closed && hp.dialing < hp.e.maxDials && !hp.atConnLimitLocked()
}

// atConnLimitLocked reports whether the host holds MaxConnsPerHost conns,
// dials in flight counted.
func (hp *hostPool) atConnLimitLocked() bool {
	max := int(hp.eff.MaxConnsPerHost)
	return max > 0 && hp.active+len(hp.idle)+hp.dialing >= max
}

// startDialLocked dials on behalf of w in a goroutine owned by the engine.
// The placeholder conn makes the dial visible to Conns.
func (hp *hostPool) startDialLocked(w *wantConn) {
	if hp.closed {
		panic("pool: internal error: dial started on a closed pool")
	}
	c := &conn{id: hp.e.connID.Add(1), hp: hp, state: ConnDialing, created: hp.e.now()}
	hp.conns[c] = struct{}{}
	hp.dialing++
	hp.setDialingLocked(w, true)
	hp.stats.dials.Add(1)
	eff := hp.eff
	hp.e.wg.Add(1)
	go hp.dial(c, w, eff)
}

// dialForWaitersLocked starts dials for queued requests while the host has
// room: after a conn closes, a dial fails or the limits grow.
func (hp *hostPool) dialForWaitersLocked() {
	for hp.canDialLocked() && hp.waitingNoDial > hp.h2CoverLocked() && !hp.strictFullLocked() {
		w := hp.firstWaiterWithoutDialLocked()
		if w == nil {
			return
		}
		hp.startDialLocked(w)
	}
}

// dial runs detached from the caller's cancellation: if the caller leaves,
// the conn still serves the next request. Engine Close aborts it.
func (hp *hostPool) dial(c *conn, w *wantConn, eff Effective) {
	defer hp.e.wg.Done()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(w.ctx), eff.DialTimeout+eff.TLSHandshakeTimeout)
	defer cancel()
	stop := context.AfterFunc(hp.e.ctx, cancel)
	defer stop()
	if hp.scope != nil {
		ctx = dialer.WithEgress(ctx, hp.scope.checker())
	}
	wantsH2, priorKnowledge := hp.wantsH2(eff), hp.h2PriorKnowledge(eff)
	t := dialer.Target{Host: hp.host, Port: hp.port, TLS: hp.scheme == "https", Proxy: hp.proxy}
	if t.TLS {
		t.NextProtos = nextProtos(wantsH2, eff.Protocols)
	}
	start := time.Now()
	dc, err := hp.e.dialer.Dial(ctx, t, dialer.Options{
		DialTimeout:         eff.DialTimeout,
		TLSHandshakeTimeout: eff.TLSHandshakeTimeout,
		KeepAlive:           eff.KeepAlive,
	})
	if err != nil {
		hp.dialFailed(c, w, err)
		return
	}
	var h2 *h2conn
	if dc.TLS != nil && dc.TLS.NegotiatedProtocol == "h2" || dc.TLS == nil && priorKnowledge {
		h2, err = hp.startH2(c, dc, eff)
	} else if wantsH2 && eff.Protocols == ProtocolsH2 && dc.TLS != nil {
		err = fmt.Errorf("%w: the upstream did not agree to HTTP/2 (ALPN %q) and the policy allows nothing else", ErrProtocol, dc.TLS.NegotiatedProtocol)
		_ = dc.Conn.Close()
	}
	if err != nil {
		hp.dialFailed(c, w, err)
		return
	}
	hp.mu.Lock()
	c.setDialed(dc, eff.KeepAlive, start) // under the lock: Conns reads the placeholder
	if h2 != nil {
		c.h2, c.proto = h2, h2
		hp.learned = learnedH2
		if v := c.h2PeerMax.Load(); v&h2PeerMaxSeen != 0 {
			hp.peerMaxHint = int(uint32(v))
		}
		hp.e.h2conns.add(c)
	} else {
		hp.learned = learnedHTTP1
	}
	hp.dialing--
	hp.setDialingLocked(w, false)
	if hp.closed {
		hp.e.h2conns.remove(c)
		delete(hp.conns, c)
		c.state = ConnClosing
		hp.stats.closed[reasonIndex(CloseShutdown)].Add(1)
		hp.e.emit(hp, EventClosed, c.id, CloseShutdown, "")
		hp.mu.Unlock()
		c.closeNow()
		return
	}
	c.state = ConnActive
	hp.active++
	hp.e.emit(hp, EventDialed, c.id, "", c.remote)
	var victims []*conn
	switch {
	case h2 != nil:
		hp.activateH2Locked(c)
		if !hp.deliverLocked(w, c, nil) {
			c.streams--
			c.h2Taken--
		}
		hp.serveWaitersLocked(c)
		if c.streams == 0 {
			hp.dropMuxLocked(c)
			victims = hp.putIdleLocked(c)
		}
	case !hp.deliverLocked(w, c, nil):
		victims = hp.handOffLocked(c)
	}
	// The dial slot this one held may be what a waiter was missing.
	hp.dialForWaitersLocked()
	hp.mu.Unlock()
	closeConns(victims)
	hp.e.evictIdle()
}

// dialFailed hands the error to w, if it still waits, and the freed slot
// to the next waiter.
func (hp *hostPool) dialFailed(c *conn, w *wantConn, err error) {
	if hp.e.ctx.Err() != nil {
		err = joinClosed(err)
	}
	perr := &Error{Phase: dialPhase(err), Host: hp.key, Err: err}
	hp.stats.dialErrors.Add(1)
	hp.mu.Lock()
	delete(hp.conns, c)
	hp.dialing--
	hp.setDialingLocked(w, false)
	// If w left or was served by another conn, the error has no caller; it
	// is still counted and published.
	hp.deliverLocked(w, nil, perr)
	hp.dialForWaitersLocked()
	hp.e.emit(hp, EventDialFailed, c.id, "", err.Error())
	hp.mu.Unlock()
}

// nextProtos is the ALPN offer for a TLS conn.
func nextProtos(wantsH2 bool, p Protocols) []string {
	switch {
	case !wantsH2:
		return []string{"http/1.1"}
	case p == ProtocolsH2:
		return []string{"h2"}
	}
	return []string{"h2", "http/1.1"}
}

// startH2 starts HTTP/2 on a fresh conn and waits for the peer's first
// SETTINGS, so that the conn's stream limit is known before any request
// is sent on it: a burst sent before it would have its excess refused.
func (hp *hostPool) startH2(c *conn, dc *dialer.Conn, eff Effective) (*h2conn, error) {
	c.nc = dc.Conn // the wire reads it; setDialed sets it again under the lock
	c.h2Settings = make(chan struct{})
	w := newH2Wire(c, eff.H2PingTimeout)
	cl, err := hp.e.h2.newClient(w, eff.MaxResponseHeaderBytes)
	if err != nil {
		_ = w.Close()
		return nil, err
	}
	h := &h2conn{c: c, cl: cl, w: w}
	t := time.NewTimer(h2SettingsWait(eff))
	defer t.Stop()
	select {
	case <-c.h2Settings:
		return h, nil
	case <-t.C:
		err = fmt.Errorf("%w: no HTTP/2 SETTINGS from the upstream within %v", ErrProtocol, h2SettingsWait(eff))
	case <-w.readEnd:
		// x/net gave up on what the upstream sent (an HTTP/1.1 answer,
		// a frame out of place) or the upstream closed the conn.
		err = fmt.Errorf("%w: the upstream ended HTTP/2 before its SETTINGS: %w", ErrProtocol, w.readErr)
	case <-hp.e.ctx.Done():
		err = ErrClosed
	}
	_ = w.Close()
	return nil, err
}
