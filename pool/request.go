package pool

import (
	"context"
	"errors"
	"net/http"
	"time"
)

// roundTrip runs one request on the pool: reads the policy once, applies
// the request timeout, and retries what the keep-alive race broke.
func (hp *hostPool) roundTrip(req *http.Request, start time.Time) (*http.Response, error) {
	hp.stats.requests.Add(1)
	eff := hp.effective()
	ctx := req.Context()
	end := context.CancelFunc(func() {})
	if eff.RequestTimeout > 0 {
		if _, ok := ctx.Deadline(); !ok {
			ctx, end = context.WithTimeoutCause(ctx, eff.RequestTimeout, ErrRequestTimeout)
		}
	}
	tm := &timing{start: start}
	out := hp.outgoing(req, ctx, eff)
	for attempt := 1; ; attempt++ {
		tm.attempt(attempt)
		c, err := hp.getConn(ctx, tm)
		if err != nil {
			closeRequestBody(out)
			end()
			return nil, hp.failed(err)
		}
		resp, retryable, err := c.proto.roundTrip(newExchange(hp, c, out, req, ctx, eff, tm, end))
		if err == nil {
			return resp, nil
		}
		if retryable && attempt <= int(eff.MaxRetries) && replayable(out) && ctx.Err() == nil {
			next, rerr := rewind(out)
			if rerr == nil {
				out = next
				hp.stats.retries.Add(1)
				continue
			}
			err = errors.Join(err, rerr)
		}
		end()
		return nil, hp.failed(err)
	}
}

// outgoing is the request as it goes on the wire: the caller's, shallow
// copied, with the request context, the policy's Connection: close and
// proxy credentials added.
func (hp *hostPool) outgoing(req *http.Request, ctx context.Context, eff Effective) *http.Request {
	r := req.WithContext(ctx)
	if eff.DisableKeepAlives {
		r.Close = true
	}
	if hp.proxy != nil && hp.scheme == "http" {
		if auth := proxyAuth(hp.proxy); auth != "" && r.Header.Get("Proxy-Authorization") == "" {
			r.Header = r.Header.Clone()
			if r.Header == nil {
				r.Header = make(http.Header)
			}
			r.Header.Set("Proxy-Authorization", auth)
		}
	}
	return r
}

// replayable reports whether sending r again is safe: it is idempotent and
// its body is empty or can be produced again.
func replayable(r *http.Request) bool {
	if r.Body != nil && r.Body != http.NoBody && r.GetBody == nil {
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

// rewind returns r with a fresh body for another attempt.
func rewind(r *http.Request) (*http.Request, error) {
	if r.Body == nil || r.Body == http.NoBody {
		return r, nil
	}
	b, err := r.GetBody()
	if err != nil {
		return nil, err
	}
	next := r.WithContext(r.Context())
	next.Body = b
	return next, nil
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
