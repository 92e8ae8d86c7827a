package pool

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
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

// http1 speaks HTTP/1.1 on a conn: one exchange at a time, with no
// goroutine while idle. Requests are written by poold's writer
// (wirewrite.go); response heads in the plain form are read by poold's
// parser (wireread.go) and every other form by net/http's reader.
type http1 struct{ c *conn }

func (h *http1) canTakeRequestLocked() bool { return h.c.state == ConnIdle }

func (h *http1) activeStreamsLocked() int {
	if h.c.state == ConnActive {
		return 1
	}
	return 0
}

func (h *http1) protocol() string { return "HTTP/1.1" }

// exchange is one attempt at a request: it owns the conn and its buffers
// from checkout until the response body is finished.
type exchange struct {
	hp   *hostPool
	c    *conn
	req  *http.Request // the caller's; never modified
	body io.ReadCloser // the body sent on this attempt: req.Body or one from GetBody
	ctx  context.Context
	eff  Effective
	tm   *timing
	end  context.CancelFunc // ends the request-timeout context with the response

	framing reqFraming
	wire    wireOpts

	reused     bool
	sentBase   uint64      // the conn's bytesWritten when the exchange began
	stopCancel func() bool // disarms the context watcher; nil if the context cannot end
	writeStart time.Time

	writeDone   chan error // the writer's result when it runs on its own goroutine
	wrote       bool       // the writer's result is in (reader-owned)
	writeErr    error      // the writer's result (reader-owned)
	skippedBody bool       // writer-owned until writeDone: the body was withheld
	bodyErr     error      // writer-owned until writeDone: the request body's own failure

	continueCh   chan bool // Expect: 100-continue only: true = send the body
	continueSent bool      // reader-owned
	gotByte      bool      // a response byte arrived (reader-owned)

	ixReason CloseReason // guarded by c.ixMu: why the exchange was interrupted
	headDone bool        // guarded by c.ixMu: the response head is in

	// Allocated along with the exchange: a request costs one allocation
	// for all of them.
	timing timing        // the request's timing, kept by its first attempt
	tctx   timingContext // the context of resp.Request, carrying tm
	resp   http.Response // the response, when poold parsed the head itself
	rbody  body          // the response body
}

// newExchange starts the first attempt at req.
func newExchange(hp *hostPool, req *http.Request, ctx context.Context, eff Effective, end context.CancelFunc, start time.Time) *exchange {
	x := &exchange{hp: hp, req: req, body: req.Body, ctx: ctx, eff: eff, end: end}
	x.timing.start = start
	x.tm = &x.timing
	return x
}

// retry starts the next attempt, with a fresh body and the same timing.
// The old exchange is not reused: a late context callback may still hold
// it.
func (x *exchange) retry(body io.ReadCloser) *exchange {
	return &exchange{hp: x.hp, req: x.req, body: body, ctx: x.ctx, eff: x.eff, end: x.end, tm: x.tm,
		framing: x.framing, wire: x.wire}
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
	x.sentBase = c.bytesWritten.Load()
	c.ixMu.Lock()
	if c.owner != nil {
		c.ixMu.Unlock()
		panic(fmt.Sprintf("pool: internal error: conn %d used by two requests", c.id))
	}
	c.owner = x
	c.ixMu.Unlock()
	// Cancellation must interrupt a blocked read or write at once, not at
	// the next deadline, so the watcher sets a deadline in the past. A
	// context that can never end needs no watcher.
	if x.ctx.Done() != nil {
		x.stopCancel = context.AfterFunc(x.ctx, func() { x.interrupt(CloseCanceled) })
	}

	hasBody := x.body != nil && x.body != http.NoBody
	if hasBody && x.eff.ExpectContinueTimeout > 0 && headerHasToken(x.req.Header, "Expect", "100-continue") {
		x.continueCh = make(chan bool, 1)
	}
	x.writeStart = time.Now()
	if hasBody {
		// The body is written concurrently, so a server that answers early
		// (say, 413) is heard; the goroutine ends with the exchange, when
		// the body is written or the conn is closed.
		x.writeDone = make(chan error, 1)
		go x.writeAsync(c.bw)
	} else {
		x.wrote, x.writeErr = true, x.write(c.bw)
		if x.writeErr != nil {
			return x.fail(x.writeErr)
		}
	}

	resp, err := x.readHead()
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
	if d := x.eff.BodyReadTimeout; d > 0 && resp.Body != http.NoBody {
		c.rd.gap, c.rd.x = d, x
	}
	reason := x.reuseBlocker(resp)
	x.tm.attach(resp, x.req, &x.tctx)
	if resp.Body == http.NoBody {
		x.finish(reason)
		return resp, false, nil
	}
	if resp.Body != &x.rbody {
		x.rbody.rc = resp.Body // net/http's framing
	}
	x.rbody.x, x.rbody.reason = x, reason
	resp.Body = &x.rbody
	return resp, false, nil
}

// writeAsync runs write on its own goroutine.
func (x *exchange) writeAsync(bw *bufio.Writer) { x.writeDone <- x.write(bw) }

// write sends the request and arms the response header timeout. bw is
// passed in because the conn's field is cleared when the exchange ends,
// which may be before a stuck writer finishes.
func (x *exchange) write(bw *bufio.Writer) error {
	err := x.writeRequest(bw)
	if err == nil {
		err = bw.Flush()
	}
	switch {
	case err == nil:
		x.armHeaderTimeout()
	case !x.skippedBody:
		if be := (*bodyReadError)(nil); errors.As(err, &be) {
			x.bodyErr = be.err
		}
		x.setHeadDeadline(time.Now().Add(writeErrGrace))
	}
	return err
}

// writeRequest writes the head, then the body: held back for a 100
// Continue when asked, and after flushing the head when reading it may
// block, so the server has the head meanwhile. The body is closed at the
// end, as a RoundTripper must.
func (x *exchange) writeRequest(bw *bufio.Writer) (err error) {
	if x.body != nil {
		defer func() {
			if cerr := x.body.Close(); cerr != nil && err == nil {
				err = &bodyReadError{cerr}
			}
		}()
	}
	if err := writeRequestHead(bw, x.req, x.framing, x.wire); err != nil {
		return err
	}
	if !x.framing.hasBody() {
		return nil
	}
	if x.continueCh != nil || !inMemory(x.body) {
		if err := bw.Flush(); err != nil {
			return err
		}
	}
	if x.continueCh != nil && !x.awaitContinue() {
		x.skippedBody = true
		return errSkipBody
	}
	return writeRequestBody(bw, x.body, x.framing, x.req.Trailer)
}

// collectWrite takes the writer's result if it is ready within wait.
func (x *exchange) collectWrite(wait time.Duration) {
	if x.wrote || x.writeDone == nil {
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
// the body on 100 Continue. A head in the plain form is parsed by poold
// into x.resp at no cost beyond its strings; any other form, 1xx
// included, goes to net/http's reader.
func (x *exchange) readHead() (*http.Response, error) {
	c := x.c
	c.rd.limit = int64(x.eff.MaxResponseHeaderBytes)
	if _, err := c.br.Peek(1); err != nil {
		return nil, err
	}
	x.gotByte = true
	x.tm.firstByte(x.writeStart)
	for n := 0; ; n++ {
		resp := &x.resp
		f, ok, err := parseResponseHead(c.br, x.req.Method, resp)
		switch {
		case err != nil:
			return nil, err
		case ok:
			c.rd.limit = -1
			resp.Request = x.req
			resp.Body = http.NoBody
			if f.chunked || f.length > 0 {
				x.rbody.fr.reset(c.br, f, resp)
				x.rbody.rc = &x.rbody.fr
				resp.Body = &x.rbody
			}
			return resp, nil
		}
		resp, err = http.ReadResponse(c.br, x.req)
		if err != nil {
			return nil, err
		}
		code := resp.StatusCode
		if code == http.StatusSwitchingProtocols && !asksUpgrade(x.req.Header) {
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
	case x.wire.close || headerHasToken(x.req.Header, "Connection", "close"):
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
	if x.stopCancel != nil {
		x.stopCancel()
	}
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
		closeBody(x.body)
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
		if x.bodyErr != nil {
			cause = x.bodyErr
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
	// Read after the writer has stopped, so no late byte is missed.
	sent := x.gotByte || c.bytesWritten.Load() > x.sentBase
	c.returnBuffers(x.wrote)
	x.hp.release(c, reason)
	return nil, retryable, &Error{Phase: phase, Host: x.hp.key, Err: cause, Sent: sent}
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
			closeBody(x.body)
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
	x.tm.attach(resp, x.req, &x.tctx)
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
