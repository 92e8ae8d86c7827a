package server

import (
	"fmt"
	"math"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	pooldv1 "github.com/poold/poold/gen/poold/v1"
	"github.com/poold/poold/pool"
)

// Policy resource names.
const (
	policyNamePrefix  = "policies/"
	defaultPolicyName = "policies/default"
)

// policyName is the resource name of the policy for a host pattern; ""
// is the default policy.
func policyName(host string) string {
	if host == "" {
		return defaultPolicyName
	}
	return policyNamePrefix + host
}

// parsePolicyName turns a resource name into the host pattern that keys
// pool.PolicySet.Hosts, "" for policies/default. field is what a
// violation is reported against ("policy.name" or "name"), since the same
// name arrives in different request fields.
func parsePolicyName(name, field string) (string, *fieldViolation) {
	if name == defaultPolicyName {
		return "", nil
	}
	host, ok := strings.CutPrefix(name, policyNamePrefix)
	if !ok {
		reason := `must be "policies/default" or "policies/{host}"`
		if name == "" {
			reason = "is required: " + reason
		}
		return "", &fieldViolation{Field: field, Reason: reason}
	}
	if err := pool.ValidateHostPattern(host); err != nil {
		reason := err.Error()
		if perr, ok := err.(*pool.PolicyError); ok {
			reason = perr.Reason
		}
		return "", &fieldViolation{Field: field, Reason: "host pattern " + reason}
	}
	return host, nil
}

// toPoolPolicy converts a request's policy to the engine's form. Only the
// encoding is checked here (a duration must be a valid
// google.protobuf.Duration that fits a time.Duration); the limits are
// pool.PolicySet.Validate's job, so they live in one place. Name, etag and
// update_time are not part of a pool.Policy and are ignored.
func toPoolPolicy(p *pooldv1.Policy) (pool.Policy, []fieldViolation) {
	if p == nil {
		return pool.Policy{}, nil
	}
	c := policyConverter{prefix: "policy."}
	ka := p.GetTcpKeepalive()
	if ka == nil {
		ka = &pooldv1.TcpKeepalive{}
	}
	out := pool.Policy{
		DialTimeout:         c.duration("dial_timeout", p.GetDialTimeout()),
		TLSHandshakeTimeout: c.duration("tls_handshake_timeout", p.GetTlsHandshakeTimeout()),
		TCPKeepAlive: pool.TCPKeepAlive{
			Enabled:  ka.Enabled,
			Idle:     c.duration("tcp_keepalive.idle", ka.GetIdle()),
			Interval: c.duration("tcp_keepalive.interval", ka.GetInterval()),
			Count:    ka.Count,
		},
		ResponseHeaderTimeout:      c.duration("response_header_timeout", p.GetResponseHeaderTimeout()),
		RequestTimeout:             c.duration("request_timeout", p.GetRequestTimeout()),
		ExpectContinueTimeout:      c.duration("expect_continue_timeout", p.GetExpectContinueTimeout()),
		BodyReadTimeout:            c.duration("body_read_timeout", p.GetBodyReadTimeout()),
		IdleConnTimeout:            c.duration("idle_conn_timeout", p.GetIdleConnTimeout()),
		MaxConnLifetime:            c.duration("max_conn_lifetime", p.GetMaxConnLifetime()),
		MaxRequestsPerConn:         p.MaxRequestsPerConn,
		MaxIdleConnsPerHost:        p.MaxIdleConnsPerHost,
		MaxConnsPerHost:            p.MaxConnsPerHost,
		MaxPendingRequests:         p.MaxPendingRequests,
		MaxRetries:                 p.MaxRetries,
		MaxResponseHeaderBytes:     p.MaxResponseHeaderBytes,
		DisableKeepAlives:          p.DisableKeepalives,
		ProxyURL:                   p.ProxyUrl,
		MaxIdleConns:               p.MaxIdleConns,
		PropagateTraceContext:      p.PropagateTraceContext,
		Protocols:                  c.protocols("protocols", p.Protocols),
		MaxConcurrentStreams:       p.MaxConcurrentStreams,
		StrictMaxConcurrentStreams: p.StrictMaxConcurrentStreams,
		H2ReadIdleTimeout:          c.duration("h2_read_idle_timeout", p.GetH2ReadIdleTimeout()),
		H2PingTimeout:              c.duration("h2_ping_timeout", p.GetH2PingTimeout()),
	}
	// The scalar pointers above alias p; copy them so that the result
	// stays a value whatever later happens to the request message.
	return pool.Policy{}.Merge(out), c.violations
}

// policyConverter collects the violations of one conversion.
type policyConverter struct {
	prefix     string
	violations []fieldViolation
}

// duration converts a set Duration, reporting one that is malformed or
// beyond what time.Duration holds (about 292 years) rather than letting
// AsDuration saturate it into a value nobody sent.
func (c *policyConverter) duration(field string, d *durationpb.Duration) *time.Duration {
	if d == nil {
		return nil
	}
	if err := d.CheckValid(); err != nil {
		c.violations = append(c.violations, fieldViolation{
			Field:  c.prefix + field,
			Reason: "invalid duration: seconds and nanos must have the same sign, nanos within ±999999999, and at most 10000 years",
		})
		return nil
	}
	if s := d.GetSeconds(); s > math.MaxInt64/int64(time.Second)-1 || s < math.MinInt64/int64(time.Second)+1 {
		c.violations = append(c.violations, fieldViolation{
			Field:  c.prefix + field,
			Reason: fmt.Sprintf("duration of %ds is out of range", s),
		})
		return nil
	}
	v := d.AsDuration()
	return &v
}

// protocolsFromProto maps the API's Protocols onto the engine's. The
// zero value, PROTOCOLS_UNSPECIFIED, is absent on purpose: a caller who
// sets protocols must say which.
var protocolsFromProto = map[pooldv1.Protocols]pool.Protocols{
	pooldv1.Protocols_PROTOCOLS_H2_PREFERRED: pool.ProtocolsH2Preferred,
	pooldv1.Protocols_PROTOCOLS_HTTP1:        pool.ProtocolsHTTP1,
	pooldv1.Protocols_PROTOCOLS_H2:           pool.ProtocolsH2,
	pooldv1.Protocols_PROTOCOLS_H2C:          pool.ProtocolsH2C,
}

var protocolsToProto = func() map[pool.Protocols]pooldv1.Protocols {
	m := make(map[pool.Protocols]pooldv1.Protocols, len(protocolsFromProto))
	for k, v := range protocolsFromProto {
		m[v] = k
	}
	return m
}()

// protocols converts a set Protocols, reporting PROTOCOLS_UNSPECIFIED and
// numbers the API does not define (which protojson and the binary format
// both let through) rather than handing the engine a value it would have
// to guess at.
func (c *policyConverter) protocols(field string, p *pooldv1.Protocols) *pool.Protocols {
	if p == nil {
		return nil
	}
	v, ok := protocolsFromProto[*p]
	if !ok {
		reason := fmt.Sprintf("unknown value %d", int32(*p))
		if *p == pooldv1.Protocols_PROTOCOLS_UNSPECIFIED {
			reason = "PROTOCOLS_UNSPECIFIED is not a choice"
		}
		c.violations = append(c.violations, fieldViolation{
			Field:  c.prefix + field,
			Reason: reason + ": must be one of PROTOCOLS_H2_PREFERRED, PROTOCOLS_HTTP1, PROTOCOLS_H2, PROTOCOLS_H2C, or unset to inherit",
		})
		return nil
	}
	return &v
}

// protocolsProto is the API's form of a stored Protocols. Stored values
// passed validation, so every one has a name; anything else would be an
// engine bug.
func protocolsProto(p *pool.Protocols) *pooldv1.Protocols {
	if p == nil {
		return nil
	}
	v, ok := protocolsToProto[*p]
	if !ok {
		panic(fmt.Sprintf("server: internal error: policy holds protocols %v, which the API cannot name", *p))
	}
	return &v
}

// fromPoolPolicy converts a stored or resolved policy to its resource
// form. Unset fields stay unset (a nil Duration or an absent optional), and
// tcp_keepalive is present only when one of its fields is set, so that a
// policy reads back exactly as it inherits.
func fromPoolPolicy(name string, p pool.Policy) *pooldv1.Policy {
	p = pool.Policy{}.Merge(p)
	out := &pooldv1.Policy{
		Name:                       name,
		DialTimeout:                durationProto(p.DialTimeout),
		TlsHandshakeTimeout:        durationProto(p.TLSHandshakeTimeout),
		ResponseHeaderTimeout:      durationProto(p.ResponseHeaderTimeout),
		RequestTimeout:             durationProto(p.RequestTimeout),
		ExpectContinueTimeout:      durationProto(p.ExpectContinueTimeout),
		BodyReadTimeout:            durationProto(p.BodyReadTimeout),
		IdleConnTimeout:            durationProto(p.IdleConnTimeout),
		MaxConnLifetime:            durationProto(p.MaxConnLifetime),
		MaxRequestsPerConn:         p.MaxRequestsPerConn,
		MaxIdleConnsPerHost:        p.MaxIdleConnsPerHost,
		MaxConnsPerHost:            p.MaxConnsPerHost,
		MaxPendingRequests:         p.MaxPendingRequests,
		MaxRetries:                 p.MaxRetries,
		MaxResponseHeaderBytes:     p.MaxResponseHeaderBytes,
		DisableKeepalives:          p.DisableKeepAlives,
		ProxyUrl:                   p.ProxyURL,
		MaxIdleConns:               p.MaxIdleConns,
		PropagateTraceContext:      p.PropagateTraceContext,
		Protocols:                  protocolsProto(p.Protocols),
		MaxConcurrentStreams:       p.MaxConcurrentStreams,
		StrictMaxConcurrentStreams: p.StrictMaxConcurrentStreams,
		H2ReadIdleTimeout:          durationProto(p.H2ReadIdleTimeout),
		H2PingTimeout:              durationProto(p.H2PingTimeout),
	}
	if ka := p.TCPKeepAlive; ka != (pool.TCPKeepAlive{}) {
		out.TcpKeepalive = &pooldv1.TcpKeepalive{
			Enabled:  ka.Enabled,
			Idle:     durationProto(ka.Idle),
			Interval: durationProto(ka.Interval),
			Count:    ka.Count,
		}
	}
	return out
}

// effectiveProto is a resolved policy as a resource: every field set, named
// after the policy that matched. It has no etag because it is not a
// resource that can be updated.
func effectiveProto(e pool.Effective) *pooldv1.Policy {
	name := defaultPolicyName
	if e.Source != "" && e.Source != "default" {
		name = policyNamePrefix + e.Source
	}
	return fromPoolPolicy(name, e.Policy())
}

func durationProto(d *time.Duration) *durationpb.Duration {
	if d == nil {
		return nil
	}
	return durationpb.New(*d)
}

// splitPolicyHost checks the host argument of GetEffectivePolicy,
// "api.example.com", "api.example.com:8443", "10.0.0.7:80", "::1" or
// "[::1]:8443", and splits it for pool.PolicySet.Resolve. Case and a
// trailing dot are forgiven, as they are for request hosts; patterns are
// not hosts.
func splitPolicyHost(hostport string) (host, port string, v *fieldViolation) {
	bad := func(reason string) (string, string, *fieldViolation) {
		return "", "", &fieldViolation{Field: "host", Reason: reason}
	}
	if hostport == "" {
		return bad(`is required, as in "api.example.com" or "api.example.com:8443"`)
	}
	host = hostport
	switch {
	case strings.HasPrefix(hostport, "[") && strings.HasSuffix(hostport, "]"):
		host = hostport[1 : len(hostport)-1]
	case strings.HasPrefix(hostport, "["):
		h, p, err := net.SplitHostPort(hostport)
		if err != nil {
			return bad(`write an IPv6 address with a port as in "[::1]:8443"`)
		}
		host, port = h, p
		if port == "" {
			return bad("port must be a number from 1 to 65535")
		}
	case strings.Count(hostport, ":") == 1:
		host, port, _ = strings.Cut(hostport, ":")
		if port == "" {
			return bad("port must be a number from 1 to 65535")
		}
	}
	if port != "" {
		if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
			return bad(fmt.Sprintf("port must be a number from 1 to 65535, got %q", port))
		}
	}
	if a, err := netip.ParseAddr(host); err == nil {
		if a.Zone() != "" {
			return bad("must not have an IPv6 zone")
		}
		return a.String(), port, nil
	}
	if strings.Contains(host, ":") {
		return bad(fmt.Sprintf("%q is not an IPv6 address", host))
	}
	name := strings.TrimSuffix(strings.ToLower(host), ".")
	if strings.Contains(name, "*") {
		return bad("must be a host, not a pattern: the policy for a wildcard is read with GetPolicy")
	}
	if err := pool.ValidateHostPattern(name); err != nil {
		reason := err.Error()
		if perr, ok := err.(*pool.PolicyError); ok {
			reason = perr.Reason
		}
		return bad(reason)
	}
	return name, port, nil
}
