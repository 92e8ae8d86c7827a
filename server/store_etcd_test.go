package server

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	pooldv1 "github.com/poold/poold/gen/poold/v1"
	"github.com/poold/poold/internal/etcdtest"
)

// etcdStorages hands out a fresh key prefix of one cluster per storage.
func etcdStorages(t *testing.T) (*etcdtest.Cluster, func(t *testing.T) storage) {
	c := etcdtest.Start(t, 3)
	var n atomic.Int64
	return c, func(t *testing.T) storage {
		cfg := EtcdConfig{Endpoints: c.Endpoints(), Prefix: fmt.Sprintf("/poold-test-%d", n.Add(1)), ProgressInterval: 100 * time.Millisecond}
		open := func(t *testing.T) Backend {
			b, err := OpenEtcdBackend(cfg)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { b.Close() })
			return b
		}
		return storage{open: open, peer: func(t *testing.T, _ Backend) Backend { return open(t) }}
	}
}

func TestTheEtcdBackendKeepsTheStoreContract(t *testing.T) {
	_, storages := etcdStorages(t)
	testBackendContract(t, storages)
}

// eventually polls cond until it holds, for changes another store makes;
// the bound is the test's, not a latency budget.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	ctx := policyTestContext(t)
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s", what)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func TestAChangeOnOneEtcdStoreIsInForceOnTheOther(t *testing.T) {
	_, storages := etcdStorages(t)
	st := storages(t)
	one, _ := openContractStore(t, st.open(t), StoreOptions{SkipBadValues: true})
	two, rec := openContractStore(t, st.open(t), StoreOptions{SkipBadValues: true})
	useTestEgress(t, one)
	var applied atomic.Pointer[[]*pooldv1.EgressRuleSet]
	if err := two.UseEgress(&pooldv1.EgressRuleSet{}, func(sets []*pooldv1.EgressRuleSet) error { applied.Store(&sets); return nil }); err != nil {
		t.Fatal(err)
	}
	ctx := policyTestContext(t)

	got, err := one.Update(ctx, &pooldv1.Policy{Name: "policies/api.example.com", MaxRetries: pu32(4)}, nil, true)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "the policy on the other store", func() bool {
		p, err := two.Get("policies/api.example.com")
		return err == nil && p.GetEtag() == got.GetEtag()
	})
	if r := rec.last().Hosts["api.example.com"].MaxRetries; r == nil || *r != 4 {
		t.Errorf("the other store's engine runs %+v, want max_retries 4", rec.last().Hosts)
	}

	// The other store writes on top with the etag the first handed out.
	if _, err := two.Update(ctx, &pooldv1.Policy{Name: "policies/api.example.com", MaxRetries: pu32(5), Etag: got.GetEtag()}, nil, false); err != nil {
		t.Fatalf("updating on another store with the etag the first returned: %v", err)
	}
	_, err = one.Update(ctx, &pooldv1.Policy{Name: "policies/api.example.com", MaxRetries: pu32(6), Etag: got.GetEtag()}, nil, false)
	wantPolicyStatus(t, err, codes.Aborted, ReasonEtagMismatch)

	if _, err := one.UpdateEgress(ctx, &pooldv1.EgressRuleSet{Name: "egressRuleSets/billing", Allow: []string{"10.0.0.0/8"}}, nil, true); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the rule set applied on the other store", func() bool {
		sets := applied.Load()
		return sets != nil && len(*sets) == 2
	})
	if err := one.Delete(ctx, "policies/api.example.com", ""); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the deletion on the other store", func() bool {
		_, err := two.Get("policies/api.example.com")
		_, inEngine := rec.last().Hosts["api.example.com"]
		return err != nil && !inEngine
	})
}

func TestAWatchedValueThatFailsValidationIsSkippedAndTheRestApplies(t *testing.T) {
	_, storages := etcdStorages(t)
	st := storages(t)
	log := &syncWriter{}
	s, rec := openContractStore(t, st.open(t), StoreOptions{SkipBadValues: true, Logger: slog.New(slog.NewTextHandler(log, nil))})
	raw := st.open(t)
	ctx := policyTestContext(t)
	if _, err := raw.Put(ctx, "policies/bad.example.com", []byte(`{"name":"policies/bad.example.com","maxRetries":99}`), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := raw.Put(ctx, "policies/good.example.com", []byte(`{"name":"policies/good.example.com","maxRetries":3}`), 0); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the good policy", func() bool {
		_, err := s.Get("policies/good.example.com")
		return err == nil
	})
	if _, err := s.Get("policies/bad.example.com"); err == nil {
		t.Error("a bad value is served")
	}
	if _, ok := rec.last().Hosts["bad.example.com"]; ok {
		t.Error("a bad value reached the engine")
	}
	if got := log.String(); !strings.Contains(got, "policies/bad.example.com") || !strings.Contains(got, "max_retries") {
		t.Errorf("log = %q, want the bad key and field named", got)
	}
}

// laggingBackend starts its first watch from an old revision, as a store
// whose watch fell behind resumes.
type laggingBackend struct {
	Backend
	from    int64
	watches atomic.Int64
}

func (b *laggingBackend) Watch(ctx context.Context, rev int64) (Watcher, error) {
	if b.watches.Add(1) == 1 {
		rev = b.from
	}
	return b.Backend.Watch(ctx, rev)
}

func TestAStoreWhoseWatchFellBehindACompactionListsAgain(t *testing.T) {
	c, storages := etcdStorages(t)
	st := storages(t)
	raw := st.open(t)
	ctx := policyTestContext(t)
	first, err := raw.Put(ctx, defaultPolicyName, []byte(`{"name":"policies/default","maxRetries":1}`), 0)
	if err != nil {
		t.Fatal(err)
	}
	var rev int64
	for i := range 20 {
		if rev, err = raw.Put(ctx, fmt.Sprintf("policies/h%d.example.com", i), []byte(fmt.Sprintf(`{"name":"policies/h%d.example.com","maxRetries":1}`, i)), 0); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Client(t).Compact(ctx, rev); err != nil {
		t.Fatal(err)
	}

	lagging := &laggingBackend{Backend: st.open(t), from: first}
	s, _ := openContractStore(t, lagging, StoreOptions{SkipBadValues: true})
	if _, err := raw.Put(ctx, "policies/after.example.com", []byte(`{"name":"policies/after.example.com","maxRetries":2}`), 0); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a change made after the store listed again", func() bool {
		_, err := s.Get("policies/after.example.com")
		return err == nil
	})
	if n := len(s.List().GetPolicies()); n != 22 {
		t.Errorf("%d policies, want 22", n)
	}
	if got := s.sync.restarts.Load(); got != 1 || lagging.watches.Load() != 2 {
		t.Errorf("%d watch restarts over %d watches, want 1 restart and a second watch", got, lagging.watches.Load())
	}
}

func TestAnUnreachableEtcdFailsWritesAtOnceAndReadsSayHowStale(t *testing.T) {
	c, storages := etcdStorages(t)
	st := storages(t)
	s, _ := openContractStore(t, st.open(t), StoreOptions{SkipBadValues: true, RetryLoad: true})
	ctx := policyTestContext(t)
	if _, err := s.Update(ctx, &pooldv1.Policy{Name: defaultPolicyName, MaxRetries: pu32(2)}, nil, false); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		c.Kill(i)
	}
	start := time.Now()
	_, err := s.Update(ctx, &pooldv1.Policy{Name: defaultPolicyName, MaxRetries: pu32(3)}, nil, false)
	wantPolicyStatus(t, err, codes.Unavailable, ReasonPolicyStoreUnavailable)
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("a write with etcd down took %v", took)
	}
	if got, _ := s.Get(defaultPolicyName); got.GetMaxRetries() != 2 {
		t.Errorf("max_retries = %d with etcd down, want the last known 2", got.GetMaxRetries())
	}
	eventually(t, "staleness to grow", func() bool {
		d, ok := s.Staleness()
		return ok && d > time.Second
	})
	c.Restart(0)
	c.Restart(1)
	c.WaitHealthy(0)
	eventually(t, "the store to be current again", func() bool {
		d, ok := s.Staleness()
		return ok && d < time.Second
	})
	if _, err := s.Update(context.Background(), &pooldv1.Policy{Name: defaultPolicyName, MaxRetries: pu32(3)}, nil, false); err != nil {
		t.Errorf("a write once etcd is back: %v", err)
	}
}

// The etcd client resumes a watch whose connection broke by itself, from
// one past the last revision it heard of, and etcd answers no progress
// request for a watch that starts beyond its current revision: unless the
// store notices, it stays stale until the next change however long etcd
// has been back.
func TestAWatchTheClientResumedByItselfKeepsTheStoreCurrent(t *testing.T) {
	c, _ := etcdStorages(t)
	proxy := etcdtest.NewProxy(t, c.Endpoints()[0])
	b, err := OpenEtcdBackend(EtcdConfig{Endpoints: []string{proxy.Addr()}, Prefix: "/poold-test-cut", ProgressInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	s, _ := openContractStore(t, b, StoreOptions{SkipBadValues: true})
	if _, err := s.Update(policyTestContext(t), &pooldv1.Policy{Name: defaultPolicyName, MaxRetries: pu32(2)}, nil, false); err != nil {
		t.Fatal(err)
	}
	// The client resumes from past what it heard last: a progress notice,
	// not the list.
	listed := s.sync.syncedAt.Load()
	eventually(t, "a progress notice", func() bool { return s.sync.syncedAt.Load() > listed })
	proxy.Cut()
	eventually(t, "staleness to grow", func() bool {
		d, ok := s.Staleness()
		return ok && d > time.Second
	})
	eventually(t, "the store to be current again", func() bool {
		d, ok := s.Staleness()
		return ok && d < 500*time.Millisecond
	})
	if s.sync.restarts.Load() == 0 {
		t.Error("the store never restarted its watch")
	}
}
