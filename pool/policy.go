package pool

import (
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Policy is one level of settings: the default policy or a host override.
// A nil field is unset and inherits: a host policy from the default policy,
// the default policy from DefaultPolicy. Pointers give presence, so an
// override can set a field to zero ("no limit") and still be told apart
// from one that leaves it alone. A Policy is treated as a value: functions
// in this package never write through its pointers.
type Policy struct {
	// DialTimeout bounds resolving, connecting and (through a proxy) the
	// CONNECT exchange. Must be positive: a dial with no bound would let one
	// dead address hold a waiter until its own deadline.
	DialTimeout *time.Duration
	// TLSHandshakeTimeout bounds the TLS handshake after connect. Must be
	// positive.
	TLSHandshakeTimeout *time.Duration
	// TCPKeepAlive sets the TCP keep-alive probes; its fields inherit one by
	// one.
	TCPKeepAlive TCPKeepAlive
	// ResponseHeaderTimeout bounds the time from the request being written
	// to the response head being read. 0 means no bound.
	ResponseHeaderTimeout *time.Duration
	// RequestTimeout bounds a whole request, from RoundTrip to the end of
	// the response body, unless the caller's context ends sooner. 0 means
	// no bound.
	RequestTimeout *time.Duration
	// ExpectContinueTimeout is how long a request with "Expect:
	// 100-continue" waits for the 100 Continue before sending its body
	// anyway. 0 sends the body at once.
	ExpectContinueTimeout *time.Duration
	// BodyReadTimeout bounds the wait for the next bytes of a response body:
	// an upstream that sends nothing for this long fails the request, so
	// one that drips a byte now and then cannot pin a conn for as long as
	// the caller waits. Time the caller takes between reads does not count.
	// 0 means no bound.
	BodyReadTimeout *time.Duration
	// IdleConnTimeout closes a connection left idle this long. 0 means never.
	IdleConnTimeout *time.Duration
	// MaxConnLifetime retires a connection once it is this old, after its
	// current request. 0 means no limit.
	MaxConnLifetime *time.Duration
	// MaxRequestsPerConn retires a connection after this many requests.
	// 0 means no limit.
	MaxRequestsPerConn *uint32
	// MaxIdleConnsPerHost is how many idle connections a host pool keeps;
	// more are closed as they go idle. 0 keeps none.
	MaxIdleConnsPerHost *uint32
	// MaxConnsPerHost caps a host pool's connections, counting active, idle
	// and dialing ones. 0 means no limit.
	MaxConnsPerHost *uint32
	// MaxPendingRequests is how many requests may wait per host for a
	// connection, whether MaxConnsPerHost is reached or the engine's
	// MaxDialsPerHost holds back new dials. A request with a dial of its
	// own does not count. 0 means none may wait: one more fails at once
	// with ErrQueueFull.
	MaxPendingRequests *uint32
	// MaxRetries is how many times an idempotent request is retried after a
	// reused connection fails before any response byte. 0 never retries.
	// A request the server did not process at all (an HTTP/2 stream it
	// refused, or one above its GOAWAY's last stream id) is retried apart
	// from this budget, whatever its method, up to 4 times with a growing
	// pause, when its body can be sent again.
	MaxRetries *uint32
	// MaxResponseHeaderBytes bounds a response head (status line and
	// headers), in bytes. Must be positive.
	MaxResponseHeaderBytes *uint32
	// DisableKeepAlives gives every request its own connection, closed after
	// the response; nothing is pooled.
	DisableKeepAlives *bool
	// ProxyURL picks the proxy: "" means the HTTP_PROXY, HTTPS_PROXY and
	// NO_PROXY environment variables decide, "direct" means no proxy, and
	// otherwise it is an http:// or https:// URL naming the proxy (user info
	// becomes Proxy-Authorization).
	ProxyURL *string
	// MaxIdleConns caps idle connections across all hosts, closing the
	// least recently used first. 0 means no limit. Only the default policy
	// may set it, because it is one budget shared by every host.
	MaxIdleConns *uint32
	// PropagateTraceContext lets a tracing caller of the engine (poold's
	// server) send the trace context upstream in traceparent and
	// tracestate headers. The engine itself adds no header: it only
	// carries the setting, resolved per host like every other field.
	PropagateTraceContext *bool
	// Protocols picks the HTTP versions new conns may speak. A change
	// applies to conns dialled after it; open ones finish their streams.
	Protocols *Protocols
	// MaxConcurrentStreams caps the streams one HTTP/2 conn carries at
	// once, below the peer's SETTINGS_MAX_CONCURRENT_STREAMS. 0 means the
	// peer's limit alone.
	MaxConcurrentStreams *uint32
	// StrictMaxConcurrentStreams makes a request that finds every HTTP/2
	// conn at its stream limit wait in the host's queue for a free stream
	// instead of dialling another conn.
	StrictMaxConcurrentStreams *bool
	// H2ReadIdleTimeout is how long an HTTP/2 conn may read nothing before
	// the engine sends it a PING. 0 sends none.
	H2ReadIdleTimeout *time.Duration
	// H2PingTimeout is how long a PING (and any write to an HTTP/2 conn)
	// may go unanswered before the conn is closed. Must be positive.
	H2PingTimeout *time.Duration
}

// Protocols is the set of HTTP versions a host's new conns may speak.
type Protocols uint8

const (
	// ProtocolsH2Preferred offers h2 and http/1.1 by ALPN over TLS, the
	// server choosing; plaintext conns speak HTTP/1.1.
	ProtocolsH2Preferred Protocols = iota + 1
	// ProtocolsHTTP1 speaks HTTP/1.1 only.
	ProtocolsHTTP1
	// ProtocolsH2 speaks HTTP/2 only: over TLS a server whose ALPN does
	// not pick h2 fails the dial; over plaintext it is h2c with prior
	// knowledge.
	ProtocolsH2
	// ProtocolsH2C speaks HTTP/2 with prior knowledge over plaintext
	// ("h2c"); over TLS it is ProtocolsH2Preferred.
	ProtocolsH2C
)

// String gives the name the policy API uses.
func (p Protocols) String() string {
	switch p {
	case ProtocolsH2Preferred:
		return "h2_preferred"
	case ProtocolsHTTP1:
		return "http1"
	case ProtocolsH2:
		return "h2"
	case ProtocolsH2C:
		return "h2c"
	}
	return "Protocols(" + strconv.Itoa(int(p)) + ")"
}

// TCPKeepAlive sets the TCP keep-alive probes on upstream sockets. A change
// is applied to open sockets at once. A nil field inherits.
type TCPKeepAlive struct {
	// Enabled turns the probes on or off.
	Enabled *bool
	// Idle is the time a connection is quiet before the first probe. Must
	// be positive; the kernel counts whole seconds (rounded up) and accepts
	// at most 32767s.
	Idle *time.Duration
	// Interval is the time between probes. Must be positive; whole seconds,
	// at most 32767s.
	Interval *time.Duration
	// Count is how many unanswered probes drop the connection. Must be
	// positive; at most 127.
	Count *uint32
}

// DefaultPolicy returns the built-in settings, chosen for a sidecar that
// talks to a handful of upstreams on behalf of short-lived callers. Every
// field is set:
//
//   - DialTimeout 5s and TLSHandshakeTimeout 10s;
//   - TCPKeepAlive enabled, Idle 30s, Interval 10s, Count 3, so a dead peer
//     behind a silent NAT is noticed in about a minute;
//   - ResponseHeaderTimeout 30s, RequestTimeout 0 (none: the caller's
//     deadline rules), ExpectContinueTimeout 1s, BodyReadTimeout 5m (as
//     Envoy's stream idle timeout: long enough for a slow stream with
//     keep-alive comments, short enough to free a conn a dead one holds);
//   - IdleConnTimeout 90s, MaxConnLifetime 0 (unlimited),
//     MaxRequestsPerConn 0 (unlimited);
//   - MaxIdleConnsPerHost 64, MaxConnsPerHost 0 (unlimited),
//     MaxPendingRequests 1024, MaxRetries 1;
//   - MaxResponseHeaderBytes 1 MiB;
//   - DisableKeepAlives false;
//   - ProxyURL "" (the environment decides);
//   - MaxIdleConns 1024;
//   - PropagateTraceContext false, since the headers would change what
//     the caller sent;
//   - Protocols ProtocolsH2Preferred, MaxConcurrentStreams 0 (the peer's),
//     StrictMaxConcurrentStreams false;
//   - H2ReadIdleTimeout 30s and H2PingTimeout 15s, so a silent HTTP/2
//     peer is found within a minute even with TCP keep-alive off.
//
// Each call returns fresh pointers, so the result may be changed freely.
func DefaultPolicy() Policy {
	return Policy{
		DialTimeout:         policyPtr(5 * time.Second),
		TLSHandshakeTimeout: policyPtr(10 * time.Second),
		TCPKeepAlive: TCPKeepAlive{
			Enabled:  policyPtr(true),
			Idle:     policyPtr(30 * time.Second),
			Interval: policyPtr(10 * time.Second),
			Count:    policyPtr(uint32(3)),
		},
		ResponseHeaderTimeout:      policyPtr(30 * time.Second),
		RequestTimeout:             policyPtr(time.Duration(0)),
		ExpectContinueTimeout:      policyPtr(time.Second),
		BodyReadTimeout:            policyPtr(5 * time.Minute),
		IdleConnTimeout:            policyPtr(90 * time.Second),
		MaxConnLifetime:            policyPtr(time.Duration(0)),
		MaxRequestsPerConn:         policyPtr(uint32(0)),
		MaxIdleConnsPerHost:        policyPtr(uint32(64)),
		MaxConnsPerHost:            policyPtr(uint32(0)),
		MaxPendingRequests:         policyPtr(uint32(1024)),
		MaxRetries:                 policyPtr(uint32(1)),
		MaxResponseHeaderBytes:     policyPtr(uint32(1 << 20)),
		DisableKeepAlives:          policyPtr(false),
		ProxyURL:                   policyPtr(""),
		MaxIdleConns:               policyPtr(uint32(1024)),
		PropagateTraceContext:      policyPtr(false),
		Protocols:                  policyPtr(ProtocolsH2Preferred),
		MaxConcurrentStreams:       policyPtr(uint32(0)),
		StrictMaxConcurrentStreams: policyPtr(false),
		H2ReadIdleTimeout:          policyPtr(30 * time.Second),
		H2PingTimeout:              policyPtr(15 * time.Second),
	}
}

// Merge returns p with every field that over sets replaced by over's value.
// The result shares no pointers with p or over, so it stays intact whatever
// the caller later does to either.
func (p Policy) Merge(over Policy) Policy {
	return policyMerge(p, over).clone()
}

// policyMerge is Merge without the copy: the result aliases p and over.
// Resolve uses it because it only reads the result.
func policyMerge(p, over Policy) Policy {
	return Policy{
		DialTimeout:         policyOver(p.DialTimeout, over.DialTimeout),
		TLSHandshakeTimeout: policyOver(p.TLSHandshakeTimeout, over.TLSHandshakeTimeout),
		TCPKeepAlive: TCPKeepAlive{
			Enabled:  policyOver(p.TCPKeepAlive.Enabled, over.TCPKeepAlive.Enabled),
			Idle:     policyOver(p.TCPKeepAlive.Idle, over.TCPKeepAlive.Idle),
			Interval: policyOver(p.TCPKeepAlive.Interval, over.TCPKeepAlive.Interval),
			Count:    policyOver(p.TCPKeepAlive.Count, over.TCPKeepAlive.Count),
		},
		ResponseHeaderTimeout:      policyOver(p.ResponseHeaderTimeout, over.ResponseHeaderTimeout),
		RequestTimeout:             policyOver(p.RequestTimeout, over.RequestTimeout),
		ExpectContinueTimeout:      policyOver(p.ExpectContinueTimeout, over.ExpectContinueTimeout),
		BodyReadTimeout:            policyOver(p.BodyReadTimeout, over.BodyReadTimeout),
		IdleConnTimeout:            policyOver(p.IdleConnTimeout, over.IdleConnTimeout),
		MaxConnLifetime:            policyOver(p.MaxConnLifetime, over.MaxConnLifetime),
		MaxRequestsPerConn:         policyOver(p.MaxRequestsPerConn, over.MaxRequestsPerConn),
		MaxIdleConnsPerHost:        policyOver(p.MaxIdleConnsPerHost, over.MaxIdleConnsPerHost),
		MaxConnsPerHost:            policyOver(p.MaxConnsPerHost, over.MaxConnsPerHost),
		MaxPendingRequests:         policyOver(p.MaxPendingRequests, over.MaxPendingRequests),
		MaxRetries:                 policyOver(p.MaxRetries, over.MaxRetries),
		MaxResponseHeaderBytes:     policyOver(p.MaxResponseHeaderBytes, over.MaxResponseHeaderBytes),
		DisableKeepAlives:          policyOver(p.DisableKeepAlives, over.DisableKeepAlives),
		ProxyURL:                   policyOver(p.ProxyURL, over.ProxyURL),
		MaxIdleConns:               policyOver(p.MaxIdleConns, over.MaxIdleConns),
		PropagateTraceContext:      policyOver(p.PropagateTraceContext, over.PropagateTraceContext),
		Protocols:                  policyOver(p.Protocols, over.Protocols),
		MaxConcurrentStreams:       policyOver(p.MaxConcurrentStreams, over.MaxConcurrentStreams),
		StrictMaxConcurrentStreams: policyOver(p.StrictMaxConcurrentStreams, over.StrictMaxConcurrentStreams),
		H2ReadIdleTimeout:          policyOver(p.H2ReadIdleTimeout, over.H2ReadIdleTimeout),
		H2PingTimeout:              policyOver(p.H2PingTimeout, over.H2PingTimeout),
	}
}

// clone returns p with every set field copied to a pointer of its own.
func (p Policy) clone() Policy {
	return Policy{
		DialTimeout:         policyCopy(p.DialTimeout),
		TLSHandshakeTimeout: policyCopy(p.TLSHandshakeTimeout),
		TCPKeepAlive: TCPKeepAlive{
			Enabled:  policyCopy(p.TCPKeepAlive.Enabled),
			Idle:     policyCopy(p.TCPKeepAlive.Idle),
			Interval: policyCopy(p.TCPKeepAlive.Interval),
			Count:    policyCopy(p.TCPKeepAlive.Count),
		},
		ResponseHeaderTimeout:      policyCopy(p.ResponseHeaderTimeout),
		RequestTimeout:             policyCopy(p.RequestTimeout),
		ExpectContinueTimeout:      policyCopy(p.ExpectContinueTimeout),
		BodyReadTimeout:            policyCopy(p.BodyReadTimeout),
		IdleConnTimeout:            policyCopy(p.IdleConnTimeout),
		MaxConnLifetime:            policyCopy(p.MaxConnLifetime),
		MaxRequestsPerConn:         policyCopy(p.MaxRequestsPerConn),
		MaxIdleConnsPerHost:        policyCopy(p.MaxIdleConnsPerHost),
		MaxConnsPerHost:            policyCopy(p.MaxConnsPerHost),
		MaxPendingRequests:         policyCopy(p.MaxPendingRequests),
		MaxRetries:                 policyCopy(p.MaxRetries),
		MaxResponseHeaderBytes:     policyCopy(p.MaxResponseHeaderBytes),
		DisableKeepAlives:          policyCopy(p.DisableKeepAlives),
		ProxyURL:                   policyCopy(p.ProxyURL),
		MaxIdleConns:               policyCopy(p.MaxIdleConns),
		PropagateTraceContext:      policyCopy(p.PropagateTraceContext),
		Protocols:                  policyCopy(p.Protocols),
		MaxConcurrentStreams:       policyCopy(p.MaxConcurrentStreams),
		StrictMaxConcurrentStreams: policyCopy(p.StrictMaxConcurrentStreams),
		H2ReadIdleTimeout:          policyCopy(p.H2ReadIdleTimeout),
		H2PingTimeout:              policyCopy(p.H2PingTimeout),
	}
}

func policyPtr[T any](v T) *T { return &v }

func policyCopy[T any](p *T) *T {
	if p == nil {
		return nil
	}
	v := *p
	return &v
}

func policyOver[T any](base, over *T) *T {
	if over != nil {
		return over
	}
	return base
}

// PolicyError is one invalid field of one policy. Field and Reason are
// worded for an operator, and Field uses the protobuf field path so that
// server can report it as a field violation without a translation table.
type PolicyError struct {
	// Host is the host pattern of the policy at fault; "" is the default
	// policy.
	Host string
	// Field is the snake_case field path, such as "dial_timeout" or
	// "tcp_keepalive.idle"; "name" when the host pattern itself is invalid.
	Field string
	// Reason says what is wrong and, where it helps, the value given.
	Reason string
}

// Error reads like "policies/api.example.com: dial_timeout: must be
// positive, got -1s", matching the resource names of the policy API.
func (e *PolicyError) Error() string {
	name := policyResourceName(e.Host)
	if e.Host == "" && e.Field == "name" {
		// An empty host pattern, not the default policy.
		name = "policies/"
	}
	return name + ": " + e.Field + ": " + e.Reason
}

// policyResourceName quotes a host that could garble a log line, since an
// invalid pattern can hold anything a caller sent.
func policyResourceName(host string) string {
	if host == "" {
		return "policies/default"
	}
	for _, r := range host {
		if r <= ' ' || r >= 0x7f || r == '"' {
			return "policies/" + strconv.Quote(host)
		}
	}
	return "policies/" + host
}

// Limits beyond which a value is a mistake rather than a choice.
const (
	// policyMaxDuration bounds timeouts and the connection lifetime; longer
	// ones are better written as 0 (none).
	policyMaxDuration = 24 * time.Hour
	// policyMaxKeepAlive and policyMaxKeepAliveCount are the largest values
	// Linux takes for TCP_KEEPIDLE/TCP_KEEPINTVL and TCP_KEEPCNT; larger
	// ones would fail when applied to a live socket.
	policyMaxKeepAlive      = 32767 * time.Second
	policyMaxKeepAliveCount = 127
	// policyMaxHeaderBytes bounds MaxResponseHeaderBytes: a head this large
	// is an attack or a bug, and each one is buffered in memory.
	policyMaxHeaderBytes = 64 << 20
	// policyMaxRetries bounds MaxRetries, since each retry multiplies the
	// load on an upstream that is already failing.
	policyMaxRetries = 10
)

// policyValidator collects the errors of one policy.
type policyValidator struct {
	host string
	errs []error
}

func (v *policyValidator) fail(field, format string, args ...any) {
	v.errs = append(v.errs, &PolicyError{Host: v.host, Field: field, Reason: fmt.Sprintf(format, args...)})
}

// duration checks a set duration against [0, limit], or (0, limit] when
// zero means nothing useful for the field.
func (v *policyValidator) duration(field string, d *time.Duration, positive bool, limit time.Duration, limitText string) {
	switch {
	case d == nil:
	case positive && *d <= 0:
		v.fail(field, "must be positive, got %v", *d)
	case *d < 0:
		v.fail(field, "must not be negative, got %v", *d)
	case *d > limit:
		v.fail(field, "must be at most %s, got %v", limitText, *d)
	}
}

// validate checks the fields p sets; unset fields are always valid.
// isDefault tells whether p is the default policy, which alone may set
// MaxIdleConns.
func (p Policy) validate(host string, isDefault bool) []error {
	v := policyValidator{host: host}
	v.duration("dial_timeout", p.DialTimeout, true, policyMaxDuration, "24h")
	v.duration("tls_handshake_timeout", p.TLSHandshakeTimeout, true, policyMaxDuration, "24h")
	ka := p.TCPKeepAlive
	v.duration("tcp_keepalive.idle", ka.Idle, true, policyMaxKeepAlive, "32767s")
	v.duration("tcp_keepalive.interval", ka.Interval, true, policyMaxKeepAlive, "32767s")
	if c := ka.Count; c != nil && (*c == 0 || *c > policyMaxKeepAliveCount) {
		v.fail("tcp_keepalive.count", "must be from 1 to %d, got %d", policyMaxKeepAliveCount, *c)
	}
	v.duration("response_header_timeout", p.ResponseHeaderTimeout, false, policyMaxDuration, "24h")
	v.duration("request_timeout", p.RequestTimeout, false, policyMaxDuration, "24h")
	v.duration("expect_continue_timeout", p.ExpectContinueTimeout, false, policyMaxDuration, "24h")
	v.duration("body_read_timeout", p.BodyReadTimeout, false, policyMaxDuration, "24h")
	v.duration("idle_conn_timeout", p.IdleConnTimeout, false, policyMaxDuration, "24h")
	v.duration("max_conn_lifetime", p.MaxConnLifetime, false, policyMaxDuration, "24h")
	if n := p.MaxRetries; n != nil && *n > policyMaxRetries {
		v.fail("max_retries", "must be at most %d, got %d", policyMaxRetries, *n)
	}
	if n := p.MaxResponseHeaderBytes; n != nil && (*n == 0 || *n > policyMaxHeaderBytes) {
		v.fail("max_response_header_bytes", "must be from 1 to 67108864 (64 MiB), got %d", *n)
	}
	if p.ProxyURL != nil {
		if reason := proxyURLReason(*p.ProxyURL); reason != "" {
			v.fail("proxy_url", "%s", reason)
		}
	}
	if pr := p.Protocols; pr != nil && (*pr < ProtocolsH2Preferred || *pr > ProtocolsH2C) {
		v.fail("protocols", "must be one of h2_preferred, http1, h2, h2c, got %d", *pr)
	}
	v.duration("h2_read_idle_timeout", p.H2ReadIdleTimeout, false, policyMaxDuration, "24h")
	v.duration("h2_ping_timeout", p.H2PingTimeout, true, policyMaxDuration, "24h")
	if p.MaxIdleConns != nil && !isDefault {
		v.fail("max_idle_conns", "only allowed in policies/default")
	}
	return v.errs
}

// proxyURLReason says what is wrong with a ProxyURL value, or "" when
// nothing is. It never echoes the whole value: a proxy URL may carry a
// password.
func proxyURLReason(s string) string {
	if s == "" || s == "direct" {
		return ""
	}
	const want = `must be "direct" or an absolute http:// or https:// URL such as http://proxy:3128`
	if strings.ContainsFunc(s, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return "must not contain spaces or control characters"
	}
	u, err := url.Parse(s)
	if err != nil || u.Scheme == "" || !strings.Contains(s, "://") {
		// "proxy:3128" parses as scheme "proxy"; naming that scheme
		// would mislead.
		return want
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Sprintf("scheme must be http or https, got %q", u.Scheme)
	}
	if u.Opaque != "" || u.Host == "" || u.Hostname() == "" {
		return "must name the proxy host, as in " + u.Scheme + "://proxy:3128"
	}
	if port := u.Port(); port != "" || strings.HasSuffix(u.Host, ":") {
		if _, ok := parsePort(port); !ok {
			return fmt.Sprintf("port must be a number from 1 to 65535 without leading zeros, got %q", port)
		}
	}
	if u.Path != "" && u.Path != "/" {
		return fmt.Sprintf("must not have a path, got %q", u.Path)
	}
	if u.RawQuery != "" || u.ForceQuery {
		return "must not have a query"
	}
	if u.Fragment != "" || strings.Contains(s, "#") {
		return "must not have a fragment"
	}
	return ""
}

// parsePort accepts a port as written in a host pattern: decimal, 1 to
// 65535, no sign and no leading zero, so each port has one spelling.
func parsePort(s string) (uint16, bool) {
	if s == "" || len(s) > 5 || s[0] == '0' {
		return 0, false
	}
	n := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	if n > 65535 {
		return 0, false
	}
	return uint16(n), true
}
