package server

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"sync/atomic"

	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/poold/poold/dialer"
	pooldv1 "github.com/poold/poold/gen/poold/v1"
	"github.com/poold/poold/pool"
)

var _ pooldv1.EgressServiceServer = (*EgressServer)(nil)

// EgressServer serves EgressService from the policy store.
type EgressServer struct {
	pooldv1.UnimplementedEgressServiceServer
	store *PolicyStore
}

// NewEgressServer returns an EgressService over store, whose UseEgress the
// server has called.
func NewEgressServer(store *PolicyStore) *EgressServer { return &EgressServer{store: store} }

// GetEgressRuleSet returns one rule set.
func (s *EgressServer) GetEgressRuleSet(ctx context.Context, req *pooldv1.GetEgressRuleSetRequest) (*pooldv1.EgressRuleSet, error) {
	sayStaleness(ctx, s.store)
	return s.store.GetEgress(req.GetName())
}

// ListEgressRuleSets returns every rule set, the default first.
func (s *EgressServer) ListEgressRuleSets(ctx context.Context, _ *pooldv1.ListEgressRuleSetsRequest) (*pooldv1.ListEgressRuleSetsResponse, error) {
	sayStaleness(ctx, s.store)
	return s.store.ListEgress(), nil
}

// UpdateEgressRuleSet changes or creates a rule set.
func (s *EgressServer) UpdateEgressRuleSet(ctx context.Context, req *pooldv1.UpdateEgressRuleSetRequest) (*pooldv1.EgressRuleSet, error) {
	return s.store.UpdateEgress(ctx, req.GetEgressRuleSet(), req.GetUpdateMask(), req.GetAllowMissing())
}

// DeleteEgressRuleSet removes a rule set.
func (s *EgressServer) DeleteEgressRuleSet(ctx context.Context, req *pooldv1.DeleteEgressRuleSetRequest) (*emptypb.Empty, error) {
	if err := s.store.DeleteEgress(ctx, req.GetName(), req.GetEtag()); err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}

// egressRegistry maps a call to the egress scope its requests run under:
// the rule set its identity is bound to, or the default one. Scopes are
// kept across changes (Set swaps their rules), so a change keeps every
// pool whose connections the new rules still allow.
type egressRegistry struct {
	self []netip.AddrPort // poold's listeners, denied under every rule set

	mu sync.Mutex // serializes apply
	// scopes holds every scope ever made, by rule set name, deleted ones
	// too: a rule set made again under the same name must get the same
	// scope, since the engine keys its pools by the scope's name.
	scopes  map[string]*pool.EgressScope
	deleted map[string]bool
	state   atomic.Pointer[egressState]
}

// egressState is one version of the bindings; never changed once stored.
type egressState struct {
	def      *pool.EgressScope
	byCaller map[string]*pool.EgressScope // "token:NAME" or "cert:ID"
}

func newEgressRegistry(self []netip.AddrPort) *egressRegistry {
	return &egressRegistry{self: self, scopes: map[string]*pool.EgressScope{}, deleted: map[string]bool{}}
}

// denyAll is the rule set of a scope whose rule set was deleted: its
// callers have moved to the default, and its idle connections close.
type denyAll struct{}

func (denyAll) CheckEgress(string, netip.AddrPort) error {
	return errors.Join(dialer.ErrEgressDenied, errors.New("rule set deleted"))
}

// apply compiles every rule set and swaps them in at once; on an error
// nothing changes.
func (r *egressRegistry) apply(sets []*pooldv1.EgressRuleSet) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	compiled := make(map[string]*dialer.EgressRules, len(sets))
	for _, rs := range sets {
		cfg := EgressConfig(rs)
		cfg.SelfAddrs = r.self
		rules, err := dialer.NewEgressRules(cfg)
		if err != nil {
			return err
		}
		compiled[rs.GetName()] = rules
	}
	next := &egressState{byCaller: map[string]*pool.EgressScope{}}
	for _, rs := range sets {
		name := rs.GetName()
		sc := r.scopes[name]
		if sc == nil {
			id := name[len(egressNamePrefix):]
			if name == defaultEgressName {
				id = "" // the default's pools keep their plain keys
			}
			sc = pool.NewEgressScope(id, compiled[name])
			r.scopes[name] = sc
		} else {
			sc.Set(compiled[name])
		}
		delete(r.deleted, name)
		if name == defaultEgressName {
			next.def = sc
		}
		for _, c := range rs.GetCallers() {
			next.byCaller[c] = sc
		}
	}
	for name, sc := range r.scopes {
		if _, ok := compiled[name]; !ok && !r.deleted[name] {
			sc.Set(denyAll{})
			r.deleted[name] = true
		}
	}
	r.state.Store(next)
	return nil
}

// scopeFor returns the scope of the call ctx belongs to; nil when the
// registry has no rule sets (the dialer's own rules apply).
func (r *egressRegistry) scopeFor(ctx context.Context) *pool.EgressScope {
	if r == nil {
		return nil
	}
	st := r.state.Load()
	if st == nil {
		return nil
	}
	if len(st.byCaller) == 0 {
		return st.def
	}
	// A named token binds first, then the client certificate.
	if name := tokenName(ctx); name != "" {
		if sc := st.byCaller["token:"+name]; sc != nil {
			return sc
		}
	}
	for _, id := range certIdentities(ctx) {
		if sc := st.byCaller[id]; sc != nil {
			return sc
		}
	}
	return st.def
}
