package server

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"github.com/poold/poold/dialer"
	pooldv1 "github.com/poold/poold/gen/poold/v1"
	"github.com/poold/poold/pool"
)

// egressDaemon is the gRPC server as the daemon builds it, with egress
// rule sets on, client and admin tokens, and a policy file.
type egressDaemon struct {
	http   pooldv1.HTTPServiceClient
	egress pooldv1.EgressServiceClient
}

func startEgressDaemon(t *testing.T, policyFile string, clients, admins *TokenFile) *egressDaemon {
	t.Helper()
	engine, store := newEngineAndStore(t, pool.Options{}, policyFile)
	srv, err := New(Config{
		Engine: engine, Policies: store, ClientTokens: clients, AdminTokens: admins,
		// The flags' default: built-in denies only, so loopback is denied.
		Egress: &EgressOptions{Default: dialer.EgressConfig{}},
	})
	if err != nil {
		t.Fatal(err)
	}
	_, cc, _ := serveTest(t, srv, nil)
	return &egressDaemon{http: pooldv1.NewHTTPServiceClient(cc), egress: pooldv1.NewEgressServiceClient(cc)}
}

func as(ctx context.Context, token string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
}

// Two callers with different tokens get different egress answers for the
// same URL; a rule change over gRPC takes effect on the next request
// without a restart, and survives one.
func TestEgressRuleSetsPerCallerChangeLiveAndSurviveARestart(t *testing.T) {
	up := upstream(t, func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) })
	clients := writeTokenFile(t, "alice:token-of-alice", "bob:token-of-bob")
	admins := writeTokenFile(t, "ops:token-of-ops")
	file := filepath.Join(t.TempDir(), "policies.json")
	d := startEgressDaemon(t, file, clients, admins)
	ctx := testContext(t)

	outcome := func(d *egressDaemon, token string) codes.Code {
		t.Helper()
		_, err := d.http.Do(as(ctx, token), &pooldv1.DoRequest{Url: up.URL})
		if err != nil {
			if info := errorInfo(err); info.GetReason() != ReasonEgressDenied && info.GetReason() != "" {
				t.Fatalf("Do: %v", err)
			}
		}
		code, _ := codeAndReason(err)
		return code
	}
	wantOutcomes := func(d *egressDaemon, when string, alice, bob codes.Code) {
		t.Helper()
		if got := outcome(d, "token-of-alice"); got != alice {
			t.Errorf("%s: alice got %v, want %v", when, got, alice)
		}
		if got := outcome(d, "token-of-bob"); got != bob {
			t.Errorf("%s: bob got %v, want %v", when, got, bob)
		}
	}
	update := func(rs *pooldv1.EgressRuleSet, paths ...string) *pooldv1.EgressRuleSet {
		t.Helper()
		req := &pooldv1.UpdateEgressRuleSetRequest{EgressRuleSet: rs, AllowMissing: true}
		if paths != nil {
			req.UpdateMask = &fieldmaskpb.FieldMask{Paths: paths}
		}
		got, err := d.egress.UpdateEgressRuleSet(as(ctx, "token-of-ops"), req)
		if err != nil {
			t.Fatalf("UpdateEgressRuleSet: %v", err)
		}
		return got
	}

	wantOutcomes(d, "with the flags' default for both", codes.PermissionDenied, codes.PermissionDenied)
	team := update(&pooldv1.EgressRuleSet{Name: "egressRuleSets/team-a", Allow: []string{"127.0.0.1/32"}, Callers: []string{"token:alice"}})
	wantOutcomes(d, "with alice bound to a rule set that allows loopback", codes.OK, codes.PermissionDenied)
	update(&pooldv1.EgressRuleSet{Name: team.GetName()}, "allow")
	wantOutcomes(d, "after the allow was taken away", codes.PermissionDenied, codes.PermissionDenied)
	saved := update(&pooldv1.EgressRuleSet{Name: team.GetName(), Allow: []string{"127.0.0.1/32"}}, "allow")
	wantOutcomes(d, "after it was given back", codes.OK, codes.PermissionDenied)

	// Deleted, alice falls back to the default; made again, she is back.
	if _, err := d.egress.DeleteEgressRuleSet(as(ctx, "token-of-ops"), &pooldv1.DeleteEgressRuleSetRequest{Name: team.GetName()}); err != nil {
		t.Fatal(err)
	}
	wantOutcomes(d, "after her rule set was deleted", codes.PermissionDenied, codes.PermissionDenied)
	saved = update(&pooldv1.EgressRuleSet{Name: team.GetName(), Allow: []string{"127.0.0.1/32"}, Callers: []string{"token:alice"}})
	wantOutcomes(d, "after it was made again", codes.OK, codes.PermissionDenied)

	// A stale etag loses.
	_, err := d.egress.UpdateEgressRuleSet(as(ctx, "token-of-ops"), &pooldv1.UpdateEgressRuleSetRequest{
		EgressRuleSet: &pooldv1.EgressRuleSet{Name: team.GetName(), Etag: team.GetEtag()},
		UpdateMask:    &fieldmaskpb.FieldMask{Paths: []string{"allow"}},
	})
	wantPolicyStatus(t, err, codes.Aborted, ReasonEtagMismatch)
	// Rule sets are admin resources.
	if _, err := d.egress.ListEgressRuleSets(as(ctx, "token-of-alice"), &pooldv1.ListEgressRuleSetsRequest{}); err == nil {
		t.Error("a client token listed the egress rule sets")
	}

	restarted := startEgressDaemon(t, file, clients, admins)
	wantOutcomes(restarted, "after a restart", codes.OK, codes.PermissionDenied)
	got, err := restarted.egress.GetEgressRuleSet(as(ctx, "token-of-ops"), &pooldv1.GetEgressRuleSetRequest{Name: team.GetName()})
	if err != nil || got.GetEtag() != saved.GetEtag() {
		t.Errorf("after a restart: %v, %v; want the saved rule set with etag %s", got, err, saved.GetEtag())
	}
	list, err := restarted.egress.ListEgressRuleSets(as(ctx, "token-of-ops"), &pooldv1.ListEgressRuleSetsRequest{})
	if err != nil || len(list.GetEgressRuleSets()) != 2 || list.GetEgressRuleSets()[0].GetName() != defaultEgressName {
		t.Errorf("ListEgressRuleSets = %v, %v; want the default, then team-a", list, err)
	}
	onDisk := readPolicyFileAs(t, file)
	if n := len(onDisk.GetEgressRuleSets()); n != 1 {
		t.Errorf("the policy file holds %d rule sets, want team-a only: the default is still the flags'", n)
	}
}

// A rule set names what is wrong with it, entry by entry.
func TestEgressRuleSetsRefuseBadEntriesByField(t *testing.T) {
	admins := writeTokenFile(t, "ops:token-of-ops")
	d := startEgressDaemon(t, "", nil, admins)
	ctx := as(testContext(t), "token-of-ops")
	if _, err := d.egress.UpdateEgressRuleSet(ctx, &pooldv1.UpdateEgressRuleSetRequest{
		EgressRuleSet: &pooldv1.EgressRuleSet{Name: "egressRuleSets/a", Callers: []string{"token:x"}}, AllowMissing: true,
	}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		rs    *pooldv1.EgressRuleSet
		field string
	}{
		{&pooldv1.EgressRuleSet{Name: "egressRuleSets/Bad_Name"}, "egress_rule_set.name"},
		{&pooldv1.EgressRuleSet{Name: "egressRuleSets/b", Allow: []string{"10.0.0.0/33"}}, "egress_rule_set.allow[0]"},
		{&pooldv1.EgressRuleSet{Name: "egressRuleSets/b", Deny: []string{"ok.example", "nope!"}}, "egress_rule_set.deny[1]"},
		{&pooldv1.EgressRuleSet{Name: "egressRuleSets/b", AllowedPorts: []uint32{443, 70000}}, "egress_rule_set.allowed_ports[1]"},
		{&pooldv1.EgressRuleSet{Name: "egressRuleSets/b", Callers: []string{"alice"}}, "egress_rule_set.callers[0]"},
		{&pooldv1.EgressRuleSet{Name: "egressRuleSets/b", Callers: []string{"token:x"}}, "egress_rule_set.callers[0]"},
		{&pooldv1.EgressRuleSet{Name: defaultEgressName, Callers: []string{"token:y"}}, "egress_rule_set.callers"},
	} {
		_, err := d.egress.UpdateEgressRuleSet(ctx, &pooldv1.UpdateEgressRuleSetRequest{EgressRuleSet: tc.rs, AllowMissing: true})
		wantFieldViolation(t, err, tc.field)
	}
}

// readPolicyFileAs reads the policy file in its own format.
func readPolicyFileAs(t *testing.T, path string) *pooldv1.PolicyFile {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var f pooldv1.PolicyFile
	if err := protojson.Unmarshal(data, &f); err != nil {
		t.Fatalf("policy file: %v", err)
	}
	return &f
}
