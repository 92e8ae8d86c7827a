package pool

import (
	"errors"
	"fmt"
	"net"

	"github.com/poold/poold/dialer"
)

// SetPolicies validates s and makes it the policy set in force. In-flight
// requests finish under the policy they started with; every pool applies
// the new one at once where it can: idle conns over the new limits or past
// a shorter lifetime close, waiters dial if the limits grew, active conns
// past a shorter lifetime retire after their response, and TCP keep-alive
// is retuned on every open socket.
func (e *Engine) SetPolicies(s PolicySet) error {
	if err := s.Validate(); err != nil {
		return err
	}
	e.setMu.Lock()
	defer e.setMu.Unlock()
	next := newSnapshot(s.Clone())
	old := e.snap.Swap(next)
	close(old.changed)

	var closed, retuned int
	var retuneErrs []error
	for _, hp := range e.hostList() {
		r := hp.applyPolicy(next)
		closed += len(r.victims)
		closeConns(r.victims)
		for _, c := range r.retune {
			// SetKeepAlive on a conn closed meanwhile fails harmlessly.
			if err := dialer.SetKeepAlive(c.tcp, r.keepAlive); err != nil && !errors.Is(err, net.ErrClosed) {
				retuneErrs = append(retuneErrs, fmt.Errorf("conn %d: %w", c.id, err))
				continue
			}
			retuned++
		}
	}
	e.evictIdle()
	detail := fmt.Sprintf("closed=%d retuned=%d", closed, retuned)
	if len(retuneErrs) > 0 {
		detail += fmt.Sprintf(" retune_failed=%d: %v", len(retuneErrs), retuneErrs[0])
	}
	e.emit(nil, EventPolicyChanged, 0, "", detail)
	return nil
}

// applied is what a pool's policy change leaves to do outside its lock.
type applied struct {
	victims   []*conn
	retune    []*conn
	keepAlive net.KeepAliveConfig
}

// applyPolicy moves the pool to snap. Nothing in flight is dropped.
func (hp *hostPool) applyPolicy(snap *policySnapshot) applied {
	hp.mu.Lock()
	defer hp.mu.Unlock()
	var r applied
	if hp.snap == snap {
		return r
	}
	hp.snap = snap
	hp.eff = snap.set.Resolve(hp.host, hp.port)
	now := hp.e.now()

	// Idle conns that the new timeouts have expired go now.
	for _, c := range append([]*conn(nil), hp.idle...) {
		if reason := hp.expiredLocked(c, now); reason != "" {
			hp.removeLocked(c, reason)
			r.victims = append(r.victims, c)
		}
	}
	// Then the least recently used idle conns over the new limits.
	maxIdle := int(hp.eff.MaxIdleConnsPerHost)
	if hp.eff.DisableKeepAlives {
		maxIdle = 0
	}
	maxConns := int(hp.eff.MaxConnsPerHost)
	for len(hp.idle) > 0 && (len(hp.idle) > maxIdle || (maxConns > 0 && hp.active+len(hp.idle)+hp.dialing > maxConns)) {
		c := hp.idle[0]
		hp.removeLocked(c, ClosePolicy)
		r.victims = append(r.victims, c)
	}
	// Active conns past a shorter lifetime finish their response first.
	for c := range hp.conns {
		if c.state == ConnActive && c.retire == "" && hp.eff.MaxConnLifetime > 0 && now.Sub(c.created) >= hp.eff.MaxConnLifetime {
			c.retire = CloseMaxLifetime
		}
	}
	// Larger limits let waiters dial.
	hp.dialForWaitersLocked()

	r.keepAlive = hp.eff.KeepAlive
	for c := range hp.conns {
		if (c.state == ConnActive || c.state == ConnIdle) && c.tcp != nil && c.keepAlive != r.keepAlive {
			c.keepAlive = r.keepAlive
			r.retune = append(r.retune, c)
		}
	}
	return r
}
