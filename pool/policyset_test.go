package pool

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// validHostPatterns and invalidHostPatterns also seed FuzzHostPattern.
var validHostPatterns = []string{
	"api.example.com",
	"api.example.com:8443",
	"localhost",
	"localhost:1",
	"my_service:65535",
	"xn--bcher-kva.example",
	"a-b.c0",
	"*.example.com",
	"*.com",
	"*.eu.example.com",
	"10.0.0.7",
	"10.0.0.7:8080",
	"::1",
	"2001:db8::1",
	"::ffff:10.0.0.1",
	"[::1]:8443",
	"[2001:db8::1]:443",
}

var invalidHostPatterns = []struct {
	name, pattern, reason string
}{
	{"empty", "", "must not be empty"},
	{"uppercase", "API.example.com", "must be lowercase"},
	{"scheme", "https://api.example.com", "drop the scheme"},
	{"path", "api.example.com/v1", "drop the path"},
	{"user info", "user@api.example.com", "user info"},
	{"query", "api.example.com?x=1", "drop the query"},
	{"space", "api example.com", "must not contain spaces"},
	{"tab", "api.example.com\t", "must not contain spaces"},
	{"non-ASCII", "bücher.example", "xn--"},
	{"doubled dot", "a..example.com", "empty label"},
	{"leading dot", ".example.com", "empty label"},
	{"trailing dot", "example.com.", "empty label"},
	{"long label", strings.Repeat("a", 64) + ".com", "longer than 63"},
	{"long name", strings.Repeat("a.", 126) + "co", "longer than 253"},
	{"far too long", strings.Repeat("a", 300), "longer than any host pattern"},
	{"hyphen at start", "-api.example.com", "must not start or end with '-'"},
	{"other punctuation", "api!.example.com", "invalid character '!'"},
	{"bad IPv4", "1.2.3.256", "neither an IPv4 address nor a host name"},
	{"star alone", "*", `"*" alone`},
	{"star dot alone", "*.", `at least one label after "*."`},
	{"star inside", "a.*.example.com", "whole first label"},
	{"star glued to a label", "*example.com", "whole first label"},
	{"two stars", "*.*.example.com", "whole first label"},
	{"wildcard with port", "*.example.com:443", "cannot have a port"},
	{"wildcard over an IP", "*.10.0.0.1", "not an IP address"},
	{"wildcard over a bad label", "*.-x.com", "must not start or end"},
	{"port zero", "api.example.com:0", "from 1 to 65535"},
	{"port too big", "api.example.com:65536", `got "65536"`},
	{"port with leading zero", "api.example.com:08443", "without leading zeros"},
	{"empty port", "api.example.com:", `got ""`},
	{"port that is a name", "api.example.com:https", `got "https"`},
	{"port without host", ":8443", "must name a host"},
	{"bracketed IPv6 without port", "[::1]", "with no brackets, as in ::1"},
	{"unclosed bracket", "[::1:8443", `without a matching "]"`},
	{"bracket without colon", "[::1]8443", `must be followed by ":"`},
	{"bracketed IPv4", "[10.0.0.1]:80", "only allowed around an IPv6 address"},
	{"stray bracket", "::1]", "only allowed around an IPv6"},
	{"non-canonical IPv6", "0:0:0:0:0:0:0:1", "canonical form, ::1"},
	{"IPv6 zone", "fe80::1%eth0", "zone"},
	{"too many colons", "a:b:c", "is not an IPv6 address"},
}

func TestValidateHostPatternAcceptsNamesAddressesPortsAndWildcards(t *testing.T) {
	for _, p := range validHostPatterns {
		t.Run(p, func(t *testing.T) {
			if err := ValidateHostPattern(p); err != nil {
				t.Errorf("ValidateHostPattern(%q) = %v, want nil", p, err)
			}
		})
	}
}

func TestValidateHostPatternSaysWhatIsWrong(t *testing.T) {
	for _, tt := range invalidHostPatterns {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateHostPattern(tt.pattern)
			var pe *PolicyError
			if !errors.As(err, &pe) {
				t.Fatalf("ValidateHostPattern(%q) = %v, want a *PolicyError", tt.pattern, err)
			}
			if pe.Host != tt.pattern || pe.Field != "name" || !strings.Contains(pe.Reason, tt.reason) {
				t.Errorf("ValidateHostPattern(%q) = %+v, want Field name and a Reason containing %q", tt.pattern, *pe, tt.reason)
			}
			set := PolicySet{Hosts: map[string]Policy{tt.pattern: {}}}
			if !errors.As(set.Validate(), &pe) || pe.Field != "name" {
				t.Errorf("a PolicySet keyed by %q validated", tt.pattern)
			}
		})
	}
}

// resolveSet gives each host pattern its own ResponseHeaderTimeout, so a
// result shows which pattern won.
var resolveSet = PolicySet{
	Default: Policy{DialTimeout: policyDur(3 * time.Second), MaxIdleConns: policyU32(10)},
	Hosts: map[string]Policy{
		"api.example.com":      {ResponseHeaderTimeout: policyDur(5 * time.Second)},
		"api.example.com:8443": {ResponseHeaderTimeout: policyDur(7 * time.Second)},
		"*.example.com":        {ResponseHeaderTimeout: policyDur(11 * time.Second)},
		"*.eu.example.com":     {ResponseHeaderTimeout: policyDur(13 * time.Second)},
		"10.0.0.7":             {ResponseHeaderTimeout: policyDur(17 * time.Second)},
		"[::1]:8443":           {ResponseHeaderTimeout: policyDur(19 * time.Second)},
		"::1":                  {ResponseHeaderTimeout: policyDur(23 * time.Second)},
	},
}

func TestResolvePicksTheMostSpecificPattern(t *testing.T) {
	if err := resolveSet.Validate(); err != nil {
		t.Fatalf("resolveSet is invalid: %v", err)
	}
	tests := []struct {
		name, host, port string
		wantSource       string
		wantRHT          time.Duration
	}{
		{"host and port beat host", "api.example.com", "8443", "api.example.com:8443", 7 * time.Second},
		{"host beats wildcard on another port", "api.example.com", "443", "api.example.com", 5 * time.Second},
		{"host without port skips port patterns", "api.example.com", "", "api.example.com", 5 * time.Second},
		{"host is matched ignoring case and a trailing dot", "API.Example.COM.", "8443", "api.example.com:8443", 7 * time.Second},
		{"port is matched by number", "api.example.com", "08443", "api.example.com:8443", 7 * time.Second},
		{"wildcard matches one label", "www.example.com", "443", "*.example.com", 11 * time.Second},
		{"wildcard matches deeper names", "b.a.example.com", "", "*.example.com", 11 * time.Second},
		{"wildcard does not match its suffix", "example.com", "443", "default", 30 * time.Second},
		{"longer wildcard beats shorter", "x.eu.example.com", "443", "*.eu.example.com", 13 * time.Second},
		{"longer wildcard matches deeper names", "y.x.eu.example.com", "", "*.eu.example.com", 13 * time.Second},
		{"longer wildcard does not match its suffix", "eu.example.com", "", "*.example.com", 11 * time.Second},
		{"a name that only ends alike does not match", "notexample.com", "", "default", 30 * time.Second},
		{"unknown host gets the default", "other.test", "80", "default", 30 * time.Second},
		{"IPv4 literal", "10.0.0.7", "80", "10.0.0.7", 17 * time.Second},
		{"IPv6 literal with port", "::1", "8443", "[::1]:8443", 19 * time.Second},
		{"bracketed IPv6 literal with port", "[::1]", "8443", "[::1]:8443", 19 * time.Second},
		{"IPv6 literal in long form", "0:0:0:0:0:0:0:1", "8443", "[::1]:8443", 19 * time.Second},
		{"IPv6 literal on another port", "::1", "80", "::1", 23 * time.Second},
		{"empty host gets the default", "", "443", "default", 30 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := resolveSet.Resolve(tt.host, tt.port)
			if e.Source != tt.wantSource || e.ResponseHeaderTimeout != tt.wantRHT {
				t.Errorf("Resolve(%q, %q) = source %q, response header timeout %v; want %q, %v",
					tt.host, tt.port, e.Source, e.ResponseHeaderTimeout, tt.wantSource, tt.wantRHT)
			}
		})
	}
}

func TestResolveInheritsUnsetFieldsFromDefaultThenBuiltIn(t *testing.T) {
	set := PolicySet{
		Default: Policy{
			DialTimeout:  policyDur(3 * time.Second),
			TCPKeepAlive: TCPKeepAlive{Idle: policyDur(time.Minute)},
			ProxyURL:     policyStr("direct"),
			MaxIdleConns: policyU32(10),

			PropagateTraceContext: policyBool(true),
		},
		Hosts: map[string]Policy{
			"api.example.com": {
				ResponseHeaderTimeout: policyDur(7 * time.Second),
				TCPKeepAlive:          TCPKeepAlive{Count: policyU32(5)},
				MaxIdleConnsPerHost:   policyU32(0),
				MaxIdleConns:          policyU32(99), // invalid here; Resolve ignores it
			},
		},
	}
	want := Effective{
		Source:                "api.example.com",
		DialTimeout:           3 * time.Second,  // default
		TLSHandshakeTimeout:   10 * time.Second, // built-in
		ResponseHeaderTimeout: 7 * time.Second,  // host
		RequestTimeout:        0,
		ExpectContinueTimeout: time.Second,
		BodyReadTimeout:       5 * time.Minute,
		IdleConnTimeout:       90 * time.Second,
		MaxConnLifetime:       0,
		KeepAlive: net.KeepAliveConfig{
			Enable:   true,             // built-in
			Idle:     time.Minute,      // default
			Interval: 10 * time.Second, // built-in
			Count:    5,                // host
		},
		MaxRequestsPerConn:     0,
		MaxIdleConnsPerHost:    0, // host sets zero, which is not unset
		MaxConnsPerHost:        0,
		MaxPendingRequests:     1024,
		MaxRetries:             1,
		MaxResponseHeaderBytes: 1 << 20,
		DisableKeepAlives:      false,
		ProxyURL:               "direct", // default
		MaxIdleConns:           10,       // always the default policy's
		PropagateTraceContext:  true,     // default
		Protocols:              ProtocolsH2Preferred,
		H2ReadIdleTimeout:      30 * time.Second,
		H2PingTimeout:          15 * time.Second,
	}
	if diff := cmp.Diff(want, set.Resolve("api.example.com", "443")); diff != "" {
		t.Errorf("Resolve mismatch (-want +got):\n%s", diff)
	}
}

func TestResolveOfAnEmptySetIsTheBuiltInPolicy(t *testing.T) {
	want := Effective{
		Source:                 "default",
		DialTimeout:            5 * time.Second,
		TLSHandshakeTimeout:    10 * time.Second,
		ResponseHeaderTimeout:  30 * time.Second,
		ExpectContinueTimeout:  time.Second,
		BodyReadTimeout:        5 * time.Minute,
		IdleConnTimeout:        90 * time.Second,
		KeepAlive:              net.KeepAliveConfig{Enable: true, Idle: 30 * time.Second, Interval: 10 * time.Second, Count: 3},
		MaxIdleConnsPerHost:    64,
		MaxPendingRequests:     1024,
		MaxRetries:             1,
		MaxResponseHeaderBytes: 1 << 20,
		MaxIdleConns:           1024,
		Protocols:              ProtocolsH2Preferred,
		H2ReadIdleTimeout:      30 * time.Second,
		H2PingTimeout:          15 * time.Second,
	}
	if diff := cmp.Diff(want, PolicySet{}.Resolve("api.example.com", "443")); diff != "" {
		t.Errorf("Resolve mismatch (-want +got):\n%s", diff)
	}
}

func TestResolveDoesNotCascadeThroughLessSpecificHostPolicies(t *testing.T) {
	set := PolicySet{Hosts: map[string]Policy{
		"*.example.com":        {ProxyURL: policyStr("http://proxy:3128")},
		"api.example.com":      {MaxConnsPerHost: policyU32(50)},
		"api.example.com:8443": {DialTimeout: policyDur(time.Second)},
	}}
	e := set.Resolve("api.example.com", "8443")
	if e.Source != "api.example.com:8443" || e.DialTimeout != time.Second {
		t.Fatalf("Resolve = %q with dial %v, want the host:port policy", e.Source, e.DialTimeout)
	}
	if e.MaxConnsPerHost != 0 || e.ProxyURL != "" {
		t.Errorf("Resolve took max conns %d and proxy %q from less specific host policies, want the defaults", e.MaxConnsPerHost, e.ProxyURL)
	}
}

func TestEffectivePolicySetsEveryFieldAndResolvesBackToItself(t *testing.T) {
	e := resolveSet.Resolve("x.eu.example.com", "443")
	p := e.Policy()
	if unset := unsetPolicyFields(p); len(unset) > 0 {
		t.Fatalf("Effective.Policy leaves unset: %v", unset)
	}
	again := PolicySet{Default: p}
	if err := again.Validate(); err != nil {
		t.Fatalf("Effective.Policy does not validate: %v", err)
	}
	want := e
	want.Source = "default"
	if diff := cmp.Diff(want, again.Resolve("anything.test", "")); diff != "" {
		t.Errorf("round trip mismatch (-want +got):\n%s", diff)
	}
}

func TestCloneSharesNothingWithTheOriginal(t *testing.T) {
	orig := PolicySet{
		Default: DefaultPolicy(),
		Hosts: map[string]Policy{
			"api.example.com": {DialTimeout: policyDur(time.Second), TCPKeepAlive: TCPKeepAlive{Count: policyU32(4)}},
		},
	}
	snapshot := PolicySet{Default: DefaultPolicy(), Hosts: map[string]Policy{
		"api.example.com": {DialTimeout: policyDur(time.Second), TCPKeepAlive: TCPKeepAlive{Count: policyU32(4)}},
	}}
	c := orig.Clone()
	if diff := cmp.Diff(orig, c); diff != "" {
		t.Fatalf("Clone differs from the original (-orig +clone):\n%s", diff)
	}

	*c.Default.DialTimeout = time.Hour
	*c.Default.TCPKeepAlive.Enabled = false
	*c.Hosts["api.example.com"].DialTimeout = time.Hour
	*c.Hosts["api.example.com"].TCPKeepAlive.Count = 100
	c.Hosts["new.example.com"] = Policy{}
	delete(c.Hosts, "api.example.com")

	if diff := cmp.Diff(snapshot, orig); diff != "" {
		t.Errorf("changing the clone changed the original (-want +got):\n%s", diff)
	}
}

func TestCloneKeepsNilAndEmptyHostMapsApart(t *testing.T) {
	if c := (PolicySet{}).Clone(); c.Hosts != nil {
		t.Errorf("Clone of nil Hosts = %v, want nil", c.Hosts)
	}
	if c := (PolicySet{Hosts: map[string]Policy{}}).Clone(); c.Hosts == nil {
		t.Errorf("Clone of empty Hosts = nil, want an empty map")
	}
}

func ExamplePolicySet_Resolve() {
	set := PolicySet{
		Default: Policy{IdleConnTimeout: policyDur(30 * time.Second)},
		Hosts: map[string]Policy{
			"*.example.com":        {DialTimeout: policyDur(2 * time.Second)},
			"api.example.com:8443": {ResponseHeaderTimeout: policyDur(time.Minute)},
		},
	}
	if err := set.Validate(); err != nil {
		fmt.Println(err)
		return
	}
	for _, hp := range [][2]string{{"api.example.com", "8443"}, {"api.example.com", "443"}, {"example.com", "443"}} {
		e := set.Resolve(hp[0], hp[1])
		fmt.Println(e.Source, e.DialTimeout, e.ResponseHeaderTimeout, e.IdleConnTimeout)
	}
	// Output:
	// api.example.com:8443 5s 1m0s 30s
	// *.example.com 2s 30s 30s
	// default 5s 30s 30s
}
