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
	x.deadlineLocked(c.nc.SetDeadline, aLongTimeAgo)
}

// deadlineLocked applies a deadline. A socket that refuses one is broken,
// and closing it is then the only way to keep I/O from blocking without
// bound. c.ixMu is held.
func (x *exchange) deadlineLocked(set func(time.Time) error, t time.Time) {
	if err := set(t); err != nil {
		if x.ixReason == "" {
			x.ixReason = CloseError
		}
		x.c.closeNow()
	}
}

// setHeadDeadline sets the read deadline while the head is awaited,
// unless the exchange was interrupted or the head is already in.
func (x *exchange) setHeadDeadline(t time.Time) {
	c := x.c
	c.ixMu.Lock()
	defer c.ixMu.Unlock()
	if c.owner == x && x.ixReason == "" && !x.headDone {
		x.deadlineLocked(c.nc.SetReadDeadline, t)
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
		x.deadlineLocked(c.nc.SetReadDeadline, time.Time{})
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
	x.deadlineLocked(c.nc.SetReadDeadline, t)
	return x.ixReason == ""
}
