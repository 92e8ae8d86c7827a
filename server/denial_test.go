package server

import (
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/poold/poold/dialer"
	pooldv1 "github.com/poold/poold/gen/poold/v1"
	"github.com/poold/poold/pool"
)

// A caller denied egress learns the host as it named it, which rule set
// refused and why, and nothing an attacker could use to map internal names
// to addresses: not the resolved IP, not the operator's rule. The warn log
// line has both. Every address here is loopback and every dial is denied
// before a connect, so nothing leaves this machine whatever the outcome.
func TestDenialsTellTheCallerNoAddressAndNoRule(t *testing.T) {
	resolver := newFakeResolver()
	resolver.set("db.secret.example", netip.MustParseAddr("127.0.0.10"))
	resolver.set("billing.corp.example", netip.MustParseAddr("127.0.0.11"))
	resolver.set("metadata.corp.example", netip.MustParseAddr("169.254.169.254"))
	rules, err := dialer.NewEgressRules(dialer.EgressConfig{
		Allow: []string{"127.0.0.11/32"},
		Deny:  []string{"*.secret.example", "127.0.0.11/32"},
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, url       string
		ruleSet, reason string
		secrets         []string // in the log, never in what the caller gets
	}{
		{"a name that resolves to a cloud metadata address", "http://metadata.corp.example/latest/", dialer.RuleSetBuiltIn, "cloud-metadata", []string{"169.254.169.254", "169.254.169.254/32"}},
		{"a host pattern of the operator's", "https://db.secret.example/", dialer.RuleSetOperator, "host denied", []string{"*.secret.example"}},
		{"an address rule of the operator's", "http://billing.corp.example:8080/", dialer.RuleSetOperator, "address denied", []string{"127.0.0.11", "127.0.0.11/32"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client, logs, _ := newObservedServerWith(t, slog.LevelInfo, false,
				pool.Options{Dialer: &dialer.Dialer{Resolver: resolver, Egress: rules}}, false)
			_, err := client.Do(testContext(t), &pooldv1.DoRequest{Url: tc.url})
			wantStatus(t, err, codes.PermissionDenied, ReasonEgressDenied)
			st := status.Convert(err)
			md := errorInfo(err).GetMetadata()
			seen := st.Message()
			for k, v := range md {
				seen += " " + k + "=" + v
			}
			for _, secret := range tc.secrets {
				if strings.Contains(seen, secret) {
					t.Errorf("the caller was told %q: %s", secret, seen)
				}
			}
			if md["rule_set"] != tc.ruleSet || md["denial"] != tc.reason {
				t.Errorf("ErrorInfo %v, want rule_set %q and denial %q", md, tc.ruleSet, tc.reason)
			}
			if !strings.Contains(st.Message(), md["host"]) || !strings.Contains(st.Message(), tc.reason) {
				t.Errorf("message %q does not name the host %q and the reason %q", st.Message(), md["host"], tc.reason)
			}

			var logged string
			for _, rec := range logs.lines(t) {
				if rec["msg"] == "egress denied" && rec["level"] == "WARN" {
					logged, _ = rec["err"].(string)
				}
			}
			for _, secret := range tc.secrets {
				if !strings.Contains(logged, secret) {
					t.Errorf("the warn log line %q does not have %q", logged, secret)
				}
			}
		})
	}
}

// The same holds for failures on the way to an allowed address: the caller
// is not told which address a name resolved to, unless the operator says
// every caller is trusted.
func TestFailuresNameTheResolvedAddressOnlyToTrustedCallers(t *testing.T) {
	refused := closedPort(t)
	port := refused[strings.LastIndex(refused, ":")+1:]
	resolver := newFakeResolver()
	resolver.set("api.corp.example", netip.MustParseAddr("127.0.0.1"))
	rules, err := dialer.NewEgressRules(dialer.EgressConfig{Allow: []string{"127.0.0.1/32"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, reveal := range []bool{false, true} {
		client, logs, _ := newObservedServerWith(t, slog.LevelInfo, false,
			pool.Options{Dialer: &dialer.Dialer{Resolver: resolver, Egress: rules}}, reveal)
		_, err := client.Do(testContext(t), &pooldv1.DoRequest{Url: "http://api.corp.example:" + port + "/"})
		wantStatus(t, err, codes.Unavailable, ReasonConnectionRefused)
		seen := status.Convert(err).Message()
		for k, v := range errorInfo(err).GetMetadata() {
			seen += " " + k + "=" + v
		}
		if got := strings.Contains(seen, "127.0.0.1"); got != reveal {
			t.Errorf("trusted %v: the caller learned the address: %v (%s)", reveal, got, seen)
		}
		logged := ""
		for _, rec := range logs.lines(t) {
			if rec["msg"] == "call failed" {
				logged, _ = rec["grpc.error"].(string)
			}
		}
		if !strings.Contains(logged, "127.0.0.1:"+port) {
			t.Errorf("the log line %q does not name the address", logged)
		}
	}
}
