package pool

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// h2conn speaks HTTP/2 on a conn: many streams at once through x/net's
// client conn, with the pool deciding which request takes a stream and
// when the conn is retired. The pool's own count of streams (conn.streams,
// under hp.mu) is what admission goes by; x/net's reservation is taken
// right before each stream as a second check.
type h2conn struct {
	c  *conn
	cl h2Client
	w  *h2Wire

	pingMu  sync.Mutex // guards pinging and lastRTT
	pinging bool
	lastRTT time.Duration
}

func (h *h2conn) canTakeRequestLocked() bool { return h.c.state == ConnIdle }
func (h *h2conn) activeStreamsLocked() int   { return h.c.streams }
func (h *h2conn) protocol() string           { return "HTTP/2.0" }

// errNoStream is the cause of an attempt that found its conn unable to
// open a stream after all: nothing was sent.
var errNoStream = errors.New("http2 connection took no new stream")

// errUnprocessed marks a failure the server did not act on (a stream it
// refused, or one above a GOAWAY's last stream id): the request may be
// sent again on another conn whatever its method.
var errUnprocessed = errors.New("not processed by the upstream")

// errH2HeaderTimeout is the cause of an HTTP/2 stream whose response head
// did not come within ResponseHeaderTimeout.
var errH2HeaderTimeout error = &deadlineError{msg: "pool: response header timeout"}

func (h *h2conn) roundTrip(x *exchange) (*http.Response, bool, error) {
	c, hp := h.c, x.hp
	if !h.cl.reserve() {
		hp.releaseStream(c, "", true)
		return nil, false, &Error{Phase: PhaseQueue, Host: hp.key, Err: fmt.Errorf("%w: %w", errUnprocessed, errNoStream)}
	}
	x.reused = c.requests.Add(1) > 1
	x.tm.began(c, x.reused)
	hp.stats.streams.Add(1)
	if x.reused {
		hp.stats.reused.Add(1)
		hp.e.emit(hp, EventReused, c.id, "", "")
	}

	s := &h2Stream{x: x, h: h, stop: make(chan struct{})}
	if d := x.eff.ResponseHeaderTimeout; d > 0 {
		s.timer = time.AfterFunc(d, s.timedOut)
	}
	r := x.req.WithContext(x.ctx) // a shallow copy: the caller's request stays as it was
	r.Body = x.body
	// The header and body timeouts end the stream through the request's
	// Cancel channel, which x/net watches beside the context: cheaper
	// than a context of its own per stream.
	r.Cancel = s.stop
	x.writeStart = time.Now()
	resp, err := h.cl.roundTrip(r)
	if s.timer != nil && !s.timer.Stop() && err == nil {
		// The header timeout ran out as the head came in, and has
		// begun to cancel the stream: its body would fail as a
		// cancelled request. The attempt fails as the timeout it is.
		_ = resp.Body.Close()
		err = errH2HeaderTimeout
	}
	if err != nil {
		return s.fail(err)
	}
	s.headDone.Store(true)
	x.tm.firstByte(x.writeStart)
	x.tm.attach(resp, x.req, &x.tctx)
	if resp.Body == nil || resp.Body == http.NoBody {
		s.finish("")
		resp.Body = http.NoBody
		return resp, false, nil
	}
	s.rc = resp.Body
	s.gap = x.eff.BodyReadTimeout
	resp.Body = s
	return resp, false, nil
}

// h2Stream is one request's stream; as the response body it gives the
// stream back to the pool at EOF, error or Close.
type h2Stream struct {
	x     *exchange
	h     *h2conn
	stop  chan struct{}         // the request's Cancel: closed by a timeout
	why   atomic.Pointer[error] // the timeout that closed stop
	timer *time.Timer           // the header timeout, then the body read gap
	rc    io.ReadCloser
	gap   time.Duration
	// headDone says the response head is in, so a timer firing now is
	// the body read gap's, not the header timeout's.
	headDone atomic.Bool

	mu   sync.Mutex
	done bool
	err  error
}

func (s *h2Stream) Read(p []byte) (int, error) {
	s.mu.Lock()
	if s.done {
		err := s.err
		s.mu.Unlock()
		if err == nil {
			err = http.ErrBodyReadAfterClose
		}
		return 0, err
	}
	s.mu.Unlock()
	if s.gap > 0 {
		// One timer per stream serves both timeouts.
		if s.timer == nil {
			s.timer = time.AfterFunc(s.gap, s.timedOut)
		} else {
			s.timer.Reset(s.gap)
		}
	}
	n, err := s.rc.Read(p)
	if s.gap > 0 {
		s.timer.Stop()
	}
	switch {
	case err == io.EOF:
		s.end(io.EOF, "")
	case err != nil:
		perr := s.bodyError(err)
		if s.end(perr, "") {
			s.x.hp.failed(perr)
		}
		return n, perr
	}
	return n, err
}

func (s *h2Stream) Close() error {
	s.end(http.ErrBodyReadAfterClose, "")
	return nil
}

// timedOut ends the stream on the timeout that is running.
func (s *h2Stream) timedOut() {
	err := errH2HeaderTimeout
	if s.headDone.Load() {
		err = ErrBodyReadTimeout
	}
	if s.why.CompareAndSwap(nil, &err) {
		close(s.stop)
	}
}

// stopCause is the timeout that ended the stream, or nil.
func (s *h2Stream) stopCause() error {
	if p := s.why.Load(); p != nil {
		return *p
	}
	return nil
}

// end finishes the stream once, reporting whether this call did.
func (s *h2Stream) end(err error, reason CloseReason) bool {
	s.mu.Lock()
	if s.done {
		s.mu.Unlock()
		return false
	}
	s.done, s.err = true, err
	s.mu.Unlock()
	s.finish(reason)
	return true
}

// finish closes x/net's body (which resets an unfinished stream) and
// gives the stream back.
func (s *h2Stream) finish(reason CloseReason) {
	if s.timer != nil {
		s.timer.Stop()
	}
	if s.rc != nil {
		_ = s.rc.Close()
	}
	s.x.tm.finish()
	s.x.end()
	s.x.hp.releaseStream(s.h.c, reason, false)
}

func (s *h2Stream) bodyError(err error) error {
	x := s.x
	switch {
	case x.ctx.Err() != nil:
		phase, cause := ctxError(x.ctx, PhaseBody)
		return &Error{Phase: phase, Host: x.hp.key, Err: cause, Sent: true}
	case s.stopCause() == ErrBodyReadTimeout:
		return &Error{Phase: PhaseBody, Host: x.hp.key, Err: ErrBodyReadTimeout, Sent: true}
	case x.hp.e.isClosed.Load():
		return &Error{Phase: PhaseBody, Host: x.hp.key, Err: joinClosed(err), Sent: true}
	}
	f := classifyH2(err, s.h.c.goAwayCode())
	cause := err
	switch {
	case f.reset != nil:
		cause = fmt.Errorf("%w: %w", f.reset, err)
	case f.protocol:
		cause = protocolError(err)
	}
	return &Error{Phase: PhaseBody, Host: x.hp.key, Err: cause, Sent: true}
}

// fail ends an attempt that got no response head.
func (s *h2Stream) fail(err error) (*http.Response, bool, error) {
	x, c := s.x, s.h.c
	hp := x.hp
	s.mu.Lock()
	s.done = true
	s.mu.Unlock()
	cause := s.stopCause()
	reason := CloseReason("")
	phase := PhaseResponseHeader
	var perr error
	switch {
	case x.ctx.Err() != nil:
		p, ce := ctxError(x.ctx, PhaseResponseHeader)
		phase, perr = p, ce
	case cause == errH2HeaderTimeout:
		perr = errH2HeaderTimeout
	case hp.e.isClosed.Load():
		perr, reason = joinClosed(err), CloseShutdown
	default:
		f := classifyH2(err, c.goAwayCode())
		switch {
		case f.unprocessed:
			// Refused by the peer, or cut by its GOAWAY: either way the
			// stream went unprocessed, and nothing of it counts as sent.
			hp.stats.refusedStreams.Add(1)
			perr = fmt.Errorf("%w: %w", errUnprocessed, err)
			if f.reset != nil {
				hp.e.emit(hp, EventRefusedStream, c.id, "", f.reset.CodeName())
				perr = fmt.Errorf("%w: %w: %w", errUnprocessed, f.reset, err)
			}
			hp.releaseStream(c, "", false)
			return nil, false, &Error{Phase: phase, Host: hp.key, Err: perr}
		case f.reset != nil:
			perr = fmt.Errorf("%w: %w", f.reset, err)
		case f.protocol:
			perr, reason = protocolError(err), CloseProtocolError
		default:
			perr = err
			if isConnReset(err) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				reason = CloseServerClosed
			}
		}
	}
	hp.releaseStream(c, reason, false)
	return nil, false, &Error{Phase: phase, Host: hp.key, Err: perr, Sent: true}
}
