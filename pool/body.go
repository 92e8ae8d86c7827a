package pool

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"time"
)

const (
	// maxDrain and drainTimeout bound what an early Close reads to save
	// the conn: more than that costs more than a new connection.
	maxDrain     = 256 << 10
	drainTimeout = 50 * time.Millisecond
)

// body is the response body handed to the caller. It owns the exchange
// from RoundTrip's return: EOF gives the conn back to the pool, an early
// Close drains a little to save it, anything else closes it.
type body struct {
	x      *exchange
	rc     io.Reader    // the framing reader over the conn's buffer: fr or net/http's
	fr     framedReader // poold's own framing, for heads poold parsed
	reason CloseReason  // why the conn cannot be reused even at EOF; "" if it can

	mu      sync.Mutex // guards the fields below
	reading bool       // a Read is in rc
	closed  bool       // Close was called
	done    bool       // the exchange is finished
	err     error      // what Read returns once done
}

func (b *body) Read(p []byte) (int, error) {
	b.mu.Lock()
	if b.done || b.closed {
		err := b.err
		b.mu.Unlock()
		if err == nil {
			err = http.ErrBodyReadAfterClose
		}
		return 0, err
	}
	b.reading = true
	b.mu.Unlock()

	n, err := b.rc.Read(p)

	b.mu.Lock()
	b.reading = false
	switch {
	case err == io.EOF:
		b.done, b.err = true, io.EOF
		b.mu.Unlock()
		b.x.finish(b.reason)
		return n, io.EOF
	case err != nil:
		closed := b.closed
		b.done = true
		if closed {
			// Close interrupted this Read; the caller asked for it.
			b.err = http.ErrBodyReadAfterClose
			b.mu.Unlock()
			b.x.finish(CloseUnusable)
			return n, http.ErrBodyReadAfterClose
		}
		perr := b.x.bodyError(err)
		b.err = perr
		b.mu.Unlock()
		reason := CloseError
		if b.x.interrupted() == CloseCanceled {
			reason = CloseCanceled
		}
		b.x.finish(reason)
		b.x.hp.failed(perr)
		return n, perr
	case b.closed:
		// Close came while this Read ran and left the finish to it.
		b.done, b.err = true, http.ErrBodyReadAfterClose
		b.mu.Unlock()
		b.x.finish(CloseUnusable)
		return n, nil
	}
	b.mu.Unlock()
	return n, nil
}

// Close ends the response. Unread bytes up to maxDrain that arrive within
// drainTimeout are read and dropped so the conn can serve again.
func (b *body) Close() error {
	b.mu.Lock()
	if b.done || b.closed {
		b.closed = true
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	if b.reading {
		// The Read in flight finishes the exchange once interrupted.
		b.mu.Unlock()
		b.x.interrupt(CloseUnusable)
		return nil
	}
	b.done, b.err = true, http.ErrBodyReadAfterClose
	b.mu.Unlock()
	reason := b.reason
	if reason == "" && b.x.ctx.Err() != nil {
		// The caller gave up; the context watcher may not have fired yet.
		// A drain could still save the conn, but a cancelled exchange
		// never goes back to the pool: whatever the upstream sends next
		// belongs to a request nobody reads.
		reason = CloseCanceled
	}
	if reason == "" && !b.drain() {
		reason = CloseUnusable
	}
	b.x.finish(reason)
	return nil
}

// abort ends the response at once and closes the conn, however little is
// left to read.
func (b *body) abort() {
	b.mu.Lock()
	if b.done || b.closed {
		b.closed = true
		b.mu.Unlock()
		return
	}
	b.closed = true
	if b.reading {
		b.mu.Unlock()
		b.x.interrupt(CloseUnusable)
		return
	}
	b.done, b.err = true, http.ErrBodyReadAfterClose
	b.mu.Unlock()
	b.x.finish(CloseUnusable)
}

// Abort closes resp's body without saving its connection: where Close
// reads a little of what is left so that the connection can serve again,
// Abort closes the connection. It is for a caller that stops reading a
// body it will not use, such as one over a size limit, where draining
// would only spend time on bytes nobody wants. For a body that did not come
// from an Engine it is Close.
func Abort(resp *http.Response) {
	if b, ok := resp.Body.(*body); ok {
		b.abort()
		return
	}
	if resp.Body != nil {
		_ = resp.Body.Close()
	}
}

func (b *body) drain() bool {
	b.x.c.rd.gap = 0 // the drain has one deadline for all it reads
	if !b.x.setBodyDeadline(time.Now().Add(drainTimeout)) {
		return false
	}
	n, err := io.Copy(io.Discard, io.LimitReader(b.rc, maxDrain+1))
	return err == nil && n <= maxDrain
}

// bodyError turns a body read failure into the *Error the caller sees.
func (x *exchange) bodyError(err error) error {
	switch {
	case x.interrupted() == CloseCanceled:
		phase, cause := ctxError(x.ctx, PhaseBody)
		return &Error{Phase: phase, Host: x.hp.key, Err: cause, Sent: true}
	case x.hp.e.isClosed.Load():
		return &Error{Phase: PhaseBody, Host: x.hp.key, Err: joinClosed(err), Sent: true}
	case x.c.rd.gap > 0 && isTimeout(err):
		// No other deadline is set on a body read: only the gap fires.
		return &Error{Phase: PhaseBody, Host: x.hp.key, Err: ErrBodyReadTimeout, Sent: true}
	}
	// A response head came back: the upstream had the request.
	return &Error{Phase: PhaseBody, Host: x.hp.key, Err: protocolError(err), Sent: true}
}

func (x *exchange) interrupted() CloseReason {
	x.c.ixMu.Lock()
	defer x.c.ixMu.Unlock()
	return x.ixReason
}

// upgradedBody is the body of a 101 response: the raw conn, after any
// bytes already buffered past the head.
type upgradedBody struct {
	br   *bufio.Reader // nil once drained
	conn net.Conn
}

func (b *upgradedBody) Read(p []byte) (int, error) {
	if b.br != nil {
		if n := b.br.Buffered(); len(p) > n {
			p = p[:n]
		}
		n, err := b.br.Read(p)
		if b.br.Buffered() == 0 {
			b.br = nil
		}
		return n, err
	}
	return b.conn.Read(p)
}

func (b *upgradedBody) Write(p []byte) (int, error) { return b.conn.Write(p) }

func (b *upgradedBody) Close() error { return b.conn.Close() }

// CloseWrite half-closes the conn where the transport allows it.
func (b *upgradedBody) CloseWrite() error {
	if cw, ok := b.conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}
