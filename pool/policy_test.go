package pool

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func policyDur(d time.Duration) *time.Duration { return &d }
func policyU32(n uint32) *uint32               { return &n }
func policyBool(b bool) *bool                  { return &b }
func policyStr(s string) *string               { return &s }

// unsetPolicyFields names the nil pointers in p, walking nested structs.
func unsetPolicyFields(p Policy) []string {
	var unset []string
	var walk func(prefix string, v reflect.Value)
	walk = func(prefix string, v reflect.Value) {
		for i := range v.NumField() {
			f, name := v.Field(i), prefix+v.Type().Field(i).Name
			switch f.Kind() {
			case reflect.Struct:
				walk(name+".", f)
			case reflect.Pointer:
				if f.IsNil() {
					unset = append(unset, name)
				}
			}
		}
	}
	walk("", reflect.ValueOf(p))
	return unset
}

// policyErrors flattens err into its *PolicyError values, in order, and
// fails the test on anything else in the tree.
func policyErrors(t testing.TB, err error) []*PolicyError {
	t.Helper()
	var out []*PolicyError
	var walk func(error)
	walk = func(err error) {
		switch e := err.(type) {
		case nil:
		case *PolicyError:
			out = append(out, e)
		case interface{ Unwrap() []error }:
			for _, inner := range e.Unwrap() {
				walk(inner)
			}
		default:
			t.Fatalf("Validate returned %T (%v), want *PolicyError or errors.Join of them", err, err)
		}
	}
	walk(err)
	return out
}

func TestDefaultPolicySetsEveryFieldToTheDocumentedValue(t *testing.T) {
	p := DefaultPolicy()
	if unset := unsetPolicyFields(p); len(unset) > 0 {
		t.Fatalf("DefaultPolicy leaves unset: %v", unset)
	}
	want := Policy{
		DialTimeout:         policyDur(5 * time.Second),
		TLSHandshakeTimeout: policyDur(10 * time.Second),
		TCPKeepAlive: TCPKeepAlive{
			Enabled:  policyBool(true),
			Idle:     policyDur(30 * time.Second),
			Interval: policyDur(10 * time.Second),
			Count:    policyU32(3),
		},
		ResponseHeaderTimeout:      policyDur(30 * time.Second),
		RequestTimeout:             policyDur(0),
		ExpectContinueTimeout:      policyDur(time.Second),
		BodyReadTimeout:            policyDur(5 * time.Minute),
		IdleConnTimeout:            policyDur(90 * time.Second),
		MaxConnLifetime:            policyDur(0),
		MaxRequestsPerConn:         policyU32(0),
		MaxIdleConnsPerHost:        policyU32(64),
		MaxConnsPerHost:            policyU32(0),
		MaxPendingRequests:         policyU32(1024),
		MaxRetries:                 policyU32(1),
		MaxResponseHeaderBytes:     policyU32(1 << 20),
		DisableKeepAlives:          policyBool(false),
		ProxyURL:                   policyStr(""),
		MaxIdleConns:               policyU32(1024),
		PropagateTraceContext:      policyBool(false),
		Protocols:                  policyPtr(ProtocolsH2Preferred),
		MaxConcurrentStreams:       policyU32(0),
		StrictMaxConcurrentStreams: policyBool(false),
		H2ReadIdleTimeout:          policyDur(30 * time.Second),
		H2PingTimeout:              policyDur(15 * time.Second),
	}
	if diff := cmp.Diff(want, p); diff != "" {
		t.Errorf("DefaultPolicy() mismatch (-want +got):\n%s", diff)
	}
	if err := (PolicySet{Default: p}).Validate(); err != nil {
		t.Errorf("DefaultPolicy does not validate: %v", err)
	}
}

func TestDefaultPolicyReturnsFreshPointersEachCall(t *testing.T) {
	a := DefaultPolicy()
	*a.DialTimeout = time.Hour
	*a.TCPKeepAlive.Count = 99
	b := DefaultPolicy()
	if *b.DialTimeout != 5*time.Second || *b.TCPKeepAlive.Count != 3 {
		t.Fatalf("changing one DefaultPolicy result changed the next: dial %v, count %d", *b.DialTimeout, *b.TCPKeepAlive.Count)
	}
}

func TestMergeTakesEverySetFieldOfOverAndKeepsTheRest(t *testing.T) {
	base := DefaultPolicy()
	over := Policy{
		DialTimeout:         policyDur(time.Second),
		TCPKeepAlive:        TCPKeepAlive{Count: policyU32(9)},
		RequestTimeout:      policyDur(0),
		MaxIdleConnsPerHost: policyU32(0),
		DisableKeepAlives:   policyBool(true),
		ProxyURL:            policyStr("direct"),

		PropagateTraceContext: policyBool(true),
	}
	want := DefaultPolicy()
	want.DialTimeout = policyDur(time.Second)
	want.TCPKeepAlive.Count = policyU32(9)
	want.MaxIdleConnsPerHost = policyU32(0)
	want.DisableKeepAlives = policyBool(true)
	want.ProxyURL = policyStr("direct")
	want.PropagateTraceContext = policyBool(true)
	if diff := cmp.Diff(want, base.Merge(over)); diff != "" {
		t.Errorf("Merge mismatch (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(over, Policy{}.Merge(over)); diff != "" {
		t.Errorf("merging over an empty policy changed it (-want +got):\n%s", diff)
	}
}

func TestMergeResultSharesNoPointerWithItsInputs(t *testing.T) {
	base := DefaultPolicy()
	over := Policy{DialTimeout: policyDur(time.Second), TCPKeepAlive: TCPKeepAlive{Idle: policyDur(time.Minute)}}
	merged := base.Merge(over)

	*merged.DialTimeout = time.Hour
	*merged.TCPKeepAlive.Idle = time.Hour
	*merged.TLSHandshakeTimeout = time.Hour
	if *over.DialTimeout != time.Second || *over.TCPKeepAlive.Idle != time.Minute {
		t.Errorf("writing the merge result changed over: dial %v, idle %v", *over.DialTimeout, *over.TCPKeepAlive.Idle)
	}
	if *base.TLSHandshakeTimeout != 10*time.Second {
		t.Errorf("writing the merge result changed base: tls %v", *base.TLSHandshakeTimeout)
	}
}

func TestPolicyErrorNamesThePolicyAndTheField(t *testing.T) {
	tests := []struct {
		name string
		err  PolicyError
		want string
	}{
		{"host policy", PolicyError{Host: "api.example.com", Field: "dial_timeout", Reason: "must be positive, got -1s"},
			"policies/api.example.com: dial_timeout: must be positive, got -1s"},
		{"default policy", PolicyError{Field: "tcp_keepalive.idle", Reason: "must be positive, got 0s"},
			"policies/default: tcp_keepalive.idle: must be positive, got 0s"},
		{"empty host pattern", PolicyError{Field: "name", Reason: "must not be empty"},
			"policies/: name: must not be empty"},
		{"pattern that needs quoting", PolicyError{Host: "a b\n", Field: "name", Reason: "must not contain spaces or control characters"},
			`policies/"a b\n": name: must not contain spaces or control characters`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.err.Error(); got != tt.want {
				t.Errorf("Error() = %q, want %q", got, tt.want)
			}
		})
	}
}

// validationCases each break one rule once; the fuzz target is seeded from
// them too.
var validationCases = []struct {
	name       string
	host       string // "" puts the policy in Default
	policy     Policy
	wantField  string
	wantReason string
}{
	{"negative dial timeout", "api.example.com", Policy{DialTimeout: policyDur(-time.Second)}, "dial_timeout", "must be positive, got -1s"},
	{"zero dial timeout", "", Policy{DialTimeout: policyDur(0)}, "dial_timeout", "must be positive, got 0s"},
	{"dial timeout over a day", "", Policy{DialTimeout: policyDur(25 * time.Hour)}, "dial_timeout", "must be at most 24h, got 25h0m0s"},
	{"zero TLS handshake timeout", "*.example.com", Policy{TLSHandshakeTimeout: policyDur(0)}, "tls_handshake_timeout", "must be positive"},
	{"negative TLS handshake timeout", "", Policy{TLSHandshakeTimeout: policyDur(-time.Millisecond)}, "tls_handshake_timeout", "got -1ms"},
	{"zero keep-alive idle", "", Policy{TCPKeepAlive: TCPKeepAlive{Idle: policyDur(0)}}, "tcp_keepalive.idle", "must be positive"},
	{"keep-alive idle beyond the kernel limit", "", Policy{TCPKeepAlive: TCPKeepAlive{Idle: policyDur(32768 * time.Second)}}, "tcp_keepalive.idle", "at most 32767s"},
	{"negative keep-alive interval", "10.0.0.7", Policy{TCPKeepAlive: TCPKeepAlive{Interval: policyDur(-time.Second)}}, "tcp_keepalive.interval", "must be positive, got -1s"},
	{"zero keep-alive count", "", Policy{TCPKeepAlive: TCPKeepAlive{Count: policyU32(0)}}, "tcp_keepalive.count", "must be from 1 to 127, got 0"},
	{"keep-alive count beyond the kernel limit", "", Policy{TCPKeepAlive: TCPKeepAlive{Count: policyU32(128)}}, "tcp_keepalive.count", "got 128"},
	{"negative response header timeout", "", Policy{ResponseHeaderTimeout: policyDur(-5 * time.Second)}, "response_header_timeout", "must not be negative, got -5s"},
	{"request timeout of two days", "", Policy{RequestTimeout: policyDur(48 * time.Hour)}, "request_timeout", "must be at most 24h"},
	{"negative expect-continue timeout", "", Policy{ExpectContinueTimeout: policyDur(-1)}, "expect_continue_timeout", "must not be negative, got -1ns"},
	{"negative body read timeout", "", Policy{BodyReadTimeout: policyDur(-1)}, "body_read_timeout", "must not be negative, got -1ns"},
	{"negative idle conn timeout", "", Policy{IdleConnTimeout: policyDur(-time.Minute)}, "idle_conn_timeout", "must not be negative"},
	{"idle conn timeout over a day", "", Policy{IdleConnTimeout: policyDur(24*time.Hour + 1)}, "idle_conn_timeout", "must be at most 24h"},
	{"negative max conn lifetime", "", Policy{MaxConnLifetime: policyDur(-time.Hour)}, "max_conn_lifetime", "must not be negative, got -1h0m0s"},
	{"zero max response header bytes", "", Policy{MaxResponseHeaderBytes: policyU32(0)}, "max_response_header_bytes", "must be from 1 to 67108864 (64 MiB), got 0"},
	{"max response header bytes over 64 MiB", "", Policy{MaxResponseHeaderBytes: policyU32(64<<20 + 1)}, "max_response_header_bytes", "got 67108865"},
	{"retry storm", "", Policy{MaxRetries: policyU32(11)}, "max_retries", "must be at most 10, got 11"},
	{"max idle conns in a host policy", "api.example.com", Policy{MaxIdleConns: policyU32(5)}, "max_idle_conns", "only allowed in policies/default"},
	{"socks proxy", "", Policy{ProxyURL: policyStr("socks5://proxy:1080")}, "proxy_url", `scheme must be http or https, got "socks5"`},
	{"proxy without scheme", "", Policy{ProxyURL: policyStr("proxy:3128")}, "proxy_url", "absolute http:// or https:// URL"},
	{"proxy with a path", "", Policy{ProxyURL: policyStr("http://proxy:3128/squid")}, "proxy_url", `must not have a path, got "/squid"`},
	{"proxy without a host", "", Policy{ProxyURL: policyStr("http://")}, "proxy_url", "must name the proxy host"},
	{"proxy with only a port", "", Policy{ProxyURL: policyStr("https://:3128")}, "proxy_url", "must name the proxy host"},
	{"proxy with a query", "", Policy{ProxyURL: policyStr("http://proxy:3128?x=1")}, "proxy_url", "must not have a query"},
	{"proxy with a fragment", "", Policy{ProxyURL: policyStr("http://proxy:3128#top")}, "proxy_url", "must not have a fragment"},
	{"proxy with a space", "", Policy{ProxyURL: policyStr("http://proxy :3128")}, "proxy_url", "must not contain spaces"},
	{"proxy port out of range", "", Policy{ProxyURL: policyStr("http://proxy:70000")}, "proxy_url", `port must be a number from 1 to 65535 without leading zeros, got "70000"`},
	{"proxy with an empty port", "", Policy{ProxyURL: policyStr("http://proxy:")}, "proxy_url", `got ""`},
	{"uppercase host pattern", "API.example.com", Policy{}, "name", "must be lowercase"},
	{"host pattern with a scheme", "https://api.example.com", Policy{}, "name", "drop the scheme"},
	{"bare wildcard host pattern", "*", Policy{}, "name", `"*" alone`},
	{"empty host pattern", "", Policy{}, "name", "must not be empty"},
}

func TestValidateNamesTheFieldAndTheReason(t *testing.T) {
	for _, tt := range validationCases {
		t.Run(tt.name, func(t *testing.T) {
			set := validationCaseSet(tt.host, tt.policy, tt.wantField)
			err := set.Validate()
			var pe *PolicyError
			if !errors.As(err, &pe) {
				t.Fatalf("Validate() = %v, want a *PolicyError", err)
			}
			if pe.Host != tt.host || pe.Field != tt.wantField || !strings.Contains(pe.Reason, tt.wantReason) {
				t.Errorf("Validate() = %+v, want Host %q, Field %q, Reason containing %q", *pe, tt.host, tt.wantField, tt.wantReason)
			}
			if all := policyErrors(t, err); len(all) != 1 {
				t.Errorf("Validate() found %d errors, want 1: %v", len(all), err)
			}
		})
	}
}

// validationCaseSet places a case's policy: in Default for host "", in
// Hosts otherwise. A name case with host "" means the empty pattern.
func validationCaseSet(host string, p Policy, field string) PolicySet {
	if host == "" && field != "name" {
		return PolicySet{Default: p}
	}
	return PolicySet{Hosts: map[string]Policy{host: p}}
}

func TestProxyURLErrorsDoNotRevealThePassword(t *testing.T) {
	for _, proxy := range []string{
		"http://user:s3cret@proxy:99999",
		"ftp://user:s3cret@proxy:21",
		"http://user:s3cret@proxy:3128/path",
		"http://user:s3cret@proxy:3128?q",
		"http://user:s3cret@proxy:3128#f",
		"http://user:s3cret@proxy:3128%zz",
		"user:s3cret@proxy:3128",
	} {
		err := PolicySet{Default: Policy{ProxyURL: policyStr(proxy)}}.Validate()
		if err == nil {
			t.Errorf("proxy_url %q validated", proxy)
			continue
		}
		if strings.Contains(err.Error(), "s3cret") {
			t.Errorf("proxy_url %q: error reveals the password: %v", proxy, err)
		}
	}
}

func TestValidateAcceptsValuesAtTheLimits(t *testing.T) {
	tests := []struct {
		name string
		set  PolicySet
	}{
		{"empty set", PolicySet{}},
		{"built-in defaults", PolicySet{Default: DefaultPolicy()}},
		{"largest values", PolicySet{Default: Policy{
			DialTimeout:           policyDur(24 * time.Hour),
			TLSHandshakeTimeout:   policyDur(24 * time.Hour),
			TCPKeepAlive:          TCPKeepAlive{Idle: policyDur(32767 * time.Second), Interval: policyDur(32767 * time.Second), Count: policyU32(127)},
			ResponseHeaderTimeout: policyDur(24 * time.Hour),
			RequestTimeout:        policyDur(24 * time.Hour),
			ExpectContinueTimeout: policyDur(24 * time.Hour),
			IdleConnTimeout:       policyDur(24 * time.Hour),
			MaxConnLifetime:       policyDur(24 * time.Hour),
			MaxRequestsPerConn:    policyU32(^uint32(0)), MaxIdleConnsPerHost: policyU32(^uint32(0)),
			MaxConnsPerHost: policyU32(^uint32(0)), MaxPendingRequests: policyU32(^uint32(0)),
			MaxRetries: policyU32(10), MaxResponseHeaderBytes: policyU32(64 << 20), MaxIdleConns: policyU32(^uint32(0)),
		}}},
		{"smallest values", PolicySet{Default: Policy{
			DialTimeout: policyDur(1), TLSHandshakeTimeout: policyDur(1),
			TCPKeepAlive:          TCPKeepAlive{Enabled: policyBool(false), Idle: policyDur(1), Interval: policyDur(1), Count: policyU32(1)},
			ResponseHeaderTimeout: policyDur(0), RequestTimeout: policyDur(0), ExpectContinueTimeout: policyDur(0),
			IdleConnTimeout: policyDur(0), MaxConnLifetime: policyDur(0),
			MaxRequestsPerConn: policyU32(0), MaxIdleConnsPerHost: policyU32(0), MaxConnsPerHost: policyU32(0),
			MaxPendingRequests: policyU32(0), MaxRetries: policyU32(0), MaxResponseHeaderBytes: policyU32(1), MaxIdleConns: policyU32(0),
		}}},
		{"every kind of proxy", PolicySet{
			Default: Policy{ProxyURL: policyStr("direct")},
			Hosts: map[string]Policy{
				"a.example.com":        {ProxyURL: policyStr("")},
				"b.example.com":        {ProxyURL: policyStr("http://proxy:3128")},
				"c.example.com":        {ProxyURL: policyStr("https://user:pass@proxy.internal:8443/")},
				"d.example.com":        {ProxyURL: policyStr("http://[::1]:3128")},
				"*.example.com":        {ProxyURL: policyStr("http://10.0.0.1")},
				"api.example.com:8443": {DisableKeepAlives: policyBool(true)},
			},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.set.Validate(); err != nil {
				t.Errorf("Validate() = %v, want nil", err)
			}
		})
	}
}

func TestValidateReportsEveryErrorDefaultFirstThenHostsByName(t *testing.T) {
	set := PolicySet{
		Default: Policy{DialTimeout: policyDur(-time.Second), MaxRetries: policyU32(99)},
		Hosts: map[string]Policy{
			"z.example.com":  {IdleConnTimeout: policyDur(-time.Second)},
			"Bad":            {MaxIdleConns: policyU32(1)},
			"a.example.com":  {TCPKeepAlive: TCPKeepAlive{Count: policyU32(0)}},
			"ok.example.com": {DialTimeout: policyDur(time.Second)},
		},
	}
	err := set.Validate()
	var first *PolicyError
	if !errors.As(err, &first) || first.Host != "" || first.Field != "dial_timeout" {
		t.Fatalf("errors.As found %+v, want the default policy's dial_timeout", first)
	}
	type where struct{ Host, Field string }
	var got []where
	for _, pe := range policyErrors(t, err) {
		got = append(got, where{pe.Host, pe.Field})
	}
	want := []where{
		{"", "dial_timeout"},
		{"", "max_retries"},
		{"Bad", "name"},
		{"Bad", "max_idle_conns"},
		{"a.example.com", "tcp_keepalive.count"},
		{"z.example.com", "idle_conn_timeout"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("errors mismatch (-want +got):\n%s", diff)
	}
}
