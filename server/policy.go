package server

import (
	"context"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/emptypb"

	pooldv1 "github.com/poold/poold/gen/poold/v1"
)

var _ pooldv1.PolicyServiceServer = (*PolicyServer)(nil)

// PolicyServer serves PolicyService from a PolicyStore. It only unpacks
// requests: validation, etags, persistence and applying changes to the
// engine are the store's, so that the daemon and its tests share one
// implementation.
type PolicyServer struct {
	pooldv1.UnimplementedPolicyServiceServer
	store *PolicyStore
}

// NewPolicyServer returns a PolicyService backed by store.
func NewPolicyServer(store *PolicyStore) *PolicyServer {
	return &PolicyServer{store: store}
}

// GetPolicy returns one policy as stored: only the fields it sets.
func (s *PolicyServer) GetPolicy(ctx context.Context, req *pooldv1.GetPolicyRequest) (*pooldv1.Policy, error) {
	sayStaleness(ctx, s.store)
	return s.store.Get(req.GetName())
}

// ListPolicies returns the default policy, then host policies by name.
func (s *PolicyServer) ListPolicies(ctx context.Context, req *pooldv1.ListPoliciesRequest) (*pooldv1.ListPoliciesResponse, error) {
	sayStaleness(ctx, s.store)
	return s.store.List(), nil
}

// UpdatePolicy changes the fields named in the update mask.
func (s *PolicyServer) UpdatePolicy(ctx context.Context, req *pooldv1.UpdatePolicyRequest) (*pooldv1.Policy, error) {
	return s.store.Update(ctx, req.GetPolicy(), req.GetUpdateMask(), req.GetAllowMissing())
}

// DeletePolicy removes a host policy.
func (s *PolicyServer) DeletePolicy(ctx context.Context, req *pooldv1.DeletePolicyRequest) (*emptypb.Empty, error) {
	if err := s.store.Delete(ctx, req.GetName(), req.GetEtag()); err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}

// GetEffectivePolicy returns the fully resolved policy for a host.
func (s *PolicyServer) GetEffectivePolicy(ctx context.Context, req *pooldv1.GetEffectivePolicyRequest) (*pooldv1.Policy, error) {
	sayStaleness(ctx, s.store)
	return s.store.Effective(req.GetHost())
}

// StalenessHeader is the response header of every policy and rule set read
// from a shared store: how long ago the store last heard from its backend
// that what it serves is current ("1.2s"), or "never" before its first
// load. Reads are answered from the last snapshot even when the backend is
// down; this is how a caller tells.
const StalenessHeader = "poold-policy-staleness"

func sayStaleness(ctx context.Context, store *PolicyStore) {
	if !store.Shared() {
		return
	}
	v := "never"
	if d, ok := store.Staleness(); ok {
		v = d.Round(time.Millisecond).String()
	}
	// Only a call whose headers went out already fails here; the answer
	// itself still stands.
	_ = grpc.SetHeader(ctx, metadata.Pairs(StalenessHeader, v))
}
