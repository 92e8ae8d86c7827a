package server

import (
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
			Name:              defaultPolicyName,
			RequestTimeout:    pdur(0),
			MaxConnLifetime:   pdur(0),
			MaxRetries:        pu32(0),
			MaxConnsPerHost:   pu32(0),
			DisableKeepalives: pbool(false),
			ProxyUrl:          pstr(""),
			TcpKeepalive:      &pooldv1.TcpKeepalive{Enabled: pbool(false)},
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
