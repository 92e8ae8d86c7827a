package pool

import (
	"context"
	"errors"
	"io"
	"net/http"
	"time"
)

// roundTrip runs one request on the pool: reads the policy once, applies
// the request timeout, and retries what the keep-alive race broke.
func (hp *hostPool) roundTrip(req *http.Request, eff Effective, framing reqFraming, start time.Time) (*http.Response, error) {
	ctx := req.Context()
	end := context.CancelFunc(func() {})
	if eff.RequestTimeout > 0 {
		// The tightest bound wins: a caller's deadline further off than
		// the policy allows does not lift the policy's.
		if d, ok := ctx.Deadline(); !ok || time.Until(d) > eff.RequestTimeout {
			ctx, end = context.WithTimeoutCause(ctx, eff.RequestTimeout, ErrRequestTimeout)
		}
	}
	x := newExchange(hp, req, ctx, eff, end, start)
	x.framing = framing
	x.wire = wireOpts{
		absoluteForm: hp.viaHTTPProxy,
		close:        req.Close || eff.DisableKeepAlives,
		proxyAuth:    hp.proxyAuth,
	}
	unprocessed := 0
	for attempt := 1; ; attempt++ {
		x.tm.attempt(attempt)
		var err error
		x.c, err = hp.getConn(ctx, x.tm)
		if err != nil {
			closeBody(x.body)
			end()
			return nil, hp.failed(err)
		}
		resp, retryable, err := x.c.proto.roundTrip(x)
		if err == nil {
			return resp, nil
		}
		var again bool
		if errors.Is(err, errUnprocessed) {
			// The server did not act on it (RFC 9113 section 8.7): any
			// method may go again, after a pause that grows, since a
			// server refusing streams is shedding load.
			again = unprocessed < maxUnprocessedRetries && resendable(req) && ctx.Err() == nil && pause(ctx, unprocessed)
			unprocessed++
		} else {
			again = retryable && attempt <= int(eff.MaxRetries) && replayable(req) && ctx.Err() == nil
		}
		if again {
			body, rerr := rewind(req)
			if rerr == nil {
				x = x.retry(body)
				hp.stats.retries.Add(1)
				continue
			}
			err = errors.Join(err, rerr)
		}
		end()
		return nil, hp.failed(err)
	}
}

// maxUnprocessedRetries bounds the attempts at a request the server kept
// refusing without processing it.
const maxUnprocessedRetries = 4

// pause waits before the n+1th retry of an unprocessed request: none
// before the first (a GOAWAY'd conn is simply replaced), then 10ms, 20ms,
// 40ms. It reports false if ctx ended first.
func pause(ctx context.Context, n int) bool {
	if n == 0 {
		return true
	}
	t := time.NewTimer(time.Duration(5<<n) * time.Millisecond)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// replayable reports whether sending r again is safe: it is idempotent and
// its body is empty or can be produced again.
func replayable(r *http.Request) bool {
	if !resendable(r) {
		return false
	}
	switch r.Method {
	case "", http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	_, a := r.Header["Idempotency-Key"]
	_, b := r.Header["X-Idempotency-Key"]
	return a || b
}

// resendable reports whether r's body can be produced again.
func resendable(r *http.Request) bool {
	return r.Body == nil || r.Body == http.NoBody || r.GetBody != nil
}

// rewind returns a fresh body for another attempt at r.
func rewind(r *http.Request) (io.ReadCloser, error) {
	if r.Body == nil || r.Body == http.NoBody {
		return r.Body, nil
	}
	return r.GetBody()
}

// failed counts a request's failure and returns err.
func (hp *hostPool) failed(err error) error {
	hp.stats.errors.Add(1)
	var pe *Error
	if errors.As(err, &pe) && pe.Timeout() {
		hp.stats.timeouts.Add(1)
		hp.stats.timeoutsByPhase[phaseIndex(pe.Phase)].Add(1)
	}
	return err
}
