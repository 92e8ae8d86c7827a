package main

import (
	"io"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestPolicyStoreFlagsAreCheckedNamingTheFlags(t *testing.T) {
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want []string
	}{
		{"both a file and etcd", []string{"--policy-file=/tmp/p.json", "--policy-store=etcd://127.0.0.1:2379/poold"}, nil, []string{"--policy-store", "--policy-file"}},
		{"not etcd", []string{"--policy-store=http://127.0.0.1:2379/poold"}, nil, []string{"--policy-store", "etcd://HOST:PORT"}},
		{"no prefix", []string{"--policy-store=etcd://127.0.0.1:2379"}, nil, []string{"--policy-store", "no key prefix"}},
		{"no port", []string{"--policy-store=etcd://127.0.0.1/poold"}, nil, []string{"--policy-store", `"127.0.0.1"`}},
		{"etcd TLS without a store", []string{"--etcd-ca-file=/tmp/ca.pem"}, nil, []string{"--policy-store"}},
		{"a certificate without its key", []string{"--policy-store=etcd://127.0.0.1:2379/poold", "--etcd-cert-file=/tmp/c.pem"}, nil, []string{"--etcd-key-file"}},
		{"a user without a password", []string{"--policy-store=etcd://127.0.0.1:2379/poold", "--etcd-username=poold"}, nil, []string{"--etcd-password-file"}},
		{"from the environment", nil, map[string]string{"POOLD_POLICY_STORE": "etcd://x"}, []string{"--policy-store (from POOLD_POLICY_STORE)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stderr strings.Builder
			_, err := parseConfig(tt.args, func(k string) string { return tt.env[k] }, io.Discard, &stderr)
			if code := exitCode(err); code != 2 {
				t.Fatalf("exit code = %d (err %v), want 2", code, err)
			}
			for _, w := range tt.want {
				if !strings.Contains(stderr.String(), w) {
					t.Errorf("stderr = %q, want it to name %s", stderr.String(), w)
				}
			}
		})
	}
}

func TestAPolicyStoreURLNamesEveryEndpointAndThePrefix(t *testing.T) {
	cfg, err := parseConfig(nil, func(k string) string {
		return map[string]string{"POOLD_POLICY_STORE": "etcd://10.0.0.1:2379,etcd-2.internal:2379/poold/prod/"}[k]
	}, io.Discard, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	got := cfg.policyStore
	if diff := cmp.Diff([]string{"10.0.0.1:2379", "etcd-2.internal:2379"}, got.endpoints); diff != "" || got.prefix != "/poold/prod" {
		t.Errorf("endpoints (-want +got):\n%s\nprefix %q, want /poold/prod", diff, got.prefix)
	}
}
