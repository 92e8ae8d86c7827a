package pool

import (
	"context"
	"sync"
	"time"
)

// h2PingTick is how often the pinger looks at the HTTP/2 conns. It bounds
// how late a PING goes out, not how many: a conn gets one only when it has
// read nothing for its policy's H2ReadIdleTimeout.
const h2PingTick = 100 * time.Millisecond

// h2Registry lists the open HTTP/2 conns of every host for the pinger,
// so that it never walks the host pools.
type h2Registry struct {
	mu    sync.Mutex
	conns map[*conn]struct{}
}

func (r *h2Registry) add(c *conn) {
	r.mu.Lock()
	if r.conns == nil {
		r.conns = make(map[*conn]struct{})
	}
	r.conns[c] = struct{}{}
	r.mu.Unlock()
}

func (r *h2Registry) remove(c *conn) {
	r.mu.Lock()
	delete(r.conns, c)
	r.mu.Unlock()
}

func (r *h2Registry) list(dst []*conn) []*conn {
	r.mu.Lock()
	defer r.mu.Unlock()
	for c := range r.conns {
		dst = append(dst, c)
	}
	return dst
}

// pinger is one goroutine per engine, on a ticker: no timer per conn, and
// the policy is read at every tick, so a change applies to open conns.
func (e *Engine) pinger() {
	defer e.wg.Done()
	t := time.NewTicker(h2PingTick)
	defer t.Stop()
	var list []*conn
	for {
		select {
		case <-e.ctx.Done():
			return
		case <-t.C:
		}
		list = e.h2conns.list(list[:0])
		now := time.Now()
		for _, c := range list {
			c.hp.mu.Lock()
			readIdle, timeout := c.hp.eff.H2ReadIdleTimeout, c.hp.eff.H2PingTimeout
			open := c.state == ConnActive || c.state == ConnIdle
			c.hp.mu.Unlock()
			if !open {
				continue
			}
			h := c.h2
			h.w.writeTimeout.Store(int64(timeout))
			if readIdle <= 0 || now.Sub(time.Unix(0, h.w.lastRead.Load())) < readIdle {
				continue
			}
			h.pingMu.Lock()
			start := !h.pinging
			h.pinging = true
			h.pingMu.Unlock()
			if start {
				e.wg.Add(1)
				go h.ping(timeout)
			}
		}
		clear(list)
	}
}

// ping sends one PING and closes the conn if no answer comes in time.
func (h *h2conn) ping(timeout time.Duration) {
	c := h.c
	e := c.hp.e
	defer e.wg.Done()
	ctx, cancel := context.WithTimeout(e.ctx, timeout)
	defer cancel()
	start := time.Now()
	err := h.cl.ping(ctx)
	rtt := time.Since(start)
	h.pingMu.Lock()
	h.pinging = false
	if err == nil {
		h.lastRTT = rtt
	}
	h.pingMu.Unlock()
	if err == nil || e.ctx.Err() != nil {
		return
	}
	hp := c.hp
	hp.mu.Lock()
	open := c.state == ConnActive || c.state == ConnIdle
	if open {
		hp.stats.pingFailures.Add(1)
		hp.e.emit(hp, EventPingFailed, c.id, "", err.Error())
		hp.removeLocked(c, ClosePingTimeout)
	}
	hp.mu.Unlock()
	if open {
		c.closeNow()
	}
}

// pingRTT is the last PING's round trip, 0 before one was answered.
func (h *h2conn) pingRTT() time.Duration {
	h.pingMu.Lock()
	defer h.pingMu.Unlock()
	return h.lastRTT
}

// goAwayIdle sends GOAWAY on every idle HTTP/2 conn before Close closes
// them, so that the peer sees a graceful end rather than a reset. A peer
// that does not take the frame within h2GoAwayWait is closed on anyway.
func (e *Engine) goAwayIdle() {
	var wg sync.WaitGroup
	for _, c := range e.h2conns.list(nil) {
		c.hp.mu.Lock()
		idle := c.state == ConnIdle
		c.hp.mu.Unlock()
		if !idle {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), h2GoAwayWait)
			defer cancel()
			_ = c.h2.cl.shutdown(ctx)
		}()
	}
	wg.Wait()
}

// h2GoAwayWait bounds goAwayIdle.
const h2GoAwayWait = time.Second
