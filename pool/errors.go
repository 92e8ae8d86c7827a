package pool

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"

	"github.com/poold/poold/dialer"
)

// Phase names the step of a request that failed, so that callers can tell a
// slow upstream (response_header) from an unreachable one (dial) or a full
// pool (queue) without parsing messages.
type Phase string

// The phases of a request, in the order a request passes through them.
const (
	PhaseQueue          Phase = "queue"           // waiting for a connection
	PhaseDial           Phase = "dial"            // resolving and connecting
	PhaseProxy          Phase = "proxy"           // connecting to or tunnelling through a proxy
	PhaseTLS            Phase = "tls"             // the TLS handshake
	PhaseWrite          Phase = "write"           // sending the request
	PhaseResponseHeader Phase = "response_header" // waiting for and reading the response head
	PhaseBody           Phase = "body"            // reading the response body
	PhaseRequest        Phase = "request"         // the policy's whole-request timeout fired
)

// phases lists every Phase; counters are indexed by position in it.
var phases = [...]Phase{PhaseQueue, PhaseDial, PhaseProxy, PhaseTLS, PhaseWrite, PhaseResponseHeader, PhaseBody, PhaseRequest}

func phaseIndex(p Phase) int {
	for i, q := range phases {
		if q == p {
			return i
		}
	}
	panic("pool: internal error: unknown phase " + string(p))
}

// Error is a failed request: the phase it failed in, the pool key of the
// host and the cause. Dial failures carry a *dialer.Error as Err.
type Error struct {
	Phase Phase
	Host  string
	Err   error
	// Sent reports that some of the request left poold on a connection
	// before it failed, so the upstream may have acted on it: sending it
	// again may do the work twice. It is false for every failure before a
	// byte was written (queue, dial, proxy, TLS, a write that sent
	// nothing), and the engine's own retries only happen when sending
	// again is safe, so a request it retried reports its last attempt.
	Sent bool
}

// Error reads like "pool: response_header https://api.example.com:443: i/o timeout".
func (e *Error) Error() string {
	if e.Host == "" {
		return fmt.Sprintf("pool: %s: %v", e.Phase, e.Err)
	}
	return fmt.Sprintf("pool: %s %s: %v", e.Phase, e.Host, e.Err)
}

// Unwrap returns the cause, so errors.Is and errors.As see through Error.
func (e *Error) Unwrap() error { return e.Err }

// Timeout reports whether the request failed because a deadline passed:
// the caller's, the request timeout or one of the policy's step timeouts.
func (e *Error) Timeout() bool { return isTimeout(e.Err) }

// ErrQueueFull is returned (inside an *Error with PhaseQueue) when a host is
// at MaxConnsPerHost and MaxPendingRequests requests already wait for it.
var ErrQueueFull = errors.New("pool: wait queue full")

// ErrClosed is returned for requests made after, or cut short by, Close.
var ErrClosed = errors.New("pool: engine closed")

// ErrRequestTimeout is the cause of a request cut short by the policy's
// RequestTimeout. It comes inside an *Error with PhaseRequest, and it
// matches os.ErrDeadlineExceeded and context.DeadlineExceeded, so callers
// that only ask "was it a timeout" need not know about it.
var ErrRequestTimeout error = &deadlineError{msg: "pool: request timeout"}

// ErrBodyReadTimeout is the cause of a response body whose upstream sent
// nothing for the policy's BodyReadTimeout. It comes inside an *Error with
// PhaseBody and, like ErrRequestTimeout, matches os.ErrDeadlineExceeded and
// context.DeadlineExceeded.
var ErrBodyReadTimeout error = &deadlineError{msg: "pool: body read timeout"}

// ErrInvalidRequest is returned, wrapped, for a request that cannot be sent
// as given (no URL, unsupported scheme, a header that would break framing).
var ErrInvalidRequest = errors.New("pool: invalid request")

// ErrProtocol is wrapped into errors for responses that break HTTP/1.1:
// a malformed head or chunked body, a head over MaxResponseHeaderBytes,
// endless 1xx responses. The upstream answered, but not in HTTP.
var ErrProtocol = errors.New("pool: malformed upstream response")

var (
	errServerClosed       = errors.New("server closed the connection before responding")
	errHeaderTooLarge     = fmt.Errorf("%w: head exceeds max_response_header_bytes", ErrProtocol)
	errTooMany1xx         = fmt.Errorf("%w: too many 1xx informational responses", ErrProtocol)
	errUnrequestedUpgrade = fmt.Errorf("%w: 101 Switching Protocols to a request that offered no Upgrade", ErrProtocol)
	errSkipBody           = errors.New("request body not sent: the server answered without 100 Continue")
)

// protocolError marks err as the upstream breaking the protocol, unless
// it is the connection failing or a deadline, which say nothing about
// what the upstream sent.
func protocolError(err error) error {
	var ne net.Error
	if errors.Is(err, ErrProtocol) || isConnReset(err) || isTimeout(err) ||
		errors.Is(err, net.ErrClosed) || errors.As(err, &ne) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrProtocol, err)
}

// deadlineError is a timeout that matches both os.ErrDeadlineExceeded (what
// net reports) and context.DeadlineExceeded (what contexts report), so one
// errors.Is check works whichever clock ran out.
type deadlineError struct {
	msg string
	err error // the original cause, if any
}

func (e *deadlineError) Error() string {
	if e.err != nil {
		return e.msg + ": " + e.err.Error()
	}
	return e.msg
}
func (e *deadlineError) Timeout() bool   { return true }
func (e *deadlineError) Temporary() bool { return true }
func (e *deadlineError) Unwrap() error   { return e.err }
func (e *deadlineError) Is(target error) bool {
	return target == os.ErrDeadlineExceeded || target == context.DeadlineExceeded
}

// ctxError returns why ctx ended, as the error a request reports: the
// request timeout, a deadline (matching os.ErrDeadlineExceeded too) or the
// cancellation cause. The phase is PhaseRequest for the request timeout.
func ctxError(ctx context.Context, phase Phase) (Phase, error) {
	cause := context.Cause(ctx)
	switch {
	case cause == ErrRequestTimeout:
		return PhaseRequest, cause
	case errors.Is(cause, context.DeadlineExceeded):
		if errors.Is(cause, os.ErrDeadlineExceeded) {
			return phase, cause
		}
		return phase, &deadlineError{msg: "deadline exceeded", err: cause}
	case cause == nil:
		return phase, context.Canceled
	}
	return phase, cause
}

func isTimeout(err error) bool {
	if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var t interface{ Timeout() bool }
	return errors.As(err, &t) && t.Timeout()
}

// dialPhase maps the dialer's failed step to the phase callers see.
func dialPhase(err error) Phase {
	var de *dialer.Error
	if errors.As(err, &de) {
		switch de.Step {
		case dialer.StepTLS:
			return PhaseTLS
		case dialer.StepProxy:
			return PhaseProxy
		}
	}
	return PhaseDial
}

// isConnReset reports whether err says the peer went away: the signs of a
// keep-alive race, where the server closed a conn as we reused it.
func isConnReset(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, syscall.ECONNABORTED)
}

// StreamResetError is the cause of a request whose HTTP/2 stream the peer
// reset (RST_STREAM), or whose conn ended with a GOAWAY that leaves no
// retry: the upstream may have acted on the request.
type StreamResetError struct {
	// Code is the HTTP/2 error code, as RFC 9113 section 7 numbers it.
	Code uint32
	// GoAway says the conn's GOAWAY ended the stream rather than a reset.
	GoAway bool
}

func (e *StreamResetError) Error() string {
	what := "stream reset by the upstream"
	if e.GoAway {
		what = "connection ended by the upstream's GOAWAY"
	}
	return fmt.Sprintf("pool: %s, HTTP/2 error code %s", what, h2CodeName(e.Code))
}

// h2CodeName names the error codes of RFC 9113 section 7.
func h2CodeName(code uint32) string {
	names := [...]string{"NO_ERROR", "PROTOCOL_ERROR", "INTERNAL_ERROR", "FLOW_CONTROL_ERROR",
		"SETTINGS_TIMEOUT", "STREAM_CLOSED", "FRAME_SIZE_ERROR", "REFUSED_STREAM", "CANCEL",
		"COMPRESSION_ERROR", "CONNECT_ERROR", "ENHANCE_YOUR_CALM", "INADEQUATE_SECURITY", "HTTP_1_1_REQUIRED"}
	if int(code) < len(names) {
		return names[code]
	}
	return fmt.Sprintf("0x%x", code)
}

// CodeName gives the error code's name, such as "REFUSED_STREAM".
func (e *StreamResetError) CodeName() string { return h2CodeName(e.Code) }
