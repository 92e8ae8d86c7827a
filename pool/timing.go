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
	// PoolKey is the key of the host pool that served the request, as
	// HostStats and metrics name it (proxy credentials redacted).
	PoolKey string

	// Instants that place the phases on the clock, for a tracer that
	// draws them; each is zero when its phase did not happen. The
	// durations above stay the measure: these only say when.
	GotConn    time.Time // the conn was handed to the request; Queued ends here
	DialStart  time.Time // on a fresh conn: its dial began; DNS, Connect and TLSHandshake follow one another from here
	WriteStart time.Time // the request began to be written; TimeToFirstByte counts from here
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

// gotConn records the checkout that began at start and ends now.
func (tm *timing) gotConn(c *conn, idleFor time.Duration, start time.Time) {
	now := time.Now()
	tm.mu.Lock()
	tm.t.ConnID = c.id
	tm.t.IdleTime = idleFor
	tm.t.Queued = now.Sub(start)
	tm.t.GotConn = now
	tm.t.RemoteAddr = c.remote
	tm.t.PoolKey = c.hp.key
	tm.mu.Unlock()
}

func (tm *timing) began(c *conn, reused bool) {
	tm.mu.Lock()
	tm.t.Reused = reused
	if reused {
		tm.t.DNS, tm.t.Connect, tm.t.TLSHandshake = 0, 0, 0
		tm.t.DialStart = time.Time{}
	} else {
		tm.t.DNS, tm.t.Connect, tm.t.TLSHandshake = c.dns, c.connect, c.tlsTime
		tm.t.DialStart = c.dialStart
	}
	tm.mu.Unlock()
}

// firstByte records the wait from the write that began at writeStart to
// the first response byte, which came now.
func (tm *timing) firstByte(writeStart time.Time) {
	d := time.Since(writeStart)
	tm.mu.Lock()
	tm.t.TimeToFirstByte = d
	tm.t.WriteStart = writeStart
	tm.mu.Unlock()
}

func (tm *timing) finish() {
	tm.mu.Lock()
	if tm.t.Total == 0 {
		tm.t.Total = time.Since(tm.start)
	}
	tm.mu.Unlock()
}
