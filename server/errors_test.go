package server

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/poold/poold/dialer"
	"github.com/poold/poold/pool"
)

// codeAndReason returns the code and ErrorInfo reason of a gRPC error.
func codeAndReason(err error) (codes.Code, string) {
	st := status.Convert(err)
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			return st.Code(), info.GetReason()
		}
	}
	return st.Code(), ""
}

func TestStatusFromErrorMapsEveryRowOfTheTable(t *testing.T) {
	timeout := os.ErrDeadlineExceeded
	tests := []struct {
		name   string
		err    error
		code   codes.Code
		reason string
	}{
		{"queue full", &pool.Error{Phase: pool.PhaseQueue, Host: "h:80", Err: pool.ErrQueueFull}, codes.ResourceExhausted, ReasonQueueFull},
		{"body too large", &errBodyTooLarge{limit: 10}, codes.ResourceExhausted, ReasonBodyTooLarge},
		{"dial timeout", &pool.Error{Phase: pool.PhaseDial, Err: &dialer.Error{Step: dialer.StepConnect, Err: timeout}}, codes.DeadlineExceeded, ReasonDialTimeout},
		{"proxy timeout", &pool.Error{Phase: pool.PhaseProxy, Err: &dialer.Error{Step: dialer.StepProxy, Err: timeout}}, codes.DeadlineExceeded, ReasonDialTimeout},
		{"tls timeout", &pool.Error{Phase: pool.PhaseTLS, Err: &dialer.Error{Step: dialer.StepTLS, Err: timeout}}, codes.DeadlineExceeded, ReasonTLSHandshakeTimeout},
		{"response header timeout", &pool.Error{Phase: pool.PhaseResponseHeader, Err: timeout}, codes.DeadlineExceeded, ReasonResponseHeaderTimeout},
		{"request timeout", &pool.Error{Phase: pool.PhaseRequest, Err: timeout}, codes.DeadlineExceeded, ReasonRequestTimeout},
		{"caller deadline while queued", &pool.Error{Phase: pool.PhaseQueue, Err: context.DeadlineExceeded}, codes.DeadlineExceeded, ReasonRequestTimeout},
		{"bare context deadline", context.DeadlineExceeded, codes.DeadlineExceeded, ReasonRequestTimeout},
		{"dns", &pool.Error{Phase: pool.PhaseDial, Err: &dialer.Error{Step: dialer.StepResolve, Err: &net.DNSError{Err: "no such host", Name: "x.onion", IsNotFound: true}}}, codes.Unavailable, ReasonDNSError},
		{"refused", &pool.Error{Phase: pool.PhaseDial, Err: &dialer.Error{Step: dialer.StepConnect, Err: &net.OpError{Op: "dial", Err: &os.SyscallError{Syscall: "connect", Err: syscall.ECONNREFUSED}}}}, codes.Unavailable, ReasonConnectionRefused},
		{"reset", &pool.Error{Phase: pool.PhaseBody, Err: &net.OpError{Op: "read", Err: &os.SyscallError{Syscall: "read", Err: syscall.ECONNRESET}}, Sent: true}, codes.Aborted, ReasonUpstreamReset},
		{"reset before a byte was sent", &pool.Error{Phase: pool.PhaseWrite, Err: &net.OpError{Op: "write", Err: &os.SyscallError{Syscall: "write", Err: syscall.EPIPE}}}, codes.Unavailable, ReasonUpstreamReset},
		{"truncated body", &pool.Error{Phase: pool.PhaseBody, Err: io.ErrUnexpectedEOF, Sent: true}, codes.Aborted, ReasonUpstreamReset},
		{"malformed head", &pool.Error{Phase: pool.PhaseResponseHeader, Err: fmt.Errorf("%w: bad status line", pool.ErrProtocol), Sent: true}, codes.Aborted, ReasonUpstreamProtocolError},
		{"shut down after sending", &pool.Error{Phase: pool.PhaseResponseHeader, Err: pool.ErrClosed, Sent: true}, codes.Aborted, ReasonShuttingDown},
		{"timeout after sending", &pool.Error{Phase: pool.PhaseResponseHeader, Err: timeout, Sent: true}, codes.DeadlineExceeded, ReasonResponseHeaderTimeout},
		{"cancel after sending", &pool.Error{Phase: pool.PhaseResponseHeader, Err: context.Canceled, Sent: true}, codes.Canceled, ReasonCanceled},
		{"proxy refused", &pool.Error{Phase: pool.PhaseProxy, Err: &dialer.Error{Step: dialer.StepProxy, Err: errors.New("proxy answered 407")}}, codes.Unavailable, ReasonProxyError},
		{"proxy not listening", &pool.Error{Phase: pool.PhaseProxy, Err: &dialer.Error{Step: dialer.StepProxy, Err: &net.OpError{Op: "dial", Err: &os.SyscallError{Syscall: "connect", Err: syscall.ECONNREFUSED}}}}, codes.Unavailable, ReasonProxyError},
		{"proxy name unknown", &pool.Error{Phase: pool.PhaseProxy, Err: &dialer.Error{Step: dialer.StepProxy, Err: &net.DNSError{Err: "no such host", Name: "proxy.onion", IsNotFound: true}}}, codes.Unavailable, ReasonProxyError},
		{"untrusted certificate", &pool.Error{Phase: pool.PhaseTLS, Err: &dialer.Error{Step: dialer.StepTLS, Err: x509.UnknownAuthorityError{}}}, codes.Unavailable, ReasonTLSError},
		{"egress denied", &pool.Error{Phase: pool.PhaseDial, Err: &dialer.Error{Step: dialer.StepEgress, Err: dialer.ErrEgressDenied}}, codes.PermissionDenied, ReasonEgressDenied},
		{"engine closed", pool.ErrClosed, codes.Unavailable, ReasonShuttingDown},
		{"caller cancel", &pool.Error{Phase: pool.PhaseResponseHeader, Err: context.Canceled}, codes.Canceled, ReasonCanceled},
		{"anything else", errors.New("something odd"), codes.Unavailable, ReasonUpstreamError},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := statusFromError(tt.err)
			code, reason := codeAndReason(st)
			if code != tt.code || reason != tt.reason {
				t.Errorf("statusFromError(%v) = %v %s, want %v %s", tt.err, code, reason, tt.code, tt.reason)
			}
			var pe *pool.Error
			sent := errors.As(tt.err, &pe) && pe.Sent
			if got := errorInfo(st).GetMetadata()[MetadataMayHaveReachedUpstream]; (got == "true") != sent {
				t.Errorf("%s = %q, want it set: %v", MetadataMayHaveReachedUpstream, got, sent)
			}
		})
	}
}

func TestStatusFromErrorKeepsAStatusAsItIs(t *testing.T) {
	in := status.Error(codes.NotFound, "no such policy")
	if got := statusFromError(in); got != in {
		t.Errorf("statusFromError rewrote %v into %v", in, got)
	}
}

func TestStreamResetsAreUnavailableOnlyWhenRefusedUnprocessed(t *testing.T) {
	refused := &pool.StreamResetError{Code: 0x7}
	tests := []struct {
		name    string
		err     error
		code    codes.Code
		reached bool   // may_have_reached_upstream
		h2Code  string // h2_error_code
		message string // what the caller reads after "phase host: "
	}{
		{"refused after the headers went out", &pool.Error{Phase: pool.PhaseResponseHeader, Host: "h:443", Err: refused, Sent: true},
			codes.Unavailable, false, "REFUSED_STREAM", "refused the HTTP/2 stream (REFUSED_STREAM) without processing the request"},
		{"refused with nothing recorded as sent", &pool.Error{Phase: pool.PhaseWrite, Host: "h:443", Err: refused},
			codes.Unavailable, false, "REFUSED_STREAM", "refused the HTTP/2 stream"},
		{"refused, not wrapped", refused, codes.Unavailable, false, "REFUSED_STREAM", "refused the HTTP/2 stream"},
		{"refused after the response head arrived", &pool.Error{Phase: pool.PhaseBody, Host: "h:443", Err: refused, Sent: true},
			codes.Aborted, true, "REFUSED_STREAM", "reset the HTTP/2 stream with REFUSED_STREAM"},
		{"a GOAWAY's REFUSED_STREAM code promises nothing of this stream",
			&pool.Error{Phase: pool.PhaseResponseHeader, Host: "h:443", Err: &pool.StreamResetError{Code: 0x7, GoAway: true}, Sent: true},
			codes.Aborted, true, "REFUSED_STREAM", "ended the HTTP/2 connection with GOAWAY REFUSED_STREAM"},
		{"a GOAWAY that ended the stream", &pool.Error{Phase: pool.PhaseResponseHeader, Host: "h:443", Err: &pool.StreamResetError{Code: 0x0, GoAway: true}, Sent: true},
			codes.Aborted, true, "NO_ERROR", "ended the HTTP/2 connection with GOAWAY NO_ERROR"},
		{"reset with CANCEL by the upstream", &pool.Error{Phase: pool.PhaseResponseHeader, Host: "h:443", Err: &pool.StreamResetError{Code: 0x8}, Sent: true},
			codes.Aborted, true, "CANCEL", "reset the HTTP/2 stream with CANCEL"},
		{"reset in the body", &pool.Error{Phase: pool.PhaseBody, Host: "h:443", Err: &pool.StreamResetError{Code: 0x2}, Sent: true},
			codes.Aborted, true, "INTERNAL_ERROR", "reset the HTTP/2 stream with INTERNAL_ERROR"},
		{"a reset the engine recorded as unsent was still an opened stream",
			&pool.Error{Phase: pool.PhaseWrite, Host: "h:443", Err: &pool.StreamResetError{Code: 0x1}},
			codes.Aborted, true, "PROTOCOL_ERROR", "reset the HTTP/2 stream with PROTOCOL_ERROR"},
		{"a code RFC 9113 does not define", &pool.Error{Phase: pool.PhaseResponseHeader, Host: "h:443", Err: &pool.StreamResetError{Code: 0x1f}, Sent: true},
			codes.Aborted, true, "0x1f", "reset the HTTP/2 stream with 0x1f"},
		{"a timeout is a timeout whatever reset underneath",
			&pool.Error{Phase: pool.PhaseResponseHeader, Host: "h:443", Err: errors.Join(refused, os.ErrDeadlineExceeded), Sent: true},
			codes.DeadlineExceeded, true, "REFUSED_STREAM", "no response head in time"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := statusFromError(tt.err)
			code, reason := codeAndReason(st)
			wantReason := ReasonUpstreamReset
			if tt.code == codes.DeadlineExceeded {
				wantReason = ReasonResponseHeaderTimeout
			}
			if code != tt.code || reason != wantReason {
				t.Errorf("statusFromError(%v) = %v %s, want %v %s", tt.err, code, reason, tt.code, wantReason)
			}
			md := errorInfo(st).GetMetadata()
			if got := md[MetadataMayHaveReachedUpstream]; (got == "true") != tt.reached {
				t.Errorf("%s = %q, want it set: %v", MetadataMayHaveReachedUpstream, got, tt.reached)
			}
			if tt.reached && code == codes.Unavailable {
				t.Error("UNAVAILABLE for a request that may have reached the upstream")
			}
			if got := md[MetadataH2ErrorCode]; got != tt.h2Code {
				t.Errorf("%s = %q, want %q", MetadataH2ErrorCode, got, tt.h2Code)
			}
			msg := status.Convert(st).Message()
			if !strings.Contains(msg, tt.message) || strings.Contains(msg, "pool:") {
				t.Errorf("message %q, want it to say %q in the caller's terms", msg, tt.message)
			}
		})
	}
}
