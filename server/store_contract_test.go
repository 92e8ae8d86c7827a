package server

import (
	"bytes"
	"io"
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
	"github.com/poold/poold/pool"
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

	t.Run("the HTTP/2 fields are stored, read back as written and applied", func(t *testing.T) {
		st := newStorage(t)
		raw := st.open(t)
		ctx := policyTestContext(t)
		// Written as an operator writes the stored form by hand: protojson,
		// the enum by its name.
		if _, err := raw.Put(ctx, "policies/h2c.example.com", []byte(`{"name":"policies/h2c.example.com","protocols":"PROTOCOLS_H2C","h2ReadIdleTimeout":"0s"}`), 0); err != nil {
			t.Fatal(err)
		}
		if _, err := raw.Put(ctx, "policies/unspecified.example.com", []byte(`{"name":"policies/unspecified.example.com","protocols":"PROTOCOLS_UNSPECIFIED"}`), 0); err != nil {
			t.Fatal(err)
		}
		log := &syncWriter{}
		s, _ := openContractStore(t, raw, StoreOptions{SkipBadValues: true, Logger: slog.New(slog.NewTextHandler(log, nil))})
		if got := log.String(); !strings.Contains(got, "policies/unspecified.example.com: protocols: PROTOCOLS_UNSPECIFIED is not a choice") {
			t.Errorf("log = %q, want the PROTOCOLS_UNSPECIFIED value refused naming its policy and field", got)
		}
		written := &pooldv1.Policy{
			Name:                       "policies/api.example.com",
			Protocols:                  pproto(pooldv1.Protocols_PROTOCOLS_HTTP1),
			MaxConcurrentStreams:       pu32(64),
			StrictMaxConcurrentStreams: pbool(true),
			H2ReadIdleTimeout:          pdur(10 * time.Second),
			H2PingTimeout:              pdur(3 * time.Second),
		}
		if _, err := s.Update(ctx, written, nil, true); err != nil {
			t.Fatal(err)
		}
		want := s.List()
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}

		again, rec := openContractStore(t, st.open(t), StoreOptions{SkipBadValues: true, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if diff := cmp.Diff(want, again.List(), protocmp.Transform()); diff != "" {
			t.Errorf("policies after a restart (-before +after):\n%s", diff)
		}
		got, err := again.Get(written.GetName())
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(written, got, protocmp.Transform(), ignorePolicyVersion); diff != "" {
			t.Errorf("read back (-written +read):\n%s", diff)
		}
		engine := rec.last().Hosts
		api, h2c := engine["api.example.com"], engine["h2c.example.com"]
		if api.Protocols == nil || *api.Protocols != pool.ProtocolsHTTP1 || api.MaxConcurrentStreams == nil || *api.MaxConcurrentStreams != 64 ||
			api.StrictMaxConcurrentStreams == nil || !*api.StrictMaxConcurrentStreams ||
			api.H2ReadIdleTimeout == nil || *api.H2ReadIdleTimeout != 10*time.Second || api.H2PingTimeout == nil || *api.H2PingTimeout != 3*time.Second {
			t.Errorf("engine runs %+v for api.example.com, want every HTTP/2 field as written", api)
		}
		if h2c.Protocols == nil || *h2c.Protocols != pool.ProtocolsH2C || h2c.H2ReadIdleTimeout == nil || *h2c.H2ReadIdleTimeout != 0 {
			t.Errorf("engine runs %+v for h2c.example.com, want h2c with no PINGs", h2c)
		}
		if _, ok := engine["unspecified.example.com"]; ok {
			t.Error("the engine runs a policy whose protocols named no choice")
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
	if opts.Logger == nil {
		// What the store logged tells why a test of its syncing failed.
		log := &syncWriter{}
		opts.Logger = slog.New(slog.NewTextHandler(log, nil))
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("the store's log:\n%s", log)
			}
		})
	}
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
