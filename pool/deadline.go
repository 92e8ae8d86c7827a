package pool

import "time"

// interrupt unblocks every read and write of x at once and keeps the conn
// from being reused. It is a no-op once x no longer owns the conn.
func (x *exchange) interrupt(reason CloseReason) {
	c := x.c
	c.ixMu.Lock()
	defer c.ixMu.Unlock()
	if c.owner != x || x.ixReason != "" {
		return
	}
	x.ixReason = reason
	c.nc.SetDeadline(aLongTimeAgo)
}

// setHeadDeadline sets the read deadline while the head is awaited,
// unless the exchange was interrupted or the head is already in.
func (x *exchange) setHeadDeadline(t time.Time) {
	c := x.c
	c.ixMu.Lock()
	defer c.ixMu.Unlock()
	if c.owner == x && x.ixReason == "" && !x.headDone {
		c.nc.SetReadDeadline(t)
	}
}

// armHeaderTimeout starts ResponseHeaderTimeout once the request is
// written.
func (x *exchange) armHeaderTimeout() {
	if d := x.eff.ResponseHeaderTimeout; d > 0 {
		x.setHeadDeadline(time.Now().Add(d))
	}
}

// headRead lifts the head deadline for the body.
func (x *exchange) headRead() {
	c := x.c
	c.ixMu.Lock()
	defer c.ixMu.Unlock()
	x.headDone = true
	if c.owner == x && x.ixReason == "" {
		c.nc.SetReadDeadline(time.Time{})
	}
}

// setBodyDeadline bounds a read of the body (the drain on early Close); it
// reports false if the exchange was interrupted.
func (x *exchange) setBodyDeadline(t time.Time) bool {
	c := x.c
	c.ixMu.Lock()
	defer c.ixMu.Unlock()
	if c.owner != x || x.ixReason != "" {
		return false
	}
	c.nc.SetReadDeadline(t)
	return true
}
