package server

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"

	pooldv1 "github.com/poold/poold/gen/poold/v1"
	"github.com/poold/poold/pool"
)

func TestPolicyConversionKeepsPresence(t *testing.T) {
	tests := []struct {
		name string
		in   *pooldv1.Policy
	}{
		{"an empty policy stays empty", &pooldv1.Policy{Name: "policies/a.example.com"}},
		{"zero values stay set", &pooldv1.Policy{
			Name:                       defaultPolicyName,
			RequestTimeout:             pdur(0),
			MaxConnLifetime:            pdur(0),
			MaxRetries:                 pu32(0),
			MaxConnsPerHost:            pu32(0),
			DisableKeepalives:          pbool(false),
			ProxyUrl:                   pstr(""),
			TcpKeepalive:               &pooldv1.TcpKeepalive{Enabled: pbool(false)},
			MaxConcurrentStreams:       pu32(0),
			StrictMaxConcurrentStreams: pbool(false),
			H2ReadIdleTimeout:          pdur(0),
		}},
		{"each protocols value stays itself", &pooldv1.Policy{
			Name:      "policies/a.example.com",
			Protocols: pproto(pooldv1.Protocols_PROTOCOLS_H2C),
		}},
		{"one keep-alive field leaves the others unset", &pooldv1.Policy{
			Name:         defaultPolicyName,
			TcpKeepalive: &pooldv1.TcpKeepalive{Interval: pdur(1500 * time.Millisecond)},
		}},
		{"every field set", fromPoolPolicy(defaultPolicyName, pool.DefaultPolicy())},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pp, violations := toPoolPolicy(tt.in)
			if violations != nil {
				t.Fatalf("violations: %v", violations)
			}
			got := fromPoolPolicy(tt.in.GetName(), pp)
			if diff := cmp.Diff(tt.in, got, protocmp.Transform()); diff != "" {
				t.Errorf("round trip (-in +out):\n%s", diff)
			}
		})
	}
}

func TestEveryPolicyFieldIsConverted(t *testing.T) {
	// A field added to the proto but not to the conversion would stay
	// unset here.
	full := fromPoolPolicy(defaultPolicyName, pool.DefaultPolicy())
	wantPolicyFullySet(t, full.ProtoReflect())
	pp, violations := toPoolPolicy(full)
	if violations != nil {
		t.Fatal(violations)
	}
	if diff := cmp.Diff(pool.DefaultPolicy(), pp); diff != "" {
		t.Errorf("proto to pool (-want +got):\n%s", diff)
	}
}

func TestAnEmptyKeepAliveMessageInAPolicyInheritsEverything(t *testing.T) {
	pp, _ := toPoolPolicy(&pooldv1.Policy{TcpKeepalive: &pooldv1.TcpKeepalive{}})
	if pp.TCPKeepAlive != (pool.TCPKeepAlive{}) {
		t.Errorf("keep-alive = %+v, want all unset", pp.TCPKeepAlive)
	}
	if got := fromPoolPolicy(defaultPolicyName, pp); got.TcpKeepalive != nil {
		t.Errorf("tcp_keepalive = %v, want absent", got.TcpKeepalive)
	}
}

func TestConvertedPoliciesShareNothingWithTheRequest(t *testing.T) {
	in := &pooldv1.Policy{MaxRetries: pu32(2), TcpKeepalive: &pooldv1.TcpKeepalive{Count: pu32(3)}}
	pp, _ := toPoolPolicy(in)
	*in.MaxRetries = 7
	*in.TcpKeepalive.Count = 9
	if *pp.MaxRetries != 2 || *pp.TCPKeepAlive.Count != 3 {
		t.Errorf("converted policy changed with its request: %d %d", *pp.MaxRetries, *pp.TCPKeepAlive.Count)
	}
}

func TestEffectivePoliciesAreNamedAfterTheirSource(t *testing.T) {
	for source, want := range map[string]string{
		"default":              defaultPolicyName,
		"":                     defaultPolicyName,
		"*.example.com":        "policies/*.example.com",
		"api.example.com:8443": "policies/api.example.com:8443",
	} {
		e := pool.PolicySet{}.Resolve("x.example.com", "")
		e.Source = source
		got := effectiveProto(e)
		if got.GetName() != want {
			t.Errorf("source %q: name %q, want %q", source, got.GetName(), want)
		}
		wantPolicyFullySet(t, got.ProtoReflect())
	}
}

func TestEveryProtocolsValueMapsToTheEngineOneOfTheSameMeaning(t *testing.T) {
	tests := []struct {
		in   pooldv1.Protocols
		want pool.Protocols
	}{
		{pooldv1.Protocols_PROTOCOLS_H2_PREFERRED, pool.ProtocolsH2Preferred},
		{pooldv1.Protocols_PROTOCOLS_HTTP1, pool.ProtocolsHTTP1},
		{pooldv1.Protocols_PROTOCOLS_H2, pool.ProtocolsH2},
		{pooldv1.Protocols_PROTOCOLS_H2C, pool.ProtocolsH2C},
	}
	for _, tt := range tests {
		t.Run(tt.in.String(), func(t *testing.T) {
			pp, violations := toPoolPolicy(&pooldv1.Policy{Protocols: pproto(tt.in)})
			if violations != nil {
				t.Fatal(violations)
			}
			if pp.Protocols == nil || *pp.Protocols != tt.want {
				t.Fatalf("protocols %v became %v, want %v", tt.in, pp.Protocols, tt.want)
			}
			if got := fromPoolPolicy(defaultPolicyName, pp).GetProtocols(); got != tt.in {
				t.Errorf("and came back as %v", got)
			}
			// The API's name, lowercased without its prefix, is the
			// engine's, so operators see one vocabulary.
			if name := strings.ToLower(strings.TrimPrefix(tt.in.String(), "PROTOCOLS_")); name != tt.want.String() {
				t.Errorf("API name %q, engine name %q", name, tt.want.String())
			}
		})
	}
	if n := len(pooldv1.Protocols_name) - 1; n != len(tests) {
		t.Errorf("the API defines %d protocols values besides UNSPECIFIED, the table covers %d", n, len(tests))
	}
}

func TestAProtocolsValueThatNamesNoChoiceIsRefusedByName(t *testing.T) {
	for _, v := range []pooldv1.Protocols{pooldv1.Protocols_PROTOCOLS_UNSPECIFIED, 5, -1} {
		pp, violations := toPoolPolicy(&pooldv1.Policy{Protocols: pproto(v), MaxRetries: pu32(1)})
		if len(violations) != 1 || violations[0].Field != "policy.protocols" {
			t.Errorf("protocols %d: violations %v, want one naming policy.protocols", v, violations)
		}
		if pp.Protocols != nil {
			t.Errorf("protocols %d reached the engine as %v", v, *pp.Protocols)
		}
	}
}
