package server

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"

	pooldv1 "github.com/poold/poold/gen/poold/v1"
	"github.com/poold/poold/pool"
)

func TestPolicyChangesReachARealEngine(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
	engine, err := pool.New(pool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { engine.Close() })

	path := filepath.Join(t.TempDir(), "policies.json")
	store, err := OpenPolicyStore(path, engine.SetPolicies, nil)
	if err != nil {
		t.Fatal(err)
	}
	client := servePolicies(t, store)
	ctx := policyTestContext(t)
	_, err = client.UpdatePolicy(ctx, &pooldv1.UpdatePolicyRequest{
		Policy:       &pooldv1.Policy{Name: "policies/api.example.com:8443", IdleConnTimeout: pdur(7 * time.Second)},
		AllowMissing: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(store.PolicySet(), engine.Policies()); diff != "" {
		t.Errorf("engine policies (-store +engine):\n%s", diff)
	}
	if got := engine.EffectivePolicy("https", "api.example.com:8443"); got.Source != "api.example.com:8443" || got.IdleConnTimeout != 7*time.Second {
		t.Errorf("engine resolves %+v", got)
	}

	// A restart applies the saved policies to a fresh engine.
	engine2, err := pool.New(pool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { engine2.Close() })
	if _, err := OpenPolicyStore(path, engine2.SetPolicies, nil); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(store.PolicySet(), engine2.Policies()); diff != "" {
		t.Errorf("restarted engine policies (-store +engine):\n%s", diff)
	}
}
