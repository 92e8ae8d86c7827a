package pool

import (
	"strconv"
	"time"
)

// How a host pool shares HTTP/2 conns. A conn with streams is active and
// in hp.mux, in the order it became active; one with none is idle like an
// HTTP/1.1 conn, so idle timeouts, idle limits and the LRU apply to it
// unchanged. hp.active counts a conn once however many streams it has.

// learnedProto is what the host's last dial spoke, which decides whether a
// dial in flight may be counted as many streams.
type learnedProto uint8

const (
	learnedUnknown learnedProto = iota
	learnedHTTP1
	learnedH2
)

// wantsH2 reports whether new conns to the host may speak HTTP/2 under eff.
func (hp *hostPool) wantsH2(eff Effective) bool {
	if hp.viaHTTPProxy {
		return false // the proxy speaks HTTP/1.1 for us
	}
	switch eff.Protocols {
	case ProtocolsHTTP1:
		return false
	case ProtocolsH2, ProtocolsH2C:
		return true
	}
	return hp.scheme == "https"
}

// h2PriorKnowledge reports whether a plaintext conn starts in HTTP/2.
func (hp *hostPool) h2PriorKnowledge(eff Effective) bool {
	return hp.scheme == "http" && !hp.viaHTTPProxy &&
		(eff.Protocols == ProtocolsH2 || eff.Protocols == ProtocolsH2C)
}

// streamCapLocked is the policy's per-conn stream cap.
func (hp *hostPool) streamCapLocked() int {
	if n := hp.eff.MaxConcurrentStreams; n > 0 {
		return int(n)
	}
	return int(^uint32(0) >> 1)
}

// streamLimitLocked is how many streams c may carry now. A conn is
// offered only once the peer's SETTINGS came, so its limit is known.
func (hp *hostPool) streamLimitLocked(c *conn) int {
	return min(hp.streamCapLocked(), int(uint32(c.h2PeerMax.Load())))
}

// canStreamLocked reports whether c may take one more stream.
func (hp *hostPool) canStreamLocked(c *conn) bool {
	if c.state != ConnActive || c.retire != "" || c.h2Blocked || c.h2GoAway.Load() != 0 ||
		c.streams >= hp.streamLimitLocked(c) {
		return false
	}
	// The conn's budget of requests and of age: met, it takes no new
	// stream and retires when its last one ends.
	if n := hp.eff.MaxRequestsPerConn; n > 0 && c.h2Taken >= uint64(n) {
		return false
	}
	if d := hp.eff.MaxConnLifetime; d > 0 && hp.e.now().Sub(c.created) >= d {
		return false
	}
	// Egress rules that now deny its address stop new streams at once,
	// as they stop the checkout of an idle conn.
	if hp.scope != nil && hp.proxy == nil && hp.scope.deniesConn(hp.host, c) {
		c.retire = CloseEgress
		return false
	}
	return true
}

// addStreamLocked counts a stream handed out on c.
func (hp *hostPool) addStreamLocked(c *conn) {
	c.streams++
	c.h2Taken++
}

// takeStreamLocked claims a stream on the first active HTTP/2 conn with
// room: the one busy longest, so that streams pack onto few conns and the
// others can idle out.
func (hp *hostPool) takeStreamLocked() *conn {
	for _, c := range hp.mux {
		if hp.canStreamLocked(c) {
			hp.addStreamLocked(c)
			c.lastUsed = hp.e.now()
			return c
		}
	}
	return nil
}

// h2CoverLocked is how many waiting requests the HTTP/2 capacity already
// on its way will serve: dials in flight that may come back HTTP/2 (a
// dial stays in flight until the peer's SETTINGS came). Each counts as the
// limit the host's last conn announced or, for a host not heard from yet,
// min(cap, 1000), the limit x/net assumes of a peer that states none.
// Requests it covers wait instead of dialing, so a burst to a cold host
// opens one conn while the burst fits its limit, and then as many more
// as the limit it announced needs. No conn carries a stream before its
// SETTINGS, so none goes over the peer's limit meanwhile.
func (hp *hostPool) h2CoverLocked() int {
	if hp.learned == learnedHTTP1 || !hp.wantsH2(hp.eff) {
		return 0
	}
	cap := hp.streamCapLocked()
	per := min(cap, h2DefaultPeerMax)
	if hp.peerMaxHint > 0 {
		// The host's last conn told its limit; the next one likely
		// says the same.
		per = min(cap, hp.peerMaxHint)
	}
	return hp.dialing * per
}

// strictFullLocked reports whether the policy makes a request wait for a
// stream on the host's HTTP/2 conns instead of dialing another.
func (hp *hostPool) strictFullLocked() bool {
	if !hp.eff.StrictMaxConcurrentStreams {
		return false
	}
	for _, c := range hp.mux {
		if c.retire == "" && c.h2GoAway.Load() == 0 {
			return true
		}
	}
	return false
}

// serveWaitersLocked hands c's free streams to the oldest waiters.
func (hp *hostPool) serveWaitersLocked(c *conn) {
	for w := hp.firstWaiterLocked(); w != nil && hp.canStreamLocked(c); w = hp.firstWaiterLocked() {
		hp.addStreamLocked(c)
		if !hp.deliverLocked(w, c, nil) {
			c.streams--
			c.h2Taken--
		}
	}
}

// activateH2Locked makes an idle or fresh HTTP/2 conn active with one
// stream, the caller's.
func (hp *hostPool) activateH2Locked(c *conn) {
	c.streams = 1
	c.h2Taken++
	c.lastUsed = hp.e.now()
	hp.mux = append(hp.mux, c)
}

func (hp *hostPool) dropMuxLocked(c *conn) {
	if i := indexOf(hp.mux, c); i >= 0 {
		hp.mux = append(hp.mux[:i], hp.mux[i+1:]...)
	}
}

// releaseStream gives back a stream of c. reason says the conn is broken;
// blocked says x/net refused the stream though the pool's count had room
// (streams it reset and the peer has not yet confirmed hold their slots),
// so c takes no more until one of its streams ends.
func (hp *hostPool) releaseStream(c *conn, reason CloseReason, blocked bool) {
	now := hp.e.now()
	hp.mu.Lock()
	c.streams--
	if c.streams < 0 {
		hp.mu.Unlock()
		panic("pool: internal error: conn " + strconv.FormatUint(c.id, 10) + " released more streams than it took")
	}
	if c.state == ConnClosing {
		hp.mu.Unlock()
		return
	}
	c.lastUsed = now
	c.h2Blocked = blocked
	if reason == "" && c.h2 != nil {
		reason = c.h2.brokenReason()
	}
	if reason != "" && c.retire == "" {
		c.retire = reason
	}
	if c.retire == "" {
		c.retire = hp.retireReasonLocked(c, now)
	}
	switch {
	case c.retire != "" && c.streams == 0:
		hp.dropMuxLocked(c)
		hp.removeLocked(c, c.retire)
		hp.mu.Unlock()
		c.closeNow()
		return
	case c.retire != "":
		// Its other streams finish; it takes no new ones.
		hp.dialForWaitersLocked()
		hp.mu.Unlock()
		return
	}
	hp.serveWaitersLocked(c)
	var victims []*conn
	if c.streams == 0 {
		hp.dropMuxLocked(c)
		victims = hp.putIdleLocked(c)
	}
	hp.dialForWaitersLocked()
	hp.mu.Unlock()
	closeConns(victims)
	hp.e.evictIdle()
}

// h2Notify is called by the conn's reader when the peer's SETTINGS or
// GOAWAY arrive: a GOAWAY retires the conn at once (its streams below the
// last stream id finish), SETTINGS may give waiters room.
func (c *conn) h2Notify() {
	hp := c.hp
	hp.mu.Lock()
	if c.state == ConnClosing || c.state == ConnDialing {
		hp.mu.Unlock()
		return
	}
	if g := c.h2GoAway.Load(); g != 0 && !c.h2GoAwayCounted {
		c.h2GoAwayCounted = true
		hp.stats.goAways.Add(1)
		hp.e.emit(hp, EventGoAway, c.id, "", h2CodeName(uint32(g)))
		if c.retire == "" {
			c.retire = CloseGoAway
		}
		if c.state == ConnIdle {
			hp.removeLocked(c, CloseGoAway)
			hp.mu.Unlock()
			c.closeNow()
			return
		}
		hp.dialForWaitersLocked()
		hp.mu.Unlock()
		return
	}
	if c.state == ConnActive {
		hp.serveWaitersLocked(c)
	}
	hp.mu.Unlock()
}

// goAwayCode is the code of the GOAWAY the peer sent, or 0.
func (c *conn) goAwayCode() uint32 { return uint32(c.h2GoAway.Load()) }

// brokenReason says why x/net's conn can take no more streams, or "".
func (h *h2conn) brokenReason() CloseReason {
	if h.c.h2GoAway.Load() != 0 {
		return CloseGoAway
	}
	if st := h.cl.state(); st.Closed {
		return CloseServerClosed
	} else if st.Closing {
		return CloseUnusable
	}
	return ""
}

// checkAlive for an idle HTTP/2 conn asks x/net, since the socket may
// well hold frames (a PING, a SETTINGS) that are not a sign of trouble.
func (h *h2conn) checkAlive() (CloseReason, bool) {
	if r := h.brokenReason(); r != "" {
		return r, false
	}
	return "", true
}

// h2SettingsWait bounds the wait for the peer's first SETTINGS after the
// preface: RFC 9113 section 3.4 makes it the first frame a server sends.
func h2SettingsWait(eff Effective) time.Duration {
	return min(eff.H2PingTimeout, eff.TLSHandshakeTimeout)
}

// goAway tells the peer, with GOAWAY, that a retiring conn opens no more
// streams; x/net closes it when its last stream ends, as the pool does.
// The goroutine is the engine's and ends with the conn.
func (h *h2conn) goAway() {
	e := h.c.hp.e
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		_ = h.cl.shutdown(e.ctx)
	}()
}
