package server

import (
	"bytes"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	pooldv1 "github.com/poold/poold/gen/poold/v1"
)

// storage is one place a backend keeps resources, for the contract tests.
type storage struct {
	// open returns a new handle on the storage, as a restarted process
	// opens it.
	open func(t *testing.T) Backend
	// peer returns a handle through which another writer reaches the same
	// storage as b: another replica's client, or for a file the same
	// process's backend.
	peer func(t *testing.T, b Backend) Backend
}

// testBackendContract runs the behaviour every backend must keep against
// the storages newStorage makes, one per subtest.
func testBackendContract(t *testing.T, newStorage func(t *testing.T) storage) {
	t.Run("create, update with a mask and an etag, delete, list", func(t *testing.T) {
		st := newStorage(t)
		s, rec := openContractStore(t, st.open(t), StoreOptions{})
		ctx := policyTestContext(t)

		created, err := s.Update(ctx, &pooldv1.Policy{Name: "policies/api.example.com", MaxRetries: pu32(2), IdleConnTimeout: pdur(40 * time.Second)}, nil, true)
		if err != nil {
			t.Fatalf("creating a policy: %v", err)
		}
		_, err = s.Update(ctx, &pooldv1.Policy{Name: "policies/api.example.com", MaxRetries: pu32(3), Etag: created.GetEtag()},
			&fieldmaskpb.FieldMask{Paths: []string{"max_retries"}}, false)
		if err != nil {
			t.Fatalf("updating with the etag just read: %v", err)
		}
		got, err := s.Get("policies/api.example.com")
		if err != nil {
			t.Fatal(err)
		}
		if got.GetMaxRetries() != 3 || got.GetIdleConnTimeout().AsDuration() != 40*time.Second || got.GetEtag() == created.GetEtag() {
			t.Errorf("after a masked update = %v, want max_retries 3, idle_conn_timeout kept and a new etag", got)
		}
		if rec.last().Hosts["api.example.com"].MaxRetries == nil || *rec.last().Hosts["api.example.com"].MaxRetries != 3 {
			t.Errorf("engine runs %+v, want max_retries 3 for api.example.com", rec.last().Hosts)
		}

		_, err = s.Update(ctx, &pooldv1.Policy{Name: "policies/api.example.com", MaxRetries: pu32(4), Etag: created.GetEtag()}, nil, false)
		wantPolicyStatus(t, err, codes.Aborted, ReasonEtagMismatch)
		wantPolicyStatus(t, s.Delete(ctx, "policies/api.example.com", created.GetEtag()), codes.Aborted, ReasonEtagMismatch)

		if _, err := s.Update(ctx, &pooldv1.Policy{Name: "policies/b.example.com", DisableKeepalives: pbool(true)}, nil, true); err != nil {
			t.Fatal(err)
		}
		names := func() []string {
			var out []string
			for _, p := range s.List().GetPolicies() {
				out = append(out, p.GetName())
			}
			return out
		}
		if diff := cmp.Diff([]string{defaultPolicyName, "policies/api.example.com", "policies/b.example.com"}, names()); diff != "" {
			t.Errorf("List (-want +got):\n%s", diff)
		}
		if err := s.Delete(ctx, "policies/api.example.com", got.GetEtag()); err != nil {
			t.Fatalf("deleting with the current etag: %v", err)
		}
		if diff := cmp.Diff([]string{defaultPolicyName, "policies/b.example.com"}, names()); diff != "" {
			t.Errorf("List after a delete (-want +got):\n%s", diff)
		}
		if _, ok := rec.last().Hosts["api.example.com"]; ok {
			t.Error("the engine still runs a deleted policy")
		}
		wantPolicyStatus(t, s.Delete(ctx, "policies/api.example.com", ""), codes.NotFound, ReasonPolicyNotFound)
	})

	t.Run("a restart keeps every policy, rule set and etag", func(t *testing.T) {
		st := newStorage(t)
		s, _ := openContractStore(t, st.open(t), StoreOptions{})
		ctx := policyTestContext(t)
		useTestEgress(t, s)
		for _, p := range []*pooldv1.Policy{
			{Name: defaultPolicyName, MaxIdleConns: pu32(9)},
			{Name: "policies/*.example.com", DialTimeout: pdur(1500 * time.Millisecond)},
			{Name: "policies/api.example.com:8443", ProxyUrl: pstr("direct")},
		} {
			if _, err := s.Update(ctx, p, nil, true); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := s.UpdateEgress(ctx, &pooldv1.EgressRuleSet{Name: "egressRuleSets/billing", Allow: []string{"10.20.0.0/16"}, Callers: []string{"token:billing"}}, nil, true); err != nil {
			t.Fatal(err)
		}
		wantPolicies, wantEgress := s.List(), s.ListEgress()
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}

		again, rec := openContractStore(t, st.open(t), StoreOptions{})
		useTestEgress(t, again)
		if diff := cmp.Diff(wantPolicies, again.List(), protocmp.Transform()); diff != "" {
			t.Errorf("policies after a restart (-before +after):\n%s", diff)
		}
		if diff := cmp.Diff(wantEgress, again.ListEgress(), protocmp.Transform()); diff != "" {
			t.Errorf("rule sets after a restart (-before +after):\n%s", diff)
		}
		if rec.count() != 1 || rec.last().Default.MaxIdleConns == nil || *rec.last().Default.MaxIdleConns != 9 {
			t.Errorf("opening applied %d sets, the last %+v; want one with max_idle_conns 9", rec.count(), rec.last().Default)
		}
		etag := wantPolicies.GetPolicies()[1].GetEtag()
		if _, err := again.Update(ctx, &pooldv1.Policy{Name: "policies/*.example.com", MaxRetries: pu32(2), Etag: etag}, nil, false); err != nil {
			t.Fatalf("an etag from before the restart: %v", err)
		}
	})

	t.Run("of two writers with the same etag exactly one wins", func(t *testing.T) {
		st := newStorage(t)
		b := st.open(t)
		one, _ := openContractStore(t, b, StoreOptions{})
		two, _ := openContractStore(t, st.peer(t, b), StoreOptions{})
		ctx := policyTestContext(t)
		base, err := one.Get(defaultPolicyName)
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i, s := range []*PolicyStore{one, two} {
			wg.Go(func() {
				_, errs[i] = s.Update(ctx, &pooldv1.Policy{Name: defaultPolicyName, MaxRetries: pu32(uint32(i + 1)), Etag: base.GetEtag()}, nil, false)
			})
		}
		wg.Wait()
		won := 0
		for _, err := range errs {
			if err == nil {
				won++
				continue
			}
			wantPolicyStatus(t, err, codes.Aborted, ReasonEtagMismatch)
		}
		if won != 1 {
			t.Fatalf("%d writers won, want exactly 1 (errors %v)", won, errs)
		}
	})

	t.Run("a bad stored value is reported naming the policy and field and never applied", func(t *testing.T) {
		st := newStorage(t)
		raw := st.open(t)
		ctx := policyTestContext(t)
		if _, err := raw.Put(ctx, "policies/good.example.com", []byte(`{"name":"policies/good.example.com","maxRetries":2}`), 0); err != nil {
			t.Fatal(err)
		}
		if _, err := raw.Put(ctx, "policies/bad.example.com", []byte(`{"name":"policies/bad.example.com","dialTimeout":"-1s"}`), 0); err != nil {
			t.Fatal(err)
		}

		rec := &policySetRecorder{}
		_, err := NewPolicyStore(st.open(t), StoreOptions{Apply: rec.apply})
		if err == nil || !strings.Contains(err.Error(), "policies/bad.example.com: dial_timeout: must be positive") {
			t.Errorf("opening over a bad value = %v, want an error naming policies/bad.example.com and dial_timeout", err)
		}
		if rec.count() != 0 {
			t.Error("a store that refused to open applied policies")
		}

		log := &syncWriter{}
		logger := slog.New(slog.NewTextHandler(log, nil))
		s, rec := openContractStore(t, st.open(t), StoreOptions{SkipBadValues: true, Logger: logger})
		if _, err := s.Get("policies/bad.example.com"); err == nil {
			t.Error("a bad value is served")
		}
		if _, err := s.Get("policies/good.example.com"); err != nil {
			t.Errorf("the good value beside a bad one: %v", err)
		}
		if _, ok := rec.last().Hosts["bad.example.com"]; ok || rec.last().Hosts["good.example.com"].MaxRetries == nil {
			t.Errorf("engine runs %+v, want the good policy and not the bad one", rec.last().Hosts)
		}
		if got := log.String(); !strings.Contains(got, "policies/bad.example.com: dial_timeout: must be positive") {
			t.Errorf("log = %q, want it to name the bad policy and field", got)
		}
	})
}

// openContractStore opens a store over b whose engine is a recorder, and
// closes it at the end of the test.
func openContractStore(t *testing.T, b Backend, opts StoreOptions) (*PolicyStore, *policySetRecorder) {
	t.Helper()
	rec := &policySetRecorder{}
	opts.Apply = rec.apply
	if opts.Now == nil {
		opts.Now = newPolicyClock().Now
	}
	s, err := NewPolicyStore(b, opts)
	if err != nil {
		t.Fatalf("NewPolicyStore: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s, rec
}

// useTestEgress turns on rule sets as the server does, enforced nowhere.
func useTestEgress(t *testing.T, s *PolicyStore) {
	t.Helper()
	if err := s.UseEgress(&pooldv1.EgressRuleSet{}, func([]*pooldv1.EgressRuleSet) error { return nil }); err != nil {
		t.Fatal(err)
	}
}

// syncWriter lets a log written from the store's goroutines be read.
type syncWriter struct {
	mu sync.Mutex
	w  bytes.Buffer
}

func (w *syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.w.Write(p)
}

func (w *syncWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.w.String()
}

func TestTheFileBackendKeepsTheStoreContract(t *testing.T) {
	testBackendContract(t, func(t *testing.T) storage {
		path := filepath.Join(t.TempDir(), "policies.json")
		return storage{
			open: func(t *testing.T) Backend {
				b, err := OpenFileBackend(path)
				if err != nil {
					t.Fatal(err)
				}
				return b
			},
			peer: func(_ *testing.T, b Backend) Backend { return b },
		}
	})
}
