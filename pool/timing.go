package pool

import (
	"context"
	"net/http"
	"sync"
	"time"
)

// Timing is where the time of one request went.
type Timing struct {
	ConnID          uint64
	Reused          bool          // the conn had served a request before
	IdleTime        time.Duration // how long the conn sat idle before this request
	Queued          time.Duration // waiting for a conn, dialing included
	DNS             time.Duration // on a fresh conn: resolving
	Connect         time.Duration // on a fresh conn: TCP connect (and CONNECT)
	TLSHandshake    time.Duration // on a fresh conn: TLS
	TimeToFirstByte time.Duration // from starting to write to the first response byte
	Total           time.Duration // from RoundTrip to the body's EOF or Close
	Attempts        int           // 1 plus retries
	RemoteAddr      string
}

// timing collects a request's Timing. The request's goroutines write it
// and TimingFrom may read it at any time, hence the lock.
type timing struct {
	start time.Time
	mu    sync.Mutex
	t     Timing
}

type timingKey struct{}

// TimingFrom returns the timing of the request that produced resp. Total
// is final once the body has hit EOF or been closed.
func TimingFrom(resp *http.Response) (Timing, bool) {
	if resp == nil || resp.Request == nil {
		return Timing{}, false
	}
	tm, ok := resp.Request.Context().Value(timingKey{}).(*timing)
	if !ok {
		return Timing{}, false
	}
	tm.mu.Lock()
	defer tm.mu.Unlock()
	t := tm.t
	if t.Total == 0 {
		t.Total = time.Since(tm.start)
	}
	return t, true
}

// timingContext is the caller's context plus the request's timing: what
// context.WithValue would make, but allocated with the exchange.
type timingContext struct {
	context.Context
	tm *timing
}

func (c *timingContext) Value(key any) any {
	if key == (timingKey{}) {
		return c.tm
	}
	return c.Context.Value(key)
}

// attach makes the timing reachable from resp, without touching the
// caller's request: resp.Request becomes a shallow copy whose context, tc,
// carries it.
func (tm *timing) attach(resp *http.Response, orig *http.Request, tc *timingContext) {
	tc.Context, tc.tm = orig.Context(), tm
	resp.Request = orig.WithContext(tc)
}

func (tm *timing) attempt(n int) {
	tm.mu.Lock()
	tm.t.Attempts = n
	tm.mu.Unlock()
}

func (tm *timing) gotConn(c *conn, idleFor, queued time.Duration) {
	tm.mu.Lock()
	tm.t.ConnID = c.id
	tm.t.IdleTime = idleFor
	tm.t.Queued = queued
	tm.t.RemoteAddr = c.remote
	tm.mu.Unlock()
}

func (tm *timing) began(c *conn, reused bool) {
	tm.mu.Lock()
	tm.t.Reused = reused
	if reused {
		tm.t.DNS, tm.t.Connect, tm.t.TLSHandshake = 0, 0, 0
	} else {
		tm.t.DNS, tm.t.Connect, tm.t.TLSHandshake = c.dns, c.connect, c.tlsTime
	}
	tm.mu.Unlock()
}

func (tm *timing) firstByte(d time.Duration) {
	tm.mu.Lock()
	tm.t.TimeToFirstByte = d
	tm.mu.Unlock()
}

func (tm *timing) finish() {
	tm.mu.Lock()
	if tm.t.Total == 0 {
		tm.t.Total = time.Since(tm.start)
	}
	tm.mu.Unlock()
}
