package pool

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"
)

const (
	// max1xx bounds informational responses before the final one, so a
	// server cannot keep a request reading 1xx heads forever.
	max1xx = 16
	// writeWait is how long a response may wait for the writer to finish
	// before the conn is judged unusable: a server often answers just as
	// the last body bytes leave, and that conn is still fine.
	writeWait = 50 * time.Millisecond
	// writeErrGrace is how long the reader keeps looking for a response
	// after the request write failed; a server that rejected the request
	// may have answered before closing.
	writeErrGrace = 50 * time.Millisecond
)

// aLongTimeAgo is a deadline in the past: setting it makes blocked reads
// and writes return at once.
var aLongTimeAgo = time.Unix(1, 0)

// http1 speaks HTTP/1.1 on a conn: one exchange at a time, written with
// net/http's request writer and read with its response reader, with no
// goroutine while idle.
type http1 struct{ c *conn }

func (h *http1) canTakeRequestLocked() bool { return h.c.state == ConnIdle }

func (h *http1) activeStreamsLocked() int {
	if h.c.state == ConnActive {
		return 1
	}
	return 0
}

func (h *http1) protocol() string { return "HTTP/1.1" }

// exchange is one request and response on a conn. It owns the conn and
// its buffers from checkout until the response body is finished.
type exchange struct {
	hp   *hostPool
	c    *conn
	req  *http.Request // what goes on the wire (the caller's, shallow-copied)
	orig *http.Request // the caller's, for resp.Request
	ctx  context.Context
	eff  Effective
	tm   *timing
	end  context.CancelFunc // ends the request-timeout context with the response

	reused     bool
	stopCancel func() bool // disarms the context watcher
	writeStart time.Time

	writeDone   chan error // the writer's result; capacity 1
	wrote       bool       // writeDone has been received (reader-owned)
	writeErr    error      // the writer's result (reader-owned)
	skippedBody bool       // writer-owned until writeDone: the body was withheld
	sendBody    *sendBody  // the wrapped request body, if wrapped

	continueCh   chan bool // Expect: 100-continue only: true = send the body
	continueSent bool      // reader-owned
	gotByte      bool      // a response byte arrived (reader-owned)

	ixReason CloseReason // guarded by c.ixMu: why the exchange was interrupted
	headDone bool        // guarded by c.ixMu: the response head is in
}

func newExchange(hp *hostPool, c *conn, req, orig *http.Request, ctx context.Context, eff Effective, tm *timing, end context.CancelFunc) *exchange {
	return &exchange{hp: hp, c: c, req: req, orig: orig, ctx: ctx, eff: eff, tm: tm, end: end}
}

func (h *http1) roundTrip(x *exchange) (*http.Response, bool, error) {
	c := h.c
	x.reused = c.requests.Add(1) > 1
	x.tm.began(c, x.reused)
	if x.reused {
		x.hp.stats.reused.Add(1)
		x.hp.e.emit(x.hp, EventReused, c.id, "", "")
	}
	c.takeBuffers()
	c.ixMu.Lock()
	if c.owner != nil {
		c.ixMu.Unlock()
		panic(fmt.Sprintf("pool: internal error: conn %d used by two requests", c.id))
	}
	c.owner = x
	c.ixMu.Unlock()
	// Cancellation must interrupt a blocked read or write at once, not at
	// the next deadline, so the watcher sets a deadline in the past.
	x.stopCancel = context.AfterFunc(x.ctx, func() { x.interrupt(CloseCanceled) })

	wreq := x.req
	hasBody := wreq.Body != nil && wreq.Body != http.NoBody
	// Only bodies that net/http writes after flushing the headers (not
	// ones it probes first) can be held back for the 100 Continue.
	hold := hasBody && x.eff.ExpectContinueTimeout > 0 && headerHasToken(wreq.Header, "Expect", "100-continue") &&
		(wreq.ContentLength > 0 || !usuallyNoBody(wreq.Method))
	if hold || (hasBody && !inMemory(wreq.Body)) {
		// net/http hides the body's own read error from Request.Write's
		// result, so a body that can fail is read through a wrapper that
		// keeps it. In-memory bodies cannot fail and stay unwrapped, which
		// lets net/http send small requests in one packet.
		if hold {
			x.continueCh = make(chan bool, 1)
		}
		x.sendBody = &sendBody{rc: x.req.Body, x: x, hold: hold}
		wreq = wreq.WithContext(x.ctx)
		wreq.Body = x.sendBody
	}
	x.writeDone = make(chan error, 1)
	x.writeStart = time.Now()
	if hasBody {
		// The body is written concurrently, so a server that answers early
		// (say, 413) is heard; the goroutine ends with the exchange, when
		// the body is written or the conn is closed.
		go x.write(wreq, c.bw)
	} else {
		x.write(wreq, c.bw)
		x.collectWrite(0)
		if x.writeErr != nil {
			return x.fail(x.writeErr)
		}
	}

	resp, err := x.readHead(wreq)
	if err != nil {
		return x.fail(err)
	}
	x.headRead()
	resp.TLS = c.tlsState
	if resp.StatusCode == http.StatusSwitchingProtocols {
		return x.upgrade(resp), false, nil
	}
	// A final answer without 100 Continue: a body still held back is not
	// sent, and as the server may or may not wait for it, the conn is done
	// (reuseBlocker sees the writer's errSkipBody).
	x.resolveContinue(false)
	x.collectWrite(writeWait)
	reason := x.reuseBlocker(resp)
	x.tm.attach(resp, x.orig)
	if resp.Body == http.NoBody {
		x.finish(reason)
		return resp, false, nil
	}
	resp.Body = &body{x: x, rc: resp.Body, reason: reason}
	return resp, false, nil
}

// write sends the request; it runs on the caller's goroutine or, with a
// body, on its own. bw is passed in because the conn's field is cleared
// when the exchange ends, which may be before a stuck writer finishes.
func (x *exchange) write(r *http.Request, bw *bufio.Writer) {
	var err error
	if x.hp.proxy != nil && x.hp.scheme == "http" {
		err = r.WriteProxy(bw)
	} else {
		err = r.Write(bw)
	}
	if err == nil {
		err = bw.Flush()
	}
	switch {
	case err == nil:
		x.armHeaderTimeout()
	case !x.skippedBody:
		x.setHeadDeadline(time.Now().Add(writeErrGrace))
	}
	x.writeDone <- err
}

// collectWrite takes the writer's result if it is ready within wait.
func (x *exchange) collectWrite(wait time.Duration) {
	if x.wrote {
		return
	}
	select {
	case err := <-x.writeDone:
		x.wrote, x.writeErr = true, err
		return
	default:
	}
	if wait <= 0 {
		return
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case err := <-x.writeDone:
		x.wrote, x.writeErr = true, err
	case <-t.C:
	}
}

// readHead reads the response head, skipping 1xx responses and releasing
// the body on 100 Continue.
func (x *exchange) readHead(wreq *http.Request) (*http.Response, error) {
	c := x.c
	c.rd.limit = int64(x.eff.MaxResponseHeaderBytes)
	if _, err := c.br.Peek(1); err != nil {
		return nil, err
	}
	x.gotByte = true
	x.tm.firstByte(time.Since(x.writeStart))
	for n := 0; ; n++ {
		resp, err := http.ReadResponse(c.br, wreq)
		if err != nil {
			return nil, err
		}
		code := resp.StatusCode
		if code == http.StatusSwitchingProtocols && !asksUpgrade(wreq.Header) {
			// RFC 9110 section 15.2.2: a server must not switch to a
			// protocol the request did not offer. Handing the conn over
			// would leave the caller reading a raw socket that no
			// deadline or cancellation reaches.
			return nil, errUnrequestedUpgrade
		}
		if code < 100 || code > 199 || code == http.StatusSwitchingProtocols {
			c.rd.limit = -1
			return resp, nil
		}
		if n >= max1xx {
			return nil, errTooMany1xx
		}
		if code == http.StatusContinue {
			x.resolveContinue(true)
		}
	}
}

// asksUpgrade reports whether a request offers to switch protocols.
func asksUpgrade(h http.Header) bool {
	return h.Get("Upgrade") != "" && headerHasToken(h, "Connection", "upgrade")
}

// reuseBlocker says why the conn cannot serve again after this response,
// or "" if it can once the body is read.
func (x *exchange) reuseBlocker(resp *http.Response) CloseReason {
	switch {
	case x.eff.DisableKeepAlives:
		return ClosePolicy
	case resp.Close:
		// Connection: close, HTTP/1.0 without keep-alive, or a body that
		// runs to EOF.
		return CloseServerClosed
	case x.req.Close || headerHasToken(x.req.Header, "Connection", "close"):
		return CloseUnusable
	case !x.wrote:
		return CloseUnusable // the response beat the body: the rest of it is in flight
	case x.writeErr != nil:
		return CloseUnusable // the body failed or was withheld
	}
	return ""
}

// detach ends x's claim on its conn: the context watcher is disarmed and a
// late interrupt can no longer touch the conn. It returns why x was
// interrupted, if it was.
func (x *exchange) detach() CloseReason {
	x.stopCancel()
	c := x.c
	c.ixMu.Lock()
	defer c.ixMu.Unlock()
	c.owner = nil
	return x.ixReason
}

// fail ends an exchange that produced no response, closing the conn and
// classifying the error. retryable is true only when a reused conn broke
// before any response byte: the keep-alive race.
func (x *exchange) fail(err error) (*http.Response, bool, error) {
	c := x.c
	ix := x.detach()
	x.resolveContinue(false)
	// A writer that failed already may explain the read error. One still
	// running is stopped: closing the socket ends a write blocked on it,
	// closing the caller's body ends a read blocked there; what it reports
	// then is our doing, not the cause.
	x.collectWrite(0)
	writerFailed := x.wrote && x.writeErr != nil
	c.closeNow()
	if !x.wrote {
		closeRequestBody(x.req)
		x.collectWrite(writeWait)
	}
	connWriteErr := writerFailed && c.wr.err != nil
	bodyErr := writerFailed && c.wr.err == nil && !x.skippedBody

	phase, cause, reason, retryable := PhaseResponseHeader, err, CloseError, false
	switch {
	case ix == CloseCanceled:
		p := PhaseResponseHeader
		if !x.wrote || x.writeErr != nil {
			p = PhaseWrite
		}
		phase, cause = ctxError(x.ctx, p)
		reason = CloseCanceled
	case x.hp.e.isClosed.Load():
		cause = joinClosed(err)
		reason = CloseShutdown
	case bodyErr:
		phase, cause = PhaseWrite, x.writeErr
		if x.sendBody != nil && x.sendBody.err != nil {
			cause = x.sendBody.err
		}
	case c.rd.tripped:
		cause = errHeaderTooLarge
	case connWriteErr && !x.gotByte:
		phase, cause = PhaseWrite, x.writeErr
		if isConnReset(x.writeErr) {
			reason = CloseServerClosed
		}
		retryable = x.reused
	case !x.gotByte && isConnReset(err):
		cause = fmt.Errorf("%w: %w", errServerClosed, err)
		reason = CloseServerClosed
		retryable = x.reused
	case !x.gotByte && !isTimeout(err):
		retryable = x.reused
	default:
		cause = protocolError(err)
	}
	c.returnBuffers(x.wrote)
	x.hp.release(c, reason)
	return nil, retryable, &Error{Phase: phase, Host: x.hp.key, Err: cause}
}

// finish ends an exchange whose response was delivered: the conn goes
// back to the pool unless reason (or what happened since) rules it out.
func (x *exchange) finish(reason CloseReason) {
	c := x.c
	ix := x.detach()
	if reason == "" {
		reason = ix
	}
	if reason == "" && c.br.Buffered() > 0 {
		reason = CloseUnusable // bytes beyond the response: garbage or a misframed body
	}
	if !x.wrote {
		x.collectWrite(0)
	}
	if reason == "" && (!x.wrote || x.writeErr != nil) {
		reason = CloseUnusable
	}
	if reason == "" {
		if err := c.nc.SetDeadline(time.Time{}); err != nil {
			reason = CloseError // a socket that refuses deadlines is broken
		}
	}
	if reason != "" {
		c.closeNow()
		if !x.wrote {
			closeRequestBody(x.req)
		}
	}
	c.returnBuffers(x.wrote)
	x.tm.finish()
	x.end()
	x.hp.release(c, reason)
}

// upgrade hands the conn to the caller on 101 Switching Protocols: the
// body reads and writes the raw conn, and the pool forgets it.
func (x *exchange) upgrade(resp *http.Response) *http.Response {
	c := x.c
	x.detach()
	// The caller owns the conn now, deadlines included; a failure to
	// clear ours shows on the caller's first read or write.
	_ = c.nc.SetDeadline(time.Time{})
	ub := &upgradedBody{conn: c.nc}
	if c.br.Buffered() > 0 {
		ub.br = c.br // keeps the bytes read past the head; not returned to the pool
		c.br = nil
	}
	c.rd.limit = -1
	x.collectWrite(0)
	c.returnBuffers(x.wrote)
	x.tm.attach(resp, x.orig)
	x.tm.finish()
	x.end()
	x.hp.detach(c)
	resp.Body = ub
	return resp
}

func joinClosed(err error) error {
	if errors.Is(err, ErrClosed) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrClosed, err)
}
