package server

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"

	"github.com/poold/poold/dialer"
	"github.com/poold/poold/pool"
)

// callerMessage describes a failed request in terms any caller may see:
// the phase, the host as the caller named it and what went wrong. The
// errors underneath name the resolved address, the resolver, poold's own
// local port and the egress rule that matched; those go to the log only.
func callerMessage(err error, reason string) string {
	var perr *pool.Error
	if errors.As(err, &perr) && perr.Host != "" {
		return string(perr.Phase) + " " + perr.Host + ": " + describeFailure(err, reason)
	}
	if errors.As(err, &perr) {
		return string(perr.Phase) + ": " + describeFailure(err, reason)
	}
	return describeFailure(err, reason)
}

// describeFailure says what went wrong, for reason's row of the README's
// error table. Where a cause's own text is safe (a TLS verdict, the
// upstream's malformed bytes) it is kept: it is what a caller needs to fix
// the call.
func describeFailure(err error, reason string) string {
	switch reason {
	case ReasonEgressDenied:
		if d := (*dialer.Denial)(nil); errors.As(err, &d) {
			return "egress denied by the " + d.RuleSet + " rules: " + d.Reason
		}
		return "egress denied"
	case ReasonOverloaded:
		if ob := (*errBufferBudget)(nil); errors.As(err, &ob) {
			return ob.Error()
		}
	case ReasonQueueFull:
		return "the host's wait queue is full (max_pending_requests)"
	case ReasonBodyTooLarge:
		if tl := (*errBodyTooLarge)(nil); errors.As(err, &tl) {
			return tl.Error()
		}
	case ReasonDialTimeout:
		return "connecting timed out"
	case ReasonTLSHandshakeTimeout:
		return "the TLS handshake timed out"
	case ReasonResponseHeaderTimeout:
		return "no response head in time"
	case ReasonRequestTimeout:
		return "the request timed out"
	case ReasonBodyReadTimeout:
		return "the upstream sent no body bytes within body_read_timeout"
	case ReasonDNSError:
		if de := (*net.DNSError)(nil); errors.As(err, &de) {
			switch {
			case de.IsNotFound:
				return "the host name does not resolve: no such host"
			case de.IsTimeout:
				return "resolving the host name timed out"
			}
		}
		return "resolving the host name failed"
	case ReasonConnectionRefused:
		return "the upstream refused the connection"
	case ReasonUpstreamReset:
		if reset := (*pool.StreamResetError)(nil); errors.As(err, &reset) {
			if reset.GoAway {
				return "the upstream ended the HTTP/2 connection with GOAWAY " + reset.CodeName() + " before the request completed"
			}
			if refusedUnprocessed(err) {
				return "the upstream refused the HTTP/2 stream (REFUSED_STREAM) without processing the request"
			}
			return "the upstream reset the HTTP/2 stream with " + reset.CodeName()
		}
		return "the upstream closed or reset the connection"
	case ReasonUpstreamProtocolError:
		// The engine's protocol errors quote the upstream's bytes and say
		// what is wrong with them; a socket error would name addresses.
		var perr *pool.Error
		if errors.As(err, &perr) && errors.Is(perr.Err, pool.ErrProtocol) && !errors.As(err, new(*net.OpError)) {
			return perr.Err.Error()
		}
		return "the upstream sent a malformed response"
	case ReasonTLSError:
		return tlsFailure(err)
	case ReasonProxyError:
		return "connecting through the proxy failed"
	case ReasonShuttingDown:
		return "poold is shutting down"
	case ReasonCanceled:
		return "the call was cancelled"
	}
	return "the request failed"
}

// tlsFailure is the TLS verdict itself (an untrusted certificate, a name
// mismatch, an alert), which names certificates, not addresses.
func tlsFailure(err error) string {
	var certErr *tls.CertificateVerificationError
	var hostnameErr x509.HostnameError
	var unknownAuth x509.UnknownAuthorityError
	var alertErr tls.AlertError
	var recordErr tls.RecordHeaderError
	switch {
	case errors.As(err, &certErr):
		return certErr.Error()
	case errors.As(err, &hostnameErr):
		return hostnameErr.Error()
	case errors.As(err, &unknownAuth):
		return unknownAuth.Error()
	case errors.As(err, &alertErr):
		return "the upstream sent TLS alert: " + alertErr.Error()
	case errors.As(err, &recordErr):
		return "the upstream does not speak TLS: " + recordErr.Msg
	}
	return "the TLS handshake failed"
}
