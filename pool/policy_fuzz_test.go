package pool

import (
	"errors"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// policyFuzzFields lists p's fields by kind, in the order FuzzPolicyValidate
// takes their values; bit i of the fuzz mask sets field i, counting the
// durations, then the numbers, then the bools, then ProxyURL.
func policyFuzzFields(p *Policy) (durs []**time.Duration, nums []**uint32, bools []**bool) {
	durs = []**time.Duration{
		&p.DialTimeout, &p.TLSHandshakeTimeout, &p.TCPKeepAlive.Idle, &p.TCPKeepAlive.Interval,
		&p.ResponseHeaderTimeout, &p.RequestTimeout, &p.ExpectContinueTimeout, &p.IdleConnTimeout, &p.MaxConnLifetime,
	}
	nums = []**uint32{
		&p.TCPKeepAlive.Count, &p.MaxRequestsPerConn, &p.MaxIdleConnsPerHost, &p.MaxConnsPerHost,
		&p.MaxPendingRequests, &p.MaxRetries, &p.MaxResponseHeaderBytes, &p.MaxIdleConns,
	}
	bools = []**bool{&p.TCPKeepAlive.Enabled, &p.DisableKeepAlives}
	return durs, nums, bools
}

const policyFuzzProxyBit = 9 + 8 + 2

func policyFromFuzz(mask uint32, d [9]int64, n [8]uint32, b [2]bool, proxy string) Policy {
	var p Policy
	durs, nums, bools := policyFuzzFields(&p)
	bit := 0
	for i, f := range durs {
		if mask&(1<<bit) != 0 {
			*f = policyDur(time.Duration(d[i]))
		}
		bit++
	}
	for i, f := range nums {
		if mask&(1<<bit) != 0 {
			*f = policyU32(n[i])
		}
		bit++
	}
	for i, f := range bools {
		if mask&(1<<bit) != 0 {
			*f = policyBool(b[i])
		}
		bit++
	}
	if mask&(1<<policyFuzzProxyBit) != 0 {
		p.ProxyURL = policyStr(proxy)
	}
	return p
}

// addPolicySeed is policyFromFuzz backwards: it adds p, keyed by key, to
// the corpus of FuzzPolicyValidate.
func addPolicySeed(f *testing.F, key string, p Policy) {
	var (
		mask uint32
		d    [9]int64
		n    [8]uint32
		b    [2]bool
	)
	durs, nums, bools := policyFuzzFields(&p)
	bit := 0
	for i, v := range durs {
		if *v != nil {
			mask |= 1 << bit
			d[i] = int64(**v)
		}
		bit++
	}
	for i, v := range nums {
		if *v != nil {
			mask |= 1 << bit
			n[i] = **v
		}
		bit++
	}
	for i, v := range bools {
		if *v != nil {
			mask |= 1 << bit
			b[i] = **v
		}
		bit++
	}
	var proxy string
	if p.ProxyURL != nil {
		mask |= 1 << policyFuzzProxyBit
		proxy = *p.ProxyURL
	}
	f.Add(key, mask, d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7], d[8],
		n[0], n[1], n[2], n[3], n[4], n[5], n[6], n[7], b[0], b[1], proxy)
}

var policyFieldNames = []string{
	"name", "dial_timeout", "tls_handshake_timeout", "tcp_keepalive.enabled", "tcp_keepalive.idle",
	"tcp_keepalive.interval", "tcp_keepalive.count", "response_header_timeout", "request_timeout",
	"expect_continue_timeout", "idle_conn_timeout", "max_conn_lifetime", "max_requests_per_conn",
	"max_idle_conns_per_host", "max_conns_per_host", "max_pending_requests", "max_retries",
	"max_response_header_bytes", "disable_keepalives", "proxy_url", "max_idle_conns",
}

// patternProbe returns a host and port that pattern p must match, found
// without the package's own parser.
func patternProbe(p string) (host, port string, wildcard bool) {
	if suffix, ok := strings.CutPrefix(p, "*."); ok {
		return "probe." + suffix, "", true
	}
	if h, port, err := net.SplitHostPort(p); err == nil {
		return h, port, false
	}
	return p, "", false
}

// FuzzPolicyValidate checks that Validate never panics, reports only
// *PolicyError values for known fields, and that whatever it accepts
// resolves to exactly the fields that were set.
func FuzzPolicyValidate(f *testing.F) {
	for _, tt := range validationCases {
		addPolicySeed(f, tt.host, tt.policy)
	}
	addPolicySeed(f, "", DefaultPolicy())
	addPolicySeed(f, "*.example.com", Policy{ProxyURL: policyStr("http://u:p@proxy:3128/")})
	f.Fuzz(func(t *testing.T, key string, mask uint32,
		d0, d1, d2, d3, d4, d5, d6, d7, d8 int64,
		n0, n1, n2, n3, n4, n5, n6, n7 uint32,
		b0, b1 bool, proxy string) {
		p := policyFromFuzz(mask,
			[9]int64{d0, d1, d2, d3, d4, d5, d6, d7, d8},
			[8]uint32{n0, n1, n2, n3, n4, n5, n6, n7},
			[2]bool{b0, b1}, proxy)
		set := PolicySet{Default: p}
		if key != "" {
			set = PolicySet{Hosts: map[string]Policy{key: p}}
		}

		err := set.Validate()
		if again := set.Validate(); (err == nil) != (again == nil) || err != nil && err.Error() != again.Error() {
			t.Fatalf("Validate is not deterministic: %v, then %v", err, again)
		}
		if diff := cmp.Diff(set, set.Clone()); diff != "" {
			t.Fatalf("Clone differs (-set +clone):\n%s", diff)
		}
		if diff := cmp.Diff(p, Policy{}.Merge(p)); diff != "" {
			t.Fatalf("Merge over an empty policy changed it (-want +got):\n%s", diff)
		}
		if err != nil {
			for _, pe := range policyErrors(t, err) {
				if pe.Host != key || !slices.Contains(policyFieldNames, pe.Field) || pe.Reason == "" {
					t.Fatalf("bad error for key %q: %+v", key, *pe)
				}
				if !strings.HasPrefix(pe.Error(), "policies/") {
					t.Fatalf("Error() = %q, want a policies/ prefix", pe.Error())
				}
			}
			return
		}

		host, port, wantSource := "fuzz.test", "443", "default"
		if key != "" {
			host, port, _ = patternProbe(key)
			wantSource = key
		}
		e := set.Resolve(host, port)
		if e.Source != wantSource {
			t.Fatalf("Resolve(%q, %q).Source = %q, want %q", host, port, e.Source, wantSource)
		}
		if diff := cmp.Diff(DefaultPolicy().Merge(p), e.Policy()); diff != "" {
			t.Fatalf("Resolve(%q, %q) mismatch (-want +got):\n%s", host, port, diff)
		}
		if err := (PolicySet{Default: e.Policy()}).Validate(); err != nil {
			t.Fatalf("a resolved policy does not validate: %v", err)
		}
	})
}

// FuzzHostPattern checks that ValidateHostPattern never panics, explains
// every rejection, and that every pattern it accepts is matched by Resolve
// as documented.
func FuzzHostPattern(f *testing.F) {
	for _, p := range validHostPatterns {
		f.Add(p)
	}
	for _, tt := range invalidHostPatterns {
		f.Add(tt.pattern)
	}
	f.Fuzz(func(t *testing.T, p string) {
		err := ValidateHostPattern(p)
		if err != nil {
			var pe *PolicyError
			if !errors.As(err, &pe) || pe.Host != p || pe.Field != "name" || pe.Reason == "" {
				t.Fatalf("ValidateHostPattern(%q) = %#v, want a *PolicyError for name with a reason", p, err)
			}
			_ = pe.Error()
			if (PolicySet{Hosts: map[string]Policy{p: {}}}).Validate() == nil {
				t.Fatalf("pattern %q is rejected alone but accepted as a key", p)
			}
			return
		}

		if p != strings.ToLower(p) || strings.ContainsAny(p, " \t\r\n/@") {
			t.Fatalf("ValidateHostPattern accepted %q", p)
		}
		set := PolicySet{Hosts: map[string]Policy{p: {DialTimeout: policyDur(42 * time.Second)}}}
		if err := set.Validate(); err != nil {
			t.Fatalf("pattern %q is accepted alone but not as a key: %v", p, err)
		}
		expect := func(host, port, source string) {
			t.Helper()
			e := set.Resolve(host, port)
			want := 5 * time.Second
			if source == p {
				want = 42 * time.Second
			}
			if e.Source != source || e.DialTimeout != want {
				t.Fatalf("pattern %q: Resolve(%q, %q) = %q with dial %v, want %q with %v", p, host, port, e.Source, e.DialTimeout, source, want)
			}
		}

		host, port, wildcard := patternProbe(p)
		switch {
		case wildcard:
			suffix := p[len("*."):]
			expect(host, "", p)
			expect("b."+host, "443", p)
			expect(strings.ToUpper(host)+".", "443", p)
			expect(suffix, "", "default")
		case port != "":
			expect(host, port, p)
			if strings.Contains(host, ":") {
				expect("["+host+"]", port, p)
			}
			expect(strings.ToUpper(host), port, p)
			expect(host, "", "default")
			other := "1"
			if port == "1" {
				other = "2"
			}
			expect(host, other, "default")
		default:
			expect(host, "", p)
			expect(host, "443", p)
			expect(strings.ToUpper(host), "", p)
			expect(host+".", "", p)
			if strings.Contains(host, ":") {
				expect("["+host+"]", "", p)
			}
		}
	})
}
