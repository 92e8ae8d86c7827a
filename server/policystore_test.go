package server

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	pooldv1 "github.com/poold/poold/gen/poold/v1"
)

// readPolicyFile parses the policy file as a caller of the daemon would.
func readPolicyFile(t *testing.T, path string) *pooldv1.ListPoliciesResponse {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading the policy file: %v", err)
	}
	var got pooldv1.ListPoliciesResponse
	if err := protojson.Unmarshal(data, &got); err != nil {
		t.Fatalf("policy file does not parse: %v\n%s", err, data)
	}
	return &got
}

// wantPolicyFileMatches checks that the policy file holds what want shows,
// exactly: the API shows the default policy with its built-in values
// filled in, the file holds only what was set.
func wantPolicyFileMatches(t *testing.T, path string, want *pooldv1.ListPoliciesResponse) {
	t.Helper()
	file := readPolicyFile(t, path)
	for i, p := range file.GetPolicies() {
		if p.GetName() == defaultPolicyName {
			file.Policies[i] = shown("", p)
		}
	}
	if diff := cmp.Diff(want, file, protocmp.Transform()); diff != "" {
		t.Errorf("policy file differs from ListPolicies (-list +file):\n%s", diff)
	}
}

func TestAPolicyChangeIsOnDiskBeforeTheRPCReturns(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policies.json")
	h := newPolicyHarness(t, path)
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("opening created the policy file before any change: %v", err)
	}

	h.update(&pooldv1.Policy{Name: defaultPolicyName, IdleConnTimeout: pdur(45 * time.Second)}, false)
	wantPolicyFileMatches(t, path, h.list())

	h.update(&pooldv1.Policy{Name: "policies/api.example.com", ProxyUrl: pstr("http://user:secret@proxy:3128")}, true)
	wantPolicyFileMatches(t, path, h.list())
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if mode := st.Mode().Perm(); mode != 0o600 {
		t.Errorf("new policy file has mode %v, want 0600: a proxy URL may hold a password", mode)
	}

	if _, err := h.client.DeletePolicy(policyTestContext(t), &pooldv1.DeletePolicyRequest{Name: "policies/api.example.com"}); err != nil {
		t.Fatal(err)
	}
	wantPolicyFileMatches(t, path, h.list())
}

func TestAReopenedStoreListsTheSamePoliciesAndAppliesThem(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policies.json")
	h := newPolicyHarness(t, path)
	h.update(&pooldv1.Policy{Name: defaultPolicyName, MaxIdleConns: pu32(9), TcpKeepalive: &pooldv1.TcpKeepalive{Enabled: pbool(false)}}, false)
	h.update(&pooldv1.Policy{Name: "policies/*.example.com", DialTimeout: pdur(1500 * time.Millisecond), DisableKeepalives: pbool(true)}, true)
	h.update(&pooldv1.Policy{Name: "policies/api.example.com:8443", MaxRetries: pu32(0), ProxyUrl: pstr("direct")}, true)
	want := h.list()

	rec := &policySetRecorder{}
	reopened, err := OpenPolicyStore(path, rec.apply, nil)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, reopened.List(), protocmp.Transform()); diff != "" {
		t.Errorf("reopened store (-before +after):\n%s", diff)
	}
	if rec.count() != 1 {
		t.Fatalf("opening applied %d sets, want 1", rec.count())
	}
	if diff := cmp.Diff(h.store.PolicySet(), rec.last()); diff != "" {
		t.Errorf("set applied on open (-want +got):\n%s", diff)
	}

	// Etags survive the restart: the one read before still guards an update.
	etag := want.GetPolicies()[1].GetEtag()
	got, err := reopened.Update(policyTestContext(t), &pooldv1.Policy{Name: "policies/*.example.com", MaxRetries: pu32(2), Etag: etag}, nil, false)
	if err != nil {
		t.Fatalf("update with an etag from before the restart: %v", err)
	}
	_, err = reopened.Update(policyTestContext(t), &pooldv1.Policy{Name: "policies/*.example.com", MaxRetries: pu32(3), Etag: etag}, nil, false)
	wantPolicyStatus(t, err, codes.Aborted, ReasonEtagMismatch)
	if got.GetEtag() == etag {
		t.Error("etag did not change")
	}
}

func TestAMissingPolicyFileStartsFromTheBuiltInDefaults(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policies.json")
	store, err := OpenPolicyStore(path, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	list := store.List().GetPolicies()
	if len(list) != 1 || list[0].GetName() != defaultPolicyName || list[0].GetEtag() == "" {
		t.Fatalf("policies of a fresh store = %v, want an empty default policy with an etag", list)
	}
	if diff := cmp.Diff(builtInDefault(), list[0], protocmp.Transform(), ignorePolicyVersion); diff != "" {
		t.Errorf("default policy (-want +got):\n%s", diff)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("policy file exists before the first change: %v", err)
	}
}

func TestAnEmptyPolicyFileHoldsNoPolicies(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policies.json")
	if err := os.WriteFile(path, []byte("\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	store, err := OpenPolicyStore(path, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(store.List().GetPolicies()); n != 1 {
		t.Errorf("%d policies, want the default only", n)
	}
	if _, err := store.Update(policyTestContext(t), &pooldv1.Policy{Name: defaultPolicyName, MaxRetries: pu32(0)}, nil, false); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if mode := st.Mode().Perm(); mode != 0o644 {
		t.Errorf("saving changed the file's mode to %v, want it kept at 0644", mode)
	}
}

func TestAPolicyFileInAMissingDirectoryFailsToOpen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nope", "policies.json")
	_, err := OpenPolicyStore(path, nil, nil)
	if err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("error = %v, want one naming %s", err, path)
	}
}

func TestABadPolicyFileRefusesToLoadAndSaysWhere(t *testing.T) {
	tests := []struct {
		name, file, want string
	}{
		{
			name: "a negative duration",
			file: `{"policies": [{"name": "policies/api.example.com", "dialTimeout": "-1s"}]}`,
			want: "policies/api.example.com: dial_timeout: must be positive",
		},
		{
			name: "a nested field out of range",
			file: `{"policies": [{"name": "policies/default", "tcpKeepalive": {"count": 0}}]}`,
			want: "policies/default: tcp_keepalive.count: must be from 1 to 127",
		},
		{
			name: "a duration beyond time.Duration",
			file: `{"policies": [{"name": "policies/default", "idleConnTimeout": "315576000000s"}]}`,
			want: "policies/default: idle_conn_timeout: duration of 315576000000s is out of range",
		},
		{
			name: "max_idle_conns on a host policy",
			file: `{"policies": [{"name": "policies/a.example.com", "maxIdleConns": 3}]}`,
			want: "policies/a.example.com: max_idle_conns: only allowed in policies/default",
		},
		{
			name: "an unknown field",
			file: `{"policies": [{"name": "policies/default", "dialTimeoutt": "1s"}]}`,
			want: `unknown field "dialTimeoutt"`,
		},
		{
			name: "a bad host pattern",
			file: `{"policies": [{"name": "policies/default"}, {"name": "policies/API.example.com"}]}`,
			want: `policies[1] ("policies/API.example.com"): name: host pattern must be lowercase`,
		},
		{
			name: "a policy listed twice",
			file: `{"policies": [{"name": "policies/a.example.com"}, {"name": "policies/a.example.com"}]}`,
			want: "policies/a.example.com: listed twice",
		},
		{
			name: "a bad update time",
			file: `{"policies": [{"name": "policies/default", "updateTime": "0000-01-01T00:00:00Z"}]}`,
			want: "update_time",
		},
		{
			name: "a torn file",
			file: `{"policies": [{"name": "policies/default", "dialTim`,
			want: "unexpected EOF",
		},
		{
			name: "every problem at once",
			file: `{"policies": [{"name": "policies/default", "maxRetries": 99}, {"name": "policies/b.example.com", "tlsHandshakeTimeout": "0s"}]}`,
			want: "policies/default: max_retries: must be at most 10, got 99; policies/b.example.com: tls_handshake_timeout: must be positive",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "policies.json")
			if err := os.WriteFile(path, []byte(tt.file), 0o600); err != nil {
				t.Fatal(err)
			}
			rec := &policySetRecorder{}
			_, err := OpenPolicyStore(path, rec.apply, nil)
			if err == nil {
				t.Fatal("a bad policy file loaded")
			}
			if prefix := "policy file " + path + ": "; !strings.HasPrefix(err.Error(), prefix) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error = %q, want %q naming %s", err, tt.want, path)
			}
			if rec.count() != 0 {
				t.Error("a bad policy file reached the engine")
			}
		})
	}
}

func TestAHandEditedPolicyGetsANewEtag(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policies.json")
	h := newPolicyHarness(t, path)
	old := h.update(&pooldv1.Policy{Name: "policies/api.example.com", MaxRetries: pu32(1)}, true)

	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	edited := strings.Replace(string(data), `"maxRetries": 1`, `"maxRetries": 2`, 1)
	edited = strings.Replace(edited, `"maxRetries":  1`, `"maxRetries":  2`, 1)
	if edited == string(data) {
		t.Fatalf("max_retries not found in the file:\n%s", data)
	}
	if err := os.WriteFile(path, []byte(edited), 0o600); err != nil {
		t.Fatal(err)
	}

	reopened, err := OpenPolicyStore(path, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := reopened.Get("policies/api.example.com")
	if err != nil {
		t.Fatal(err)
	}
	if got.GetMaxRetries() != 2 || got.GetEtag() == old.GetEtag() {
		t.Fatalf("edited policy = %v, want max_retries 2 and an etag other than %q", got, old.GetEtag())
	}
	_, err = reopened.Update(policyTestContext(t), &pooldv1.Policy{Name: "policies/api.example.com", MaxRetries: pu32(3), Etag: old.GetEtag()}, nil, false)
	wantPolicyStatus(t, err, codes.Aborted, ReasonEtagMismatch)
	if def, _ := reopened.Get(defaultPolicyName); def.GetEtag() != h.get(defaultPolicyName).GetEtag() {
		t.Error("the untouched default policy lost its etag")
	}
}

func TestATornTempFileNeverReplacesThePolicyFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "policies.json")
	h := newPolicyHarness(t, path)
	h.update(&pooldv1.Policy{Name: defaultPolicyName, MaxRetries: pu32(2)}, false)
	want := h.list()

	// A crash in the middle of a save leaves a partial temporary file.
	torn := filepath.Join(dir, ".policies.json.tmp-123456")
	if err := os.WriteFile(torn, []byte(`{"policies": [{"name": "policies/default", "maxRet`), 0o600); err != nil {
		t.Fatal(err)
	}
	reopened, err := OpenPolicyStore(path, nil, nil)
	if err != nil {
		t.Fatalf("the policy file no longer loads: %v", err)
	}
	if diff := cmp.Diff(want, reopened.List(), protocmp.Transform()); diff != "" {
		t.Errorf("reopened store (-before +after):\n%s", diff)
	}
	if _, err := reopened.Update(policyTestContext(t), &pooldv1.Policy{Name: defaultPolicyName, MaxRetries: pu32(3)}, nil, false); err != nil {
		t.Fatal(err)
	}
	wantPolicyFileMatches(t, path, reopened.List())
	if data, err := os.ReadFile(torn); err != nil || !strings.HasSuffix(string(data), "maxRet") {
		t.Errorf("the torn file was touched: %q, %v", data, err)
	}
}

func TestAFailedPolicySaveRollsBackTheEngineAndTheStore(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "etc")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "policies.json")
	h := newPolicyHarness(t, path)
	h.update(&pooldv1.Policy{Name: defaultPolicyName, MaxRetries: pu32(2)}, false)
	before := h.list()
	setBefore := h.rec.last()

	// Taking the directory away fails the next save even for root.
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	_, err := h.client.UpdatePolicy(policyTestContext(t), &pooldv1.UpdatePolicyRequest{
		Policy:     &pooldv1.Policy{Name: defaultPolicyName, MaxRetries: pu32(5), Etag: before.GetPolicies()[0].GetEtag()},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"max_retries"}},
	})
	st := wantPolicyStatus(t, err, codes.Internal, ReasonPolicyNotSaved)
	if !strings.Contains(st.Message(), path) {
		t.Errorf("message %q does not name the file", st.Message())
	}
	if diff := cmp.Diff(before, h.list(), protocmp.Transform()); diff != "" {
		t.Errorf("a change that was not saved is visible (-before +after):\n%s", diff)
	}
	if diff := cmp.Diff(setBefore, h.rec.last()); diff != "" {
		t.Errorf("engine was not given the previous set back (-want +got):\n%s", diff)
	}

	// Once the file can be written again, the same etag still works.
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	h.update(&pooldv1.Policy{Name: defaultPolicyName, MaxRetries: pu32(5), Etag: before.GetPolicies()[0].GetEtag()}, false)
	wantPolicyFileMatches(t, path, h.list())
}

func TestAMemoryOnlyPolicyStoreWritesNothing(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	h := newPolicyHarness(t, "")
	h.update(&pooldv1.Policy{Name: defaultPolicyName, MaxRetries: pu32(2)}, false)
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 0 {
		t.Errorf("memory-only store wrote %v", entries)
	}
}

// The API shows the default policy's built-in values, but the file keeps
// only what an operator set: a built-in that changes in a later release
// must reach every policy that never set it.
func TestThePolicyFileKeepsOnlyWhatWasSet(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policies.json")
	h := newPolicyHarness(t, path)
	shownPolicy := h.update(&pooldv1.Policy{Name: defaultPolicyName, MaxRetries: pu32(3)}, false)
	if shownPolicy.GetDialTimeout() == nil || shownPolicy.GetMaxRetries() != 3 {
		t.Errorf("UpdatePolicy returned %v, want max_retries 3 and the built-in values", shownPolicy)
	}
	file := readPolicyFile(t, path).GetPolicies()
	want := &pooldv1.Policy{Name: defaultPolicyName, MaxRetries: pu32(3)}
	if len(file) != 1 || !cmp.Equal(want, file[0], protocmp.Transform(), ignorePolicyVersion) {
		t.Errorf("policy file holds %v, want only %v", file, want)
	}
}

func TestPropagateTraceContextIsSetAndInheritedLikeEveryField(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policies.json")
	h := newPolicyHarness(t, path)
	if got := h.get(defaultPolicyName).PropagateTraceContext; got == nil || *got {
		t.Fatalf("policies/default shows propagate_trace_context %v, want the built-in false", got)
	}
	h.update(&pooldv1.Policy{Name: defaultPolicyName, PropagateTraceContext: pbool(true)}, false, "propagate_trace_context")
	h.update(&pooldv1.Policy{Name: "policies/*.internal.example", PropagateTraceContext: pbool(false)}, true)
	h.update(&pooldv1.Policy{Name: "policies/api.example.com", MaxRetries: pu32(2)}, true)

	reopened, err := OpenPolicyStore(path, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		host string
		want bool
	}{
		{"api.example.com", true},        // inherited from the default policy
		{"db.internal.example", false},   // the host policy's own
		{"other.example.net:8443", true}, // no host policy
	} {
		for _, store := range []*PolicyStore{h.store, reopened} {
			got, err := store.Effective(tt.host)
			if err != nil {
				t.Fatal(err)
			}
			if p := got.PropagateTraceContext; p == nil || *p != tt.want {
				t.Errorf("effective propagate_trace_context for %s = %v, want %v", tt.host, p, tt.want)
			}
		}
	}
}
