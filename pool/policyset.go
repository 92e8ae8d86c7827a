package pool

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
)

// PolicySet is the default policy plus per-host overrides: the value the
// engine swaps in as one immutable snapshot. Use Clone before changing a
// set that may already be in use.
type PolicySet struct {
	// Default applies to every host; its unset fields come from
	// DefaultPolicy.
	Default Policy
	// Hosts maps a host pattern to its override; see ValidateHostPattern
	// for the forms a key may take. Keys are lowercase, as
	// ValidateHostPattern demands, so lookups need no folding. Unset fields
	// of an override come from Default. nil means no overrides.
	Hosts map[string]Policy
}

// Validate reports every invalid field of every policy in s, default first
// and then hosts by pattern, as *PolicyError values: the error itself when
// there is one, errors.Join of them when there are more (errors.As finds the
// first). nil means s can be used as is.
func (s PolicySet) Validate() error {
	errs := s.Default.validate("", true)
	for _, host := range slices.Sorted(maps.Keys(s.Hosts)) {
		if reason := hostPatternReason(host); reason != "" {
			errs = append(errs, &PolicyError{Host: host, Field: "name", Reason: reason})
		}
		errs = append(errs, s.Hosts[host].validate(host, false)...)
	}
	switch len(errs) {
	case 0:
		return nil
	case 1:
		return errs[0]
	default:
		return errors.Join(errs...)
	}
}

// Clone returns a deep copy of s: no map or pointer is shared, so the copy
// can be edited while s stays in use as a snapshot.
func (s PolicySet) Clone() PolicySet {
	c := PolicySet{Default: s.Default.clone()}
	if s.Hosts != nil {
		c.Hosts = make(map[string]Policy, len(s.Hosts))
		for k, p := range s.Hosts {
			c.Hosts[k] = p.clone()
		}
	}
	return c
}

// Effective is a fully resolved policy, every field a plain value. The
// meaning of each value, zero included, is that of the Policy field of the
// same name.
type Effective struct {
	// Source names the policy that matched: "default" or a host pattern such
	// as "*.example.com".
	Source string

	DialTimeout           time.Duration // > 0
	TLSHandshakeTimeout   time.Duration // > 0
	ResponseHeaderTimeout time.Duration // 0 = none
	RequestTimeout        time.Duration // 0 = none
	ExpectContinueTimeout time.Duration // 0 = send the body at once
	BodyReadTimeout       time.Duration // 0 = none
	IdleConnTimeout       time.Duration // 0 = never
	MaxConnLifetime       time.Duration // 0 = unlimited

	// KeepAlive is TCPKeepAlive in the form net.Dialer and
	// net.TCPConn.SetKeepAliveConfig take; Idle, Interval and Count are
	// always positive.
	KeepAlive net.KeepAliveConfig

	MaxRequestsPerConn     uint32 // 0 = unlimited
	MaxIdleConnsPerHost    uint32 // 0 = keep none idle
	MaxConnsPerHost        uint32 // 0 = unlimited
	MaxPendingRequests     uint32 // 0 = none may wait
	MaxRetries             uint32 // 0 = never retry
	MaxResponseHeaderBytes uint32 // bytes, > 0

	DisableKeepAlives bool

	// ProxyURL is "" (the environment decides), "direct" or the proxy URL.
	ProxyURL string

	// MaxIdleConns is the idle budget across all hosts, always taken from
	// the default policy. 0 = unlimited.
	MaxIdleConns uint32

	PropagateTraceContext bool

	Protocols                  Protocols // never 0 once resolved
	MaxConcurrentStreams       uint32    // 0 = the peer's limit
	StrictMaxConcurrentStreams bool
	H2ReadIdleTimeout          time.Duration // 0 = no PINGs
	H2PingTimeout              time.Duration // > 0
}

// builtinPolicy is DefaultPolicy computed once for Resolve; never handed
// out, never written.
var builtinPolicy = DefaultPolicy()

// Resolve returns the policy for requests to host (a name or IP literal,
// without port; brackets around IPv6 are allowed) and port ("" matches no
// port-specific pattern). Host is matched case-insensitively, with a
// trailing dot dropped and IP literals in canonical form.
//
// The most specific pattern wins: "host:port", then "host", then the
// longest matching "*.suffix" ("*.example.com" matches "a.example.com" and
// "b.a.example.com", not "example.com"), else the default. Fields the winner
// leaves unset come from s.Default, then from DefaultPolicy; the less
// specific host patterns are not consulted, so a policy's effect never
// depends on another host's policy. Resolve expects a set that passed
// Validate; on any other it still returns, with unchecked values.
func (s PolicySet) Resolve(host, port string) Effective {
	base := policyMerge(builtinPolicy, s.Default)
	source, over := s.match(host, port)
	p := policyMerge(base, over)
	// The idle budget is global: a host cannot change it.
	p.MaxIdleConns = base.MaxIdleConns
	return effectiveFrom(source, p)
}

// match finds the most specific host policy for host and port.
func (s PolicySet) match(host, port string) (string, Policy) {
	if len(s.Hosts) == 0 {
		return "default", Policy{}
	}
	host, isIP := canonicalHost(host)
	if host == "" {
		return "default", Policy{}
	}
	if port != "" {
		if n, ok := parsePort(strings.TrimLeft(port, "0")); ok {
			port = strconv.Itoa(int(n))
		}
		key := net.JoinHostPort(host, port)
		if p, ok := s.Hosts[key]; ok {
			return key, p
		}
	}
	if p, ok := s.Hosts[host]; ok {
		return host, p
	}
	if isIP {
		return "default", Policy{}
	}
	// Try suffixes from the longest down, each after a dot that has a
	// label before it, so "*.example.com" never matches "example.com".
	for i := strings.IndexByte(host, '.'); i > 0; {
		key := "*" + host[i:]
		if p, ok := s.Hosts[key]; ok {
			return key, p
		}
		next := strings.IndexByte(host[i+1:], '.')
		if next < 0 {
			break
		}
		i += 1 + next
	}
	return "default", Policy{}
}

// canonicalHost puts a request host in the form host patterns are written
// in, and tells whether it is an IP literal.
func canonicalHost(host string) (string, bool) {
	if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
		host = host[1 : len(host)-1]
	}
	if a, err := netip.ParseAddr(host); err == nil {
		return a.WithZone("").String(), true
	}
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	return host, false
}

func effectiveFrom(source string, p Policy) Effective {
	ka := p.TCPKeepAlive
	return Effective{
		Source:                source,
		DialTimeout:           policyValue(p.DialTimeout),
		TLSHandshakeTimeout:   policyValue(p.TLSHandshakeTimeout),
		ResponseHeaderTimeout: policyValue(p.ResponseHeaderTimeout),
		RequestTimeout:        policyValue(p.RequestTimeout),
		ExpectContinueTimeout: policyValue(p.ExpectContinueTimeout),
		BodyReadTimeout:       policyValue(p.BodyReadTimeout),
		IdleConnTimeout:       policyValue(p.IdleConnTimeout),
		MaxConnLifetime:       policyValue(p.MaxConnLifetime),
		KeepAlive: net.KeepAliveConfig{
			Enable:   policyValue(ka.Enabled),
			Idle:     policyValue(ka.Idle),
			Interval: policyValue(ka.Interval),
			Count:    int(policyValue(ka.Count)),
		},
		MaxRequestsPerConn:         policyValue(p.MaxRequestsPerConn),
		MaxIdleConnsPerHost:        policyValue(p.MaxIdleConnsPerHost),
		MaxConnsPerHost:            policyValue(p.MaxConnsPerHost),
		MaxPendingRequests:         policyValue(p.MaxPendingRequests),
		MaxRetries:                 policyValue(p.MaxRetries),
		MaxResponseHeaderBytes:     policyValue(p.MaxResponseHeaderBytes),
		DisableKeepAlives:          policyValue(p.DisableKeepAlives),
		ProxyURL:                   policyValue(p.ProxyURL),
		MaxIdleConns:               policyValue(p.MaxIdleConns),
		PropagateTraceContext:      policyValue(p.PropagateTraceContext),
		Protocols:                  policyValue(p.Protocols),
		MaxConcurrentStreams:       policyValue(p.MaxConcurrentStreams),
		StrictMaxConcurrentStreams: policyValue(p.StrictMaxConcurrentStreams),
		H2ReadIdleTimeout:          policyValue(p.H2ReadIdleTimeout),
		H2PingTimeout:              policyValue(p.H2PingTimeout),
	}
}

func policyValue[T any](p *T) T {
	var v T
	if p != nil {
		v = *p
	}
	return v
}

// Policy returns e as a Policy with every field set, for showing the
// resolved settings in the same shape as stored ones.
func (e Effective) Policy() Policy {
	return Policy{
		DialTimeout:         policyPtr(e.DialTimeout),
		TLSHandshakeTimeout: policyPtr(e.TLSHandshakeTimeout),
		TCPKeepAlive: TCPKeepAlive{
			Enabled:  policyPtr(e.KeepAlive.Enable),
			Idle:     policyPtr(e.KeepAlive.Idle),
			Interval: policyPtr(e.KeepAlive.Interval),
			Count:    policyPtr(uint32(max(e.KeepAlive.Count, 0))),
		},
		ResponseHeaderTimeout:      policyPtr(e.ResponseHeaderTimeout),
		RequestTimeout:             policyPtr(e.RequestTimeout),
		ExpectContinueTimeout:      policyPtr(e.ExpectContinueTimeout),
		BodyReadTimeout:            policyPtr(e.BodyReadTimeout),
		IdleConnTimeout:            policyPtr(e.IdleConnTimeout),
		MaxConnLifetime:            policyPtr(e.MaxConnLifetime),
		MaxRequestsPerConn:         policyPtr(e.MaxRequestsPerConn),
		MaxIdleConnsPerHost:        policyPtr(e.MaxIdleConnsPerHost),
		MaxConnsPerHost:            policyPtr(e.MaxConnsPerHost),
		MaxPendingRequests:         policyPtr(e.MaxPendingRequests),
		MaxRetries:                 policyPtr(e.MaxRetries),
		MaxResponseHeaderBytes:     policyPtr(e.MaxResponseHeaderBytes),
		DisableKeepAlives:          policyPtr(e.DisableKeepAlives),
		ProxyURL:                   policyPtr(e.ProxyURL),
		MaxIdleConns:               policyPtr(e.MaxIdleConns),
		PropagateTraceContext:      policyPtr(e.PropagateTraceContext),
		Protocols:                  policyPtr(e.Protocols),
		MaxConcurrentStreams:       policyPtr(e.MaxConcurrentStreams),
		StrictMaxConcurrentStreams: policyPtr(e.StrictMaxConcurrentStreams),
		H2ReadIdleTimeout:          policyPtr(e.H2ReadIdleTimeout),
		H2PingTimeout:              policyPtr(e.H2PingTimeout),
	}
}

// ValidateHostPattern reports whether p may key PolicySet.Hosts. A pattern
// is one of:
//
//   - a host name: "api.example.com" (lowercase ASCII letters, digits, '-'
//     and '_'; labels of 1 to 63 characters not starting or ending in '-');
//   - an IP literal: "10.0.0.7", or IPv6 in canonical form without
//     brackets, "::1";
//   - either of those with a port from 1 to 65535: "api.example.com:8443",
//     "10.0.0.7:8080", "[::1]:8443";
//   - a suffix wildcard: "*." and a host name of one or more labels,
//     "*.example.com", with no port.
//
// The error is a *PolicyError with Field "name" whose Reason says what is
// wrong; nil means p is valid.
func ValidateHostPattern(p string) error {
	if reason := hostPatternReason(p); reason != "" {
		return &PolicyError{Host: p, Field: "name", Reason: reason}
	}
	return nil
}

// hostPatternReason says why p is not a valid host pattern, or "".
func hostPatternReason(p string) string {
	switch {
	case p == "":
		return "must not be empty"
	case len(p) > 260:
		return "is longer than any host pattern can be"
	case strings.Contains(p, "://"):
		return "must be a host, not a URL: drop the scheme"
	}
	for _, r := range p {
		if r <= ' ' || r == 0x7f {
			return "must not contain spaces or control characters"
		}
		if r > 0x7f {
			return "must be ASCII: write an international name in its xn-- form"
		}
	}
	switch {
	case strings.ContainsAny(p, "/\\"):
		return "must be a host, not a URL: drop the path"
	case strings.Contains(p, "@"):
		return "must not contain user info"
	case strings.ContainsAny(p, "?#"):
		return "must be a host, not a URL: drop the query or fragment"
	case strings.ToLower(p) != p:
		return "must be lowercase"
	case strings.Contains(p, "%"):
		return "must not have an IPv6 zone"
	}

	// Bracketed IPv6: only as "[addr]:port", since without a port the
	// brackets are noise and would give one address two spellings.
	if rest, ok := strings.CutPrefix(p, "["); ok {
		addr, port, ok := strings.Cut(rest, "]")
		if !ok {
			return `"[" without a matching "]"`
		}
		if port == "" {
			return "write an IPv6 address without a port with no brackets, as in ::1"
		}
		port, ok = strings.CutPrefix(port, ":")
		if !ok {
			return `"]" must be followed by ":" and a port`
		}
		if reason := portReason(port); reason != "" {
			return reason
		}
		return ipv6Reason(addr)
	}
	if strings.ContainsAny(p, "[]") {
		return `brackets are only allowed around an IPv6 address, as in [::1]:8443`
	}
	if strings.Count(p, ":") > 1 {
		return ipv6Reason(p)
	}

	host, port, hasPort := strings.Cut(p, ":")
	if hasPort {
		if reason := portReason(port); reason != "" {
			return reason
		}
	}
	if host == "" {
		return "must name a host before the port"
	}
	if strings.Contains(host, "*") {
		suffix, ok := strings.CutPrefix(host, "*.")
		switch {
		case host == "*":
			return `"*" alone is not a pattern: the default policy covers every host; write a suffix as in *.example.com`
		case !ok || strings.Contains(suffix, "*"):
			return `"*" is only allowed as the whole first label, as in *.example.com`
		case suffix == "":
			return `a wildcard needs at least one label after "*.", as in *.example.com`
		case hasPort:
			return "a wildcard pattern cannot have a port"
		}
		if _, err := netip.ParseAddr(suffix); err == nil {
			return "a wildcard suffix must be a host name, not an IP address"
		}
		return hostNameReason(suffix)
	}
	if a, err := netip.ParseAddr(host); err == nil && a.Is4() {
		return ""
	}
	return hostNameReason(host)
}

func portReason(port string) string {
	if _, ok := parsePort(port); !ok {
		return fmt.Sprintf("port must be a number from 1 to 65535 without leading zeros, got %q", port)
	}
	return ""
}

// ipv6Reason accepts only the canonical spelling, the one Resolve turns a
// request's host into, so that a pattern cannot silently never match.
func ipv6Reason(s string) string {
	a, err := netip.ParseAddr(s)
	switch {
	case err != nil:
		return fmt.Sprintf("%q is not an IPv6 address (for a host name with a port write one colon; for IPv6 with a port write [::1]:8443)", s)
	case a.Is4():
		return "brackets are only allowed around an IPv6 address"
	case a.String() != s:
		return fmt.Sprintf("write the IPv6 address in canonical form, %s", a)
	}
	return ""
}

// hostNameReason checks a DNS host name. Underscores are allowed because
// container and service-discovery names use them, even though RFC 952 does
// not.
func hostNameReason(h string) string {
	if len(h) > 253 {
		return "host name is longer than 253 characters"
	}
	labels := strings.Split(h, ".")
	for _, l := range labels {
		switch {
		case l == "":
			return "has an empty label (a leading, trailing or doubled dot)"
		case len(l) > 63:
			return fmt.Sprintf("label %q is longer than 63 characters", l)
		case l[0] == '-' || l[len(l)-1] == '-':
			return fmt.Sprintf("label %q must not start or end with '-'", l)
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return fmt.Sprintf("invalid character %q: a host name has letters, digits, '-' and '_'", c)
			}
		}
	}
	if strings.Trim(labels[len(labels)-1], "0123456789") == "" {
		return "is neither an IPv4 address nor a host name (the last label is all digits)"
	}
	return ""
}
