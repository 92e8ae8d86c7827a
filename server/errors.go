package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/textproto"
	"os"
	"syscall"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/poold/poold/dialer"
	"github.com/poold/poold/pool"
)

// ErrorDomain is the ErrorInfo domain of every error poold returns.
const ErrorDomain = "poold.dev"

// MetadataMayHaveReachedUpstream is the ErrorInfo metadata key set to
// "true" on a failure after some of the request was sent: the upstream may
// have acted on it. Such a failure is never UNAVAILABLE.
const MetadataMayHaveReachedUpstream = "may_have_reached_upstream"

// MetadataH2ErrorCode is the ErrorInfo metadata key naming the HTTP/2
// error code, as RFC 9113 section 7 names it ("REFUSED_STREAM"), of an
// upstream that reset the request's stream or ended its connection with
// GOAWAY.
const MetadataH2ErrorCode = "h2_error_code"

// h2RefusedStream is the HTTP/2 error code REFUSED_STREAM (RFC 9113
// section 7).
const h2RefusedStream = 0x7

// ErrorInfo reasons. The README's error table lists them with their codes.
const (
	ReasonInvalidArgument       = "INVALID_ARGUMENT"
	ReasonQueueFull             = "QUEUE_FULL"
	ReasonBodyTooLarge          = "BODY_TOO_LARGE"
	ReasonDialTimeout           = "DIAL_TIMEOUT"
	ReasonTLSHandshakeTimeout   = "TLS_HANDSHAKE_TIMEOUT"
	ReasonResponseHeaderTimeout = "RESPONSE_HEADER_TIMEOUT"
	ReasonRequestTimeout        = "REQUEST_TIMEOUT"
	ReasonBodyReadTimeout       = "BODY_READ_TIMEOUT"
	ReasonDNSError              = "DNS_ERROR"
	ReasonConnectionRefused     = "CONNECTION_REFUSED"
	ReasonUpstreamReset         = "UPSTREAM_RESET"
	ReasonUpstreamProtocolError = "UPSTREAM_PROTOCOL_ERROR"
	ReasonTLSError              = "TLS_ERROR"
	ReasonProxyError            = "PROXY_ERROR"
	ReasonEgressDenied          = "EGRESS_DENIED"
	ReasonCanceled              = "CANCELED"
	ReasonShuttingDown          = "SHUTTING_DOWN"
	ReasonUpstreamError         = "UPSTREAM_ERROR"
	// ReasonOverloaded comes with RESOURCE_EXHAUSTED when poold already
	// runs as many upstream requests as --max-in-flight allows.
	ReasonOverloaded = "OVERLOADED"
	// ReasonEtagMismatch comes with ABORTED: the policy changed since the
	// caller read the etag it sent. Read it again and retry.
	ReasonEtagMismatch = "ETAG_MISMATCH"
	// ReasonPolicyNotFound comes with NOT_FOUND.
	ReasonPolicyNotFound = "POLICY_NOT_FOUND"
	// ReasonDefaultPolicyRequired comes with FAILED_PRECONDITION when
	// asked to delete policies/default.
	ReasonDefaultPolicyRequired = "DEFAULT_POLICY_REQUIRED"
	// ReasonPolicyNotSaved comes with INTERNAL when the policy file could
	// not be written; the change was rolled back.
	ReasonPolicyNotSaved = "POLICY_NOT_SAVED"
	// ReasonPolicyStoreUnavailable comes with UNAVAILABLE when the shared
	// policy store (etcd) cannot be reached or has not been loaded yet.
	// Policy changes are idempotent and guarded by etags, so the call can
	// be sent again as it is; requests keep running under the policies
	// last applied.
	ReasonPolicyStoreUnavailable = "POLICY_STORE_UNAVAILABLE"
)

// errBodyTooLarge reports a response body over the daemon's limit.
type errBodyTooLarge struct{ limit int64 }

func (e *errBodyTooLarge) Error() string {
	return fmt.Sprintf("response body exceeds the %d-byte limit; use Stream for large bodies", e.limit)
}

// statusFromError maps an engine, dialer or context error to a gRPC status
// as mapError does, telling the caller nothing it may not know.
func statusFromError(err error) error { return mapError(err, false) }

// mapError maps an engine, dialer or context error to a gRPC status
// carrying an ErrorInfo. It is the one place where poold decides which code
// a caller sees: UNAVAILABLE when the call can be retried as it is, since
// nothing of it reached the upstream (or the upstream refused its HTTP/2
// stream unprocessed), ABORTED when it failed the same way after it may
// have, DEADLINE_EXCEEDED for timeouts, RESOURCE_EXHAUSTED for full queues
// and limits.
//
// The message names the phase and the host as the caller named it, never
// the URL, whose query may hold secrets. Unless reveal is set (every
// caller is trusted), it names no resolved address, resolver or egress
// rule either: those would let any caller map internal names to addresses.
// The returned error keeps the whole cause for the log (errorDetail).
func mapError(err error, reveal bool) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	code, reason := classify(err)
	md := map[string]string{}
	// A refused stream went out, but RFC 9113 promises the upstream did
	// not act on it: it stays UNAVAILABLE, unmarked.
	refused := reason == ReasonUpstreamReset && refusedUnprocessed(err)
	var reset *pool.StreamResetError
	if errors.As(err, &reset) {
		md[MetadataH2ErrorCode] = reset.CodeName()
		if reason == ReasonUpstreamReset && !refused {
			// The stream was opened, so its headers went out, whatever
			// the engine recorded.
			md[MetadataMayHaveReachedUpstream] = "true"
		}
	}
	var perr *pool.Error
	if errors.As(err, &perr) {
		md["phase"] = string(perr.Phase)
		md["host"] = perr.Host
		if perr.Sent && !refused {
			// UNAVAILABLE is the code gRPC clients retry on their own
			// (retryableStatusCodes); a request the upstream may have
			// acted on must not be sent again without the caller's say.
			// ABORTED is the codes doc's "retry at a higher level": find
			// out whether it took effect, then decide.
			md[MetadataMayHaveReachedUpstream] = "true"
			if code == codes.Unavailable {
				code = codes.Aborted
			}
		}
	}
	var derr *dialer.Error
	if errors.As(err, &derr) {
		md["dial_step"] = string(derr.Step)
		if reveal && derr.Addr != "" {
			md["address"] = derr.Addr
		}
	}
	var denial *dialer.Denial
	if errors.As(err, &denial) {
		md["rule_set"] = denial.RuleSet
		md["denial"] = denial.Reason
	}
	msg := err.Error()
	if !reveal {
		msg = callerMessage(err, reason)
	}
	st, detailErr := status.New(code, msg).WithDetails(&errdetails.ErrorInfo{
		Reason:   reason,
		Domain:   ErrorDomain,
		Metadata: md,
	})
	if detailErr != nil {
		// Only a marshalling bug gets here; the code alone still tells the
		// caller what happened.
		slog.Error("attaching ErrorInfo", "err", detailErr)
		st = status.New(code, msg)
	}
	return &callError{st: st, cause: err}
}

// callError is a failed call's status with what caused it. gRPC sends the
// status (status.FromError finds GRPCStatus); the cause, which may name
// addresses and rules, is only for the log. It must be returned as it is,
// not wrapped: gRPC would take a wrapper's Error() as the message.
type callError struct {
	st    *status.Status
	cause error
}

// Error is the cause in full, for logs.
func (e *callError) Error() string { return e.cause.Error() }

// GRPCStatus is what the caller sees.
func (e *callError) GRPCStatus() *status.Status { return e.st }

// errorDetail is what the log says of a failed call: the whole cause where
// poold has it, else the status message.
func errorDetail(err error) string {
	var ce *callError
	if errors.As(err, &ce) {
		return ce.cause.Error()
	}
	return status.Convert(err).Message()
}

// classify picks the code and reason for err. Order matters: the most
// specific cause wins (an egress denial is not a dial error to the caller,
// and a timeout is a timeout whatever broke underneath).
func classify(err error) (codes.Code, string) {
	var perr *pool.Error
	hasPhase := errors.As(err, &perr)
	var derr *dialer.Error
	hasStep := errors.As(err, &derr)
	var tooLarge *errBodyTooLarge
	var overBudget *errBufferBudget

	switch {
	case errors.As(err, &tooLarge):
		return codes.ResourceExhausted, ReasonBodyTooLarge
	case errors.As(err, &overBudget):
		return codes.ResourceExhausted, ReasonOverloaded
	case errors.Is(err, pool.ErrQueueFull):
		return codes.ResourceExhausted, ReasonQueueFull
	case errors.Is(err, dialer.ErrEgressDenied):
		return codes.PermissionDenied, ReasonEgressDenied
	case errors.Is(err, pool.ErrClosed):
		return codes.Unavailable, ReasonShuttingDown
	case errors.Is(err, context.Canceled):
		return codes.Canceled, ReasonCanceled
	case isTimeout(err):
		phase := pool.Phase("")
		if hasPhase {
			phase = perr.Phase
		}
		switch {
		case errors.Is(err, pool.ErrBodyReadTimeout):
			return codes.DeadlineExceeded, ReasonBodyReadTimeout
		case phase == pool.PhaseTLS || (hasStep && derr.Step == dialer.StepTLS):
			return codes.DeadlineExceeded, ReasonTLSHandshakeTimeout
		case phase == pool.PhaseDial || phase == pool.PhaseProxy || hasStep:
			return codes.DeadlineExceeded, ReasonDialTimeout
		case phase == pool.PhaseResponseHeader:
			return codes.DeadlineExceeded, ReasonResponseHeaderTimeout
		default:
			return codes.DeadlineExceeded, ReasonRequestTimeout
		}
	}

	var dnsErr *net.DNSError
	var certErr *tls.CertificateVerificationError
	var unknownAuth x509.UnknownAuthorityError
	var hostnameErr x509.HostnameError
	var alertErr tls.AlertError
	var recordErr tls.RecordHeaderError
	var protoErr *textproto.ProtocolError
	var reset *pool.StreamResetError
	switch {
	case errors.As(err, &reset):
		// RFC 9113 section 8.7: a stream refused with REFUSED_STREAM was
		// not processed, so it may be sent again as it is. Any other
		// reset, or a GOAWAY that took the stream with it, leaves the
		// upstream free to have acted on the request.
		if refusedUnprocessed(err) {
			return codes.Unavailable, ReasonUpstreamReset
		}
		return codes.Aborted, ReasonUpstreamReset
	case hasStep && derr.Step == dialer.StepProxy:
		// Whatever went wrong on the way to or through the proxy (its
		// name, a refused connect, a refused CONNECT), the upstream was
		// never reached: a caller told CONNECTION_REFUSED or DNS_ERROR
		// would look for the fault in the wrong place.
		return codes.Unavailable, ReasonProxyError
	case errors.As(err, &dnsErr), hasStep && derr.Step == dialer.StepResolve:
		return codes.Unavailable, ReasonDNSError
	case errors.Is(err, syscall.ECONNREFUSED):
		return codes.Unavailable, ReasonConnectionRefused
	case errors.As(err, &certErr), errors.As(err, &unknownAuth), errors.As(err, &hostnameErr),
		errors.As(err, &alertErr), errors.As(err, &recordErr), hasStep && derr.Step == dialer.StepTLS:
		return codes.Unavailable, ReasonTLSError
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE),
		errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed):
		return codes.Unavailable, ReasonUpstreamReset
	case errors.As(err, &protoErr), errors.Is(err, pool.ErrProtocol):
		return codes.Unavailable, ReasonUpstreamProtocolError
	case hasPhase && (perr.Phase == pool.PhaseResponseHeader || perr.Phase == pool.PhaseBody):
		// http.ReadResponse reports most malformed heads with plain
		// errors; by now the connection worked, so the upstream broke the
		// protocol.
		return codes.Unavailable, ReasonUpstreamProtocolError
	}
	return codes.Unavailable, ReasonUpstreamError
}

// refusedUnprocessed reports whether err is an HTTP/2 stream the upstream
// refused before processing it: reset with REFUSED_STREAM, not ended by a
// GOAWAY, and with no response head read (one that answered has
// processed the request, whatever its reset says).
func refusedUnprocessed(err error) bool {
	var reset *pool.StreamResetError
	if !errors.As(err, &reset) || reset.GoAway || reset.Code != h2RefusedStream {
		return false
	}
	var perr *pool.Error
	return !errors.As(err, &perr) || perr.Phase != pool.PhaseBody
}

func isTimeout(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) {
		return true
	}
	var t interface{ Timeout() bool }
	return errors.As(err, &t) && t.Timeout()
}

// fieldViolation is one BadRequest entry: the field at fault and why.
type fieldViolation struct {
	Field, Reason string
}

// invalidArgument builds an INVALID_ARGUMENT status whose BadRequest names
// every field at fault, and whose message names the first, so that even a
// caller that ignores details learns what to fix.
func invalidArgument(violations ...fieldViolation) error {
	if len(violations) == 0 {
		panic("server: internal error: invalidArgument without a violation")
	}
	msg := fmt.Sprintf("%s: %s", violations[0].Field, violations[0].Reason)
	if n := len(violations) - 1; n > 0 {
		msg += fmt.Sprintf(" (and %d more)", n)
	}
	br := &errdetails.BadRequest{}
	for _, v := range violations {
		br.FieldViolations = append(br.FieldViolations, &errdetails.BadRequest_FieldViolation{
			Field:       v.Field,
			Description: v.Reason,
		})
	}
	st, err := status.New(codes.InvalidArgument, msg).WithDetails(br, &errdetails.ErrorInfo{
		Reason: ReasonInvalidArgument,
		Domain: ErrorDomain,
	})
	if err != nil {
		return status.Error(codes.InvalidArgument, msg)
	}
	return st.Err()
}
