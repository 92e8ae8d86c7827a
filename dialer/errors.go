package dialer

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
)

// Step names the dial step that failed, so callers can tell a DNS failure
// from a refused connect or a bad certificate without parsing messages.
type Step string

// The steps of a dial, in the order they run.
const (
	StepResolve Step = "resolve"
	StepEgress  Step = "egress"
	StepConnect Step = "connect"
	StepProxy   Step = "proxy" // connecting to or CONNECT through a proxy
	StepTLS     Step = "tls"
)

// Error reports which step of a dial failed, for which host.
type Error struct {
	Step Step
	Host string // host:port being dialed (the origin, not the proxy)
	Addr string // the IP:port tried, when known
	Err  error
}

// Error reads "dialer: <step> <host> (<addr>): <cause>", the address left
// out when unknown or the same as the host.
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("dialer: ")
	b.WriteString(string(e.Step))
	b.WriteString(" ")
	b.WriteString(e.Host)
	if e.Addr != "" && e.Addr != e.Host {
		b.WriteString(" (")
		b.WriteString(e.Addr)
		b.WriteString(")")
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

// Unwrap gives errors.Is and errors.As the cause: a *net.DNSError, a
// syscall errno, an x509 error, ErrEgressDenied and so on.
func (e *Error) Unwrap() error { return e.Err }

// Timeout reports whether the step hit its deadline (the dial timeout, the
// handshake timeout or the caller's own). When it does, errors.Is(e,
// os.ErrDeadlineExceeded) and errors.Is(e, context.DeadlineExceeded) hold
// too, whichever layer noticed the deadline first.
func (e *Error) Timeout() bool { return isTimeout(e.Err) }

// newError builds an *Error, first giving a timeout cause the two sentinels
// callers test for: the net package reports a context deadline during
// connect as an "i/o timeout" that answers context.DeadlineExceeded but not
// os.ErrDeadlineExceeded, and a conn deadline the other way round.
func newError(step Step, host, addr string, err error) *Error {
	if isTimeout(err) {
		err = &deadlineError{err: err}
	}
	return &Error{Step: step, Host: host, Addr: addr, Err: err}
}

// isTimeout reports whether err comes from a deadline rather than, say, a
// refused connection or a caller's cancellation.
func isTimeout(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// deadlineError marks a timeout so that it answers both deadline sentinels
// while keeping the original error, and its message, in the chain.
type deadlineError struct{ err error }

func (e *deadlineError) Error() string   { return e.err.Error() }
func (e *deadlineError) Unwrap() error   { return e.err }
func (e *deadlineError) Timeout() bool   { return true }
func (e *deadlineError) Temporary() bool { return true }

func (e *deadlineError) Is(target error) bool {
	return target == os.ErrDeadlineExceeded || target == context.DeadlineExceeded
}

// ctxErr returns err, or the context's reason when the context ended first:
// a socket read that cancellation interrupted says "i/o timeout" or "use of
// closed network connection", which hides why it happened and would make a
// caller's cancellation look like a timeout.
func ctxErr(ctx context.Context, err error) error {
	cause := ctx.Err()
	if cause == nil || errors.Is(err, cause) {
		return err
	}
	if errors.Is(cause, context.DeadlineExceeded) && isTimeout(err) {
		return err
	}
	return fmt.Errorf("%w: %v", cause, err)
}
