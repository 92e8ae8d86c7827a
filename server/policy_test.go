package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	pooldv1 "github.com/poold/poold/gen/poold/v1"
	"github.com/poold/poold/pool"
)

// policySetRecorder stands in for the engine: it keeps every set it is handed
// and refuses them while fail is set.
type policySetRecorder struct {
	mu   sync.Mutex
	sets []pool.PolicySet
	fail error
}

func (r *policySetRecorder) apply(s pool.PolicySet) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail != nil {
		return r.fail
	}
	r.sets = append(r.sets, s.Clone())
	return nil
}

func (r *policySetRecorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.sets)
}

func (r *policySetRecorder) last() pool.PolicySet {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.sets) == 0 {
		return pool.PolicySet{}
	}
	return r.sets[len(r.sets)-1]
}

func (r *policySetRecorder) setFail(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.fail = err
}

// policyClock hands out times a second apart, so every change has its own
// update_time.
type policyClock struct {
	mu  sync.Mutex
	now time.Time
}

func newPolicyClock() *policyClock {
	return &policyClock{now: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (c *policyClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(time.Second)
	return c.now
}

// policyHarness is a PolicyService served over loopback from a store whose
// engine is a policySetRecorder.
type policyHarness struct {
	t      *testing.T
	path   string
	rec    *policySetRecorder
	store  *PolicyStore
	client pooldv1.PolicyServiceClient
}

// newPolicyHarness serves a store kept in path ("" = memory only).
func newPolicyHarness(t *testing.T, path string) *policyHarness {
	t.Helper()
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
	h := &policyHarness{t: t, path: path, rec: &policySetRecorder{}}
	store, err := OpenPolicyStore(path, h.rec.apply, newPolicyClock().Now)
	if err != nil {
		t.Fatalf("OpenPolicyStore: %v", err)
	}
	h.store = store
	h.client = servePolicies(t, store)
	return h
}

// servePolicies starts a gRPC server that registers only PolicyService.
func servePolicies(t *testing.T, store *PolicyStore) pooldv1.PolicyServiceClient {
	t.Helper()
	s := grpc.NewServer()
	pooldv1.RegisterPolicyServiceServer(s, NewPolicyServer(store))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		s.Serve(lis)
	}()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		s.Stop()
		<-served
	})
	return pooldv1.NewPolicyServiceClient(conn)
}

func policyTestContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// update calls UpdatePolicy and fails the test on error.
func (h *policyHarness) update(p *pooldv1.Policy, allowMissing bool, paths ...string) *pooldv1.Policy {
	h.t.Helper()
	req := &pooldv1.UpdatePolicyRequest{Policy: p, AllowMissing: allowMissing}
	if paths != nil {
		req.UpdateMask = &fieldmaskpb.FieldMask{Paths: paths}
	}
	got, err := h.client.UpdatePolicy(policyTestContext(h.t), req)
	if err != nil {
		h.t.Fatalf("UpdatePolicy(%v): %v", p, err)
	}
	return got
}

func (h *policyHarness) get(name string) *pooldv1.Policy {
	h.t.Helper()
	got, err := h.client.GetPolicy(policyTestContext(h.t), &pooldv1.GetPolicyRequest{Name: name})
	if err != nil {
		h.t.Fatalf("GetPolicy(%s): %v", name, err)
	}
	return got
}

func (h *policyHarness) list() *pooldv1.ListPoliciesResponse {
	h.t.Helper()
	got, err := h.client.ListPolicies(policyTestContext(h.t), &pooldv1.ListPoliciesRequest{})
	if err != nil {
		h.t.Fatalf("ListPolicies: %v", err)
	}
	return got
}

func pdur(d time.Duration) *durationpb.Duration { return durationpb.New(d) }

func pu32(v uint32) *uint32 { return &v }

func pbool(v bool) *bool { return &v }

func pstr(v string) *string { return &v }

func pproto(v pooldv1.Protocols) *pooldv1.Protocols { return &v }

// ignorePolicyVersion compares policies by their settings.
var ignorePolicyVersion = protocmp.IgnoreFields(&pooldv1.Policy{}, "etag", "update_time")

// wantPolicyStatus checks err's code and, when reason is set, its ErrorInfo
// reason.
func wantPolicyStatus(t *testing.T, err error, code codes.Code, reason string) *status.Status {
	t.Helper()
	st, ok := status.FromError(err)
	if !ok || st.Code() != code {
		t.Fatalf("error = %v, want code %v", err, code)
	}
	if reason == "" {
		return st
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			if info.GetReason() != reason || info.GetDomain() != ErrorDomain {
				t.Fatalf("ErrorInfo = %v, want reason %s in %s", info, reason, ErrorDomain)
			}
			return st
		}
	}
	t.Fatalf("error %v has no ErrorInfo, want reason %s", err, reason)
	return st
}

// policyViolation returns the description of the BadRequest violation of field.
func policyViolation(st *status.Status, field string) (string, bool) {
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				if v.GetField() == field {
					return v.GetDescription(), true
				}
			}
		}
	}
	return "", false
}

// wantPolicyViolation checks that err is INVALID_ARGUMENT naming field, with a
// description containing reason.
func wantPolicyViolation(t *testing.T, err error, field, reason string) {
	t.Helper()
	st := wantPolicyStatus(t, err, codes.InvalidArgument, ReasonInvalidArgument)
	desc, ok := policyViolation(st, field)
	if !ok {
		t.Fatalf("error %v has no violation of %q (details %v)", err, field, st.Details())
	}
	if !strings.Contains(desc, reason) {
		t.Fatalf("violation of %s = %q, want it to contain %q", field, desc, reason)
	}
}

func TestUpdatePolicyAppliesTheMaskAsAIP134Says(t *testing.T) {
	const host = "policies/api.example.com"
	base := []*pooldv1.Policy{
		{Name: defaultPolicyName, DialTimeout: pdur(3 * time.Second), IdleConnTimeout: pdur(20 * time.Second)},
		{Name: host, MaxRetries: pu32(2), TcpKeepalive: &pooldv1.TcpKeepalive{Enabled: pbool(false), Count: pu32(4)}},
	}
	tests := []struct {
		name         string
		policy       *pooldv1.Policy
		paths        []string // nil = no mask
		allowMissing bool
		// want is the stored policy afterwards (etag and update_time
		// aside); nil means the call must fail with wantField.
		want      *pooldv1.Policy
		wantCode  codes.Code
		wantField string
		wantText  string
	}{
		{
			name:   "a named path changes only that field",
			policy: &pooldv1.Policy{Name: defaultPolicyName, DialTimeout: pdur(7 * time.Second), IdleConnTimeout: pdur(99 * time.Second)},
			paths:  []string{"dial_timeout"},
			want:   &pooldv1.Policy{Name: defaultPolicyName, DialTimeout: pdur(7 * time.Second), IdleConnTimeout: pdur(20 * time.Second)},
		},
		{
			name:   "an empty mask changes every field the request sets, zero values included",
			policy: &pooldv1.Policy{Name: defaultPolicyName, IdleConnTimeout: pdur(40 * time.Second), MaxRetries: pu32(0), ProxyUrl: pstr("direct")},
			want:   &pooldv1.Policy{Name: defaultPolicyName, DialTimeout: pdur(3 * time.Second), IdleConnTimeout: pdur(40 * time.Second), MaxRetries: pu32(0), ProxyUrl: pstr("direct")},
		},
		{
			name:   "an empty mask ignores the output-only fields a caller sends back",
			policy: &pooldv1.Policy{Name: defaultPolicyName, MaxRetries: pu32(3), UpdateTime: base[0].GetUpdateTime()},
			want:   &pooldv1.Policy{Name: defaultPolicyName, DialTimeout: pdur(3 * time.Second), IdleConnTimeout: pdur(20 * time.Second), MaxRetries: pu32(3)},
		},
		{
			name:   "a named path the request leaves unset clears the field",
			policy: &pooldv1.Policy{Name: defaultPolicyName},
			paths:  []string{"idle_conn_timeout"},
			want:   &pooldv1.Policy{Name: defaultPolicyName, DialTimeout: pdur(3 * time.Second)},
		},
		{
			name:   "a star mask replaces the whole policy",
			policy: &pooldv1.Policy{Name: host, MaxConnsPerHost: pu32(8)},
			paths:  []string{"*"},
			want:   &pooldv1.Policy{Name: host, MaxConnsPerHost: pu32(8)},
		},
		{
			name:   "a nested path changes one keep-alive field",
			policy: &pooldv1.Policy{Name: host, TcpKeepalive: &pooldv1.TcpKeepalive{Idle: pdur(5 * time.Second), Count: pu32(9)}},
			paths:  []string{"tcp_keepalive.idle"},
			want:   &pooldv1.Policy{Name: host, MaxRetries: pu32(2), TcpKeepalive: &pooldv1.TcpKeepalive{Enabled: pbool(false), Idle: pdur(5 * time.Second), Count: pu32(4)}},
		},
		{
			name:   "an empty mask with one keep-alive field keeps the others",
			policy: &pooldv1.Policy{Name: host, TcpKeepalive: &pooldv1.TcpKeepalive{Idle: pdur(5 * time.Second)}},
			want:   &pooldv1.Policy{Name: host, MaxRetries: pu32(2), TcpKeepalive: &pooldv1.TcpKeepalive{Enabled: pbool(false), Idle: pdur(5 * time.Second), Count: pu32(4)}},
		},
		{
			name:   "naming tcp_keepalive replaces all of its fields",
			policy: &pooldv1.Policy{Name: host, TcpKeepalive: &pooldv1.TcpKeepalive{Idle: pdur(5 * time.Second)}},
			paths:  []string{"tcp_keepalive"},
			want:   &pooldv1.Policy{Name: host, MaxRetries: pu32(2), TcpKeepalive: &pooldv1.TcpKeepalive{Idle: pdur(5 * time.Second)}},
		},
		{
			name:   "clearing every keep-alive field leaves no tcp_keepalive",
			policy: &pooldv1.Policy{Name: host},
			paths:  []string{"tcp_keepalive.enabled", "tcp_keepalive.count"},
			want:   &pooldv1.Policy{Name: host, MaxRetries: pu32(2)},
		},
		{
			name:   "fields outside the mask are neither applied nor checked",
			policy: &pooldv1.Policy{Name: defaultPolicyName, DialTimeout: pdur(-time.Second), MaxRetries: pu32(5)},
			paths:  []string{"max_retries"},
			want:   &pooldv1.Policy{Name: defaultPolicyName, DialTimeout: pdur(3 * time.Second), IdleConnTimeout: pdur(20 * time.Second), MaxRetries: pu32(5)},
		},
		{
			name:   "max_idle_conns is accepted on the default policy",
			policy: &pooldv1.Policy{Name: defaultPolicyName, MaxIdleConns: pu32(10)},
			paths:  []string{"max_idle_conns"},
			want:   &pooldv1.Policy{Name: defaultPolicyName, DialTimeout: pdur(3 * time.Second), IdleConnTimeout: pdur(20 * time.Second), MaxIdleConns: pu32(10)},
		},
		{
			name: "the HTTP/2 fields are set by name like every other",
			policy: &pooldv1.Policy{Name: host, Protocols: pproto(pooldv1.Protocols_PROTOCOLS_H2), MaxConcurrentStreams: pu32(50),
				StrictMaxConcurrentStreams: pbool(true), H2ReadIdleTimeout: pdur(0), H2PingTimeout: pdur(5 * time.Second)},
			paths: []string{"protocols", "max_concurrent_streams", "strict_max_concurrent_streams", "h2_read_idle_timeout", "h2_ping_timeout"},
			want: &pooldv1.Policy{Name: host, MaxRetries: pu32(2), TcpKeepalive: &pooldv1.TcpKeepalive{Enabled: pbool(false), Count: pu32(4)},
				Protocols: pproto(pooldv1.Protocols_PROTOCOLS_H2), MaxConcurrentStreams: pu32(50),
				StrictMaxConcurrentStreams: pbool(true), H2ReadIdleTimeout: pdur(0), H2PingTimeout: pdur(5 * time.Second)},
		},
		{
			name:         "allow_missing creates a host policy",
			policy:       &pooldv1.Policy{Name: "policies/*.example.com", RequestTimeout: pdur(time.Minute)},
			allowMissing: true,
			want:         &pooldv1.Policy{Name: "policies/*.example.com", RequestTimeout: pdur(time.Minute)},
		},
		{
			name:     "a missing host policy is not found without allow_missing",
			policy:   &pooldv1.Policy{Name: "policies/other.example.com", RequestTimeout: pdur(time.Minute)},
			wantCode: codes.NotFound,
		},
		{name: "an unknown path is refused", policy: &pooldv1.Policy{Name: host}, paths: []string{"dial_timeoutt"}, wantField: "update_mask", wantText: `unknown field path "dial_timeoutt"`},
		{name: "an unknown nested path is refused", policy: &pooldv1.Policy{Name: host}, paths: []string{"tcp_keepalive.idel"}, wantField: "update_mask", wantText: `"tcp_keepalive.idel"`},
		{name: "the name is not updatable", policy: &pooldv1.Policy{Name: host}, paths: []string{"name"}, wantField: "update_mask", wantText: `"name" identifies the policy`},
		{name: "the etag is output only", policy: &pooldv1.Policy{Name: host}, paths: []string{"etag"}, wantField: "update_mask", wantText: `"etag" is output only`},
		{name: "update_time is output only", policy: &pooldv1.Policy{Name: host}, paths: []string{"update_time.seconds"}, wantField: "update_mask", wantText: `"update_time.seconds" is output only`},
		{name: "a duration is updated as a whole", policy: &pooldv1.Policy{Name: host}, paths: []string{"dial_timeout.seconds"}, wantField: "update_mask", wantText: "dial_timeout is set as a whole"},
		{name: "a star mask must stand alone", policy: &pooldv1.Policy{Name: host}, paths: []string{"*", "dial_timeout"}, wantField: "update_mask", wantText: `"*" must be the only path`},
		{name: "a negative dial timeout names the field", policy: &pooldv1.Policy{Name: host, DialTimeout: pdur(-time.Second)}, wantField: "policy.dial_timeout", wantText: "must be positive"},
		{name: "a malformed duration names the field", policy: &pooldv1.Policy{Name: host, TlsHandshakeTimeout: &durationpb.Duration{Seconds: 1, Nanos: -5}}, wantField: "policy.tls_handshake_timeout", wantText: "invalid duration"},
		{name: "a duration beyond time.Duration names the field", policy: &pooldv1.Policy{Name: host, IdleConnTimeout: &durationpb.Duration{Seconds: 100_000_000_000}}, wantField: "policy.idle_conn_timeout", wantText: "out of range"},
		{name: "a nested keep-alive value names the nested field", policy: &pooldv1.Policy{Name: host, TcpKeepalive: &pooldv1.TcpKeepalive{Count: pu32(0)}}, wantField: "policy.tcp_keepalive.count", wantText: "must be from 1"},
		{name: "a bad proxy URL names the field", policy: &pooldv1.Policy{Name: host, ProxyUrl: pstr("ftp://proxy:21")}, wantField: "policy.proxy_url", wantText: "scheme must be http or https"},
		{name: "max_idle_conns on a host policy is refused", policy: &pooldv1.Policy{Name: host, MaxIdleConns: pu32(5)}, wantField: "policy.max_idle_conns", wantText: "only allowed in policies/default"},
		{name: "protocols set to PROTOCOLS_UNSPECIFIED names the field", policy: &pooldv1.Policy{Name: host, Protocols: pproto(pooldv1.Protocols_PROTOCOLS_UNSPECIFIED)}, wantField: "policy.protocols", wantText: "PROTOCOLS_UNSPECIFIED is not a choice"},
		{name: "protocols set to a number the API does not define names the field", policy: &pooldv1.Policy{Name: host, Protocols: pproto(99)}, wantField: "policy.protocols", wantText: "unknown value 99"},
		{name: "a zero h2_ping_timeout names the field", policy: &pooldv1.Policy{Name: host, H2PingTimeout: pdur(0)}, wantField: "policy.h2_ping_timeout", wantText: "must be positive"},
		{name: "a negative h2_read_idle_timeout names the field", policy: &pooldv1.Policy{Name: host, H2ReadIdleTimeout: pdur(-time.Second)}, wantField: "policy.h2_read_idle_timeout", wantText: "must not be negative"},
		{name: "a request without a policy is refused", policy: nil, wantField: "policy", wantText: "is required"},
		{name: "an empty name is refused", policy: &pooldv1.Policy{}, wantField: "policy.name", wantText: "is required"},
		{name: "a name outside the collection is refused", policy: &pooldv1.Policy{Name: "default"}, wantField: "policy.name", wantText: `must be "policies/default" or "policies/{host}"`},
		{name: "an uppercase host is refused", policy: &pooldv1.Policy{Name: "policies/API.example.com"}, allowMissing: true, wantField: "policy.name", wantText: "must be lowercase"},
		{name: "a URL is not a host pattern", policy: &pooldv1.Policy{Name: "policies/https://api.example.com"}, allowMissing: true, wantField: "policy.name", wantText: "drop the scheme"},
		{name: "a wildcard with a port is refused", policy: &pooldv1.Policy{Name: "policies/*.example.com:443"}, allowMissing: true, wantField: "policy.name", wantText: "cannot have a port"},
		{name: "port zero is refused", policy: &pooldv1.Policy{Name: "policies/api.example.com:0"}, allowMissing: true, wantField: "policy.name", wantText: "port must be a number"},
		{name: "an empty host is refused", policy: &pooldv1.Policy{Name: "policies/"}, allowMissing: true, wantField: "policy.name", wantText: "must not be empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newPolicyHarness(t, "")
			for _, p := range base {
				h.update(p, true)
			}
			before := h.list()
			applied := h.rec.count()

			req := &pooldv1.UpdatePolicyRequest{Policy: tt.policy, AllowMissing: tt.allowMissing}
			if tt.paths != nil {
				req.UpdateMask = &fieldmaskpb.FieldMask{Paths: tt.paths}
			}
			got, err := h.client.UpdatePolicy(policyTestContext(t), req)

			if tt.want != nil {
				if err != nil {
					t.Fatalf("UpdatePolicy: %v", err)
				}
				want := tt.want
				if want.GetName() == defaultPolicyName {
					want = shown("", want)
				}
				if diff := cmp.Diff(want, got, protocmp.Transform(), ignorePolicyVersion); diff != "" {
					t.Errorf("returned policy (-want +got):\n%s", diff)
				}
				if diff := cmp.Diff(got, h.get(tt.want.GetName()), protocmp.Transform()); diff != "" {
					t.Errorf("GetPolicy differs from what UpdatePolicy returned (-want +got):\n%s", diff)
				}
				if got.GetEtag() == "" || got.GetUpdateTime() == nil {
					t.Errorf("stored policy lacks etag or update_time: %v", got)
				}
				if h.rec.count() != applied+1 {
					t.Errorf("engine got %d sets, want 1", h.rec.count()-applied)
				}
				if diff := cmp.Diff(h.store.PolicySet(), h.rec.last()); diff != "" {
					t.Errorf("engine set differs from the store's (-store +engine):\n%s", diff)
				}
				return
			}
			switch {
			case tt.wantField != "":
				wantPolicyViolation(t, err, tt.wantField, tt.wantText)
			default:
				wantPolicyStatus(t, err, tt.wantCode, ReasonPolicyNotFound)
			}
			if diff := cmp.Diff(before, h.list(), protocmp.Transform()); diff != "" {
				t.Errorf("a refused update changed the policies (-before +after):\n%s", diff)
			}
			if h.rec.count() != applied {
				t.Errorf("a refused update reached the engine")
			}
		})
	}
}

func TestAPolicyWithAStaleEtagIsAbortedAndTheCurrentOneWins(t *testing.T) {
	h := newPolicyHarness(t, "")
	first := h.get(defaultPolicyName)
	if first.GetEtag() == "" {
		t.Fatal("default policy has no etag")
	}

	second := h.update(&pooldv1.Policy{Name: defaultPolicyName, MaxRetries: pu32(3), Etag: first.GetEtag()}, false)
	if second.GetEtag() == first.GetEtag() {
		t.Fatalf("etag %q did not change on update", second.GetEtag())
	}

	_, err := h.client.UpdatePolicy(policyTestContext(t), &pooldv1.UpdatePolicyRequest{
		Policy: &pooldv1.Policy{Name: defaultPolicyName, MaxRetries: pu32(4), Etag: first.GetEtag()},
	})
	wantPolicyStatus(t, err, codes.Aborted, ReasonEtagMismatch)
	if got := h.get(defaultPolicyName).GetMaxRetries(); got != 3 {
		t.Fatalf("max_retries = %d after an aborted update, want 3", got)
	}

	third := h.update(&pooldv1.Policy{Name: defaultPolicyName, MaxRetries: pu32(4), Etag: second.GetEtag()}, false)
	if third.GetEtag() == second.GetEtag() || third.GetMaxRetries() != 4 {
		t.Fatalf("update with the current etag = %v", third)
	}
}

func TestAPolicyUpdateThatChangesNothingStillGetsANewVersion(t *testing.T) {
	h := newPolicyHarness(t, "")
	a := h.update(&pooldv1.Policy{Name: defaultPolicyName, MaxRetries: pu32(3)}, false)
	b := h.update(&pooldv1.Policy{Name: defaultPolicyName, MaxRetries: pu32(3)}, false)
	if a.GetEtag() == b.GetEtag() {
		t.Errorf("etag stayed %q", a.GetEtag())
	}
	if !b.GetUpdateTime().AsTime().After(a.GetUpdateTime().AsTime()) {
		t.Errorf("update_time went from %v to %v", a.GetUpdateTime().AsTime(), b.GetUpdateTime().AsTime())
	}
}

func TestAnEtagForAPolicyThatDoesNotExistIsAborted(t *testing.T) {
	h := newPolicyHarness(t, "")
	_, err := h.client.UpdatePolicy(policyTestContext(t), &pooldv1.UpdatePolicyRequest{
		Policy:       &pooldv1.Policy{Name: "policies/api.example.com", MaxRetries: pu32(1), Etag: "1-abc"},
		AllowMissing: true,
	})
	wantPolicyStatus(t, err, codes.Aborted, ReasonEtagMismatch)
}

func TestDeletePolicyRules(t *testing.T) {
	const name = "policies/api.example.com"
	tests := []struct {
		name     string
		req      func(current *pooldv1.Policy) *pooldv1.DeletePolicyRequest
		wantCode codes.Code
		reason   string
		field    string
	}{
		{
			name: "without an etag it deletes",
			req:  func(*pooldv1.Policy) *pooldv1.DeletePolicyRequest { return &pooldv1.DeletePolicyRequest{Name: name} },
		},
		{
			name: "with the current etag it deletes",
			req: func(cur *pooldv1.Policy) *pooldv1.DeletePolicyRequest {
				return &pooldv1.DeletePolicyRequest{Name: name, Etag: cur.GetEtag()}
			},
		},
		{
			name: "with a stale etag it is aborted",
			req: func(cur *pooldv1.Policy) *pooldv1.DeletePolicyRequest {
				return &pooldv1.DeletePolicyRequest{Name: name, Etag: cur.GetEtag() + "x"}
			},
			wantCode: codes.Aborted, reason: ReasonEtagMismatch,
		},
		{
			name: "the default policy cannot be deleted",
			req: func(*pooldv1.Policy) *pooldv1.DeletePolicyRequest {
				return &pooldv1.DeletePolicyRequest{Name: defaultPolicyName}
			},
			wantCode: codes.FailedPrecondition, reason: ReasonDefaultPolicyRequired,
		},
		{
			name: "a missing policy is not found",
			req: func(*pooldv1.Policy) *pooldv1.DeletePolicyRequest {
				return &pooldv1.DeletePolicyRequest{Name: "policies/other.example.com"}
			},
			wantCode: codes.NotFound, reason: ReasonPolicyNotFound,
		},
		{
			name: "a bad name is invalid",
			req: func(*pooldv1.Policy) *pooldv1.DeletePolicyRequest {
				return &pooldv1.DeletePolicyRequest{Name: "policies/a..b"}
			},
			wantCode: codes.InvalidArgument, reason: ReasonInvalidArgument, field: "name",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newPolicyHarness(t, "")
			cur := h.update(&pooldv1.Policy{Name: name, MaxRetries: pu32(2)}, true)
			before := h.list()

			_, err := h.client.DeletePolicy(policyTestContext(t), tt.req(cur))
			if tt.wantCode == codes.OK {
				if err != nil {
					t.Fatalf("DeletePolicy: %v", err)
				}
				_, err := h.client.GetPolicy(policyTestContext(t), &pooldv1.GetPolicyRequest{Name: name})
				wantPolicyStatus(t, err, codes.NotFound, ReasonPolicyNotFound)
				if _, ok := h.rec.last().Hosts["api.example.com"]; ok {
					t.Error("engine still has the deleted policy")
				}
				return
			}
			st := wantPolicyStatus(t, err, tt.wantCode, tt.reason)
			if tt.field != "" {
				if _, ok := policyViolation(st, tt.field); !ok {
					t.Errorf("error %v does not name field %q", err, tt.field)
				}
			}
			if diff := cmp.Diff(before, h.list(), protocmp.Transform()); diff != "" {
				t.Errorf("a refused delete changed the policies (-before +after):\n%s", diff)
			}
		})
	}
}

func TestGetPolicyRefusesBadNamesAndReportsMissingOnes(t *testing.T) {
	h := newPolicyHarness(t, "")
	_, err := h.client.GetPolicy(policyTestContext(t), &pooldv1.GetPolicyRequest{Name: "policies/api.example.com"})
	wantPolicyStatus(t, err, codes.NotFound, ReasonPolicyNotFound)
	_, err = h.client.GetPolicy(policyTestContext(t), &pooldv1.GetPolicyRequest{Name: "hosts/api.example.com"})
	wantPolicyViolation(t, err, "name", `must be "policies/default" or "policies/{host}"`)

	got := h.get(defaultPolicyName)
	if diff := cmp.Diff(builtInDefault(), got, protocmp.Transform(), ignorePolicyVersion); diff != "" {
		t.Errorf("untouched default policy (-want +got):\n%s", diff)
	}
}

// builtInDefault is policies/default as GetPolicy shows it before anything
// is set: every field at its built-in value.
func builtInDefault() *pooldv1.Policy {
	return fromPoolPolicy(defaultPolicyName, pool.DefaultPolicy())
}

func TestListPoliciesPutsTheDefaultFirstThenHostsByName(t *testing.T) {
	h := newPolicyHarness(t, "")
	for _, host := range []string{"b.example.com", "*.example.com", "a.example.com:8443", "a.example.com", "10.0.0.1", "[::1]:8443"} {
		h.update(&pooldv1.Policy{Name: policyName(host), MaxRetries: pu32(1)}, true)
	}
	var got []string
	for _, p := range h.list().GetPolicies() {
		got = append(got, p.GetName())
	}
	want := []string{
		"policies/default",
		"policies/*.example.com",
		"policies/10.0.0.1",
		"policies/[::1]:8443",
		"policies/a.example.com",
		"policies/a.example.com:8443",
		"policies/b.example.com",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("ListPolicies order (-want +got):\n%s", diff)
	}
}

func TestGetEffectivePolicyResolvesTheMostSpecificPolicy(t *testing.T) {
	h := newPolicyHarness(t, "")
	h.update(&pooldv1.Policy{Name: defaultPolicyName, IdleConnTimeout: pdur(11 * time.Second), MaxIdleConns: pu32(7)}, false)
	h.update(&pooldv1.Policy{Name: "policies/*.example.com", DialTimeout: pdur(1 * time.Second)}, true)
	h.update(&pooldv1.Policy{Name: "policies/*.b.example.com", DialTimeout: pdur(2 * time.Second)}, true)
	h.update(&pooldv1.Policy{Name: "policies/api.example.com", DialTimeout: pdur(3 * time.Second)}, true)
	h.update(&pooldv1.Policy{Name: "policies/api.example.com:8443", DialTimeout: pdur(4 * time.Second), IdleConnTimeout: pdur(44 * time.Second)}, true)
	h.update(&pooldv1.Policy{Name: "policies/[::1]:8443", DialTimeout: pdur(6 * time.Second)}, true)

	tests := []struct {
		host     string
		wantName string
		wantDial time.Duration
		wantIdle time.Duration
	}{
		{"api.example.com:8443", "policies/api.example.com:8443", 4 * time.Second, 44 * time.Second},
		{"api.example.com", "policies/api.example.com", 3 * time.Second, 11 * time.Second},
		{"api.example.com:9000", "policies/api.example.com", 3 * time.Second, 11 * time.Second},
		{"API.Example.com.", "policies/api.example.com", 3 * time.Second, 11 * time.Second},
		{"x.example.com", "policies/*.example.com", 1 * time.Second, 11 * time.Second},
		{"y.b.example.com:443", "policies/*.b.example.com", 2 * time.Second, 11 * time.Second},
		{"example.com", "policies/default", 5 * time.Second, 11 * time.Second},
		{"[::1]:8443", "policies/[::1]:8443", 6 * time.Second, 11 * time.Second},
		{"::1", "policies/default", 5 * time.Second, 11 * time.Second},
		{"10.0.0.1:80", "policies/default", 5 * time.Second, 11 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.host, func(t *testing.T) {
			got, err := h.client.GetEffectivePolicy(policyTestContext(t), &pooldv1.GetEffectivePolicyRequest{Host: tt.host})
			if err != nil {
				t.Fatalf("GetEffectivePolicy: %v", err)
			}
			if got.GetName() != tt.wantName || got.GetDialTimeout().AsDuration() != tt.wantDial || got.GetIdleConnTimeout().AsDuration() != tt.wantIdle {
				t.Errorf("got name %s dial %v idle %v, want %s %v %v", got.GetName(),
					got.GetDialTimeout().AsDuration(), got.GetIdleConnTimeout().AsDuration(), tt.wantName, tt.wantDial, tt.wantIdle)
			}
			if got.GetMaxIdleConns() != 7 || got.GetMaxRetries() != 1 || got.GetTcpKeepalive().GetCount() != 3 {
				t.Errorf("inherited values wrong: %v", got)
			}
			if got.GetEtag() != "" || got.GetUpdateTime() != nil {
				t.Errorf("effective policy has etag %q update_time %v, want neither", got.GetEtag(), got.GetUpdateTime())
			}
			wantPolicyFullySet(t, got.ProtoReflect())
		})
	}
}

// wantPolicyFullySet checks that every setting of an effective policy is
// present, keep-alive fields included.
func wantPolicyFullySet(t *testing.T, m protoreflect.Message) {
	t.Helper()
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		if _, fixed := fixedPolicyFields[string(fd.Name())]; fixed {
			continue
		}
		if !m.Has(fd) {
			t.Errorf("%s is unset in an effective policy", fd.FullName())
			continue
		}
		if fd.Message() != nil && ownMessage(fd.Message()) {
			wantPolicyFullySet(t, m.Get(fd).Message())
		}
	}
}

func TestGetEffectivePolicyRefusesWhatIsNotAHost(t *testing.T) {
	h := newPolicyHarness(t, "")
	for _, host := range []string{"", "*.example.com", "a b", "api.example.com:0", "api.example.com:x", "api.example.com:", "[::1", "[::1]:", "https://api.example.com", "fe80::1%eth0", "1:2"} {
		t.Run(host, func(t *testing.T) {
			_, err := h.client.GetEffectivePolicy(policyTestContext(t), &pooldv1.GetEffectivePolicyRequest{Host: host})
			st := wantPolicyStatus(t, err, codes.InvalidArgument, ReasonInvalidArgument)
			if _, ok := policyViolation(st, "host"); !ok {
				t.Errorf("error %v does not name field host", err)
			}
		})
	}
}

func TestConcurrentPolicyUpdatesWithTheSameEtagHaveOneWinner(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policies.json")
	h := newPolicyHarness(t, path)
	etag := h.get(defaultPolicyName).GetEtag()

	const n = 100
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			_, err := h.client.UpdatePolicy(policyTestContext(t), &pooldv1.UpdatePolicyRequest{
				Policy: &pooldv1.Policy{Name: defaultPolicyName, MaxRequestsPerConn: pu32(uint32(i + 1)), Etag: etag},
			})
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	wins := 0
	for err := range errs {
		if err == nil {
			wins++
			continue
		}
		wantPolicyStatus(t, err, codes.Aborted, ReasonEtagMismatch)
	}
	if wins != 1 {
		t.Fatalf("%d updates won, want exactly 1", wins)
	}
	if h.get(defaultPolicyName).GetMaxRequestsPerConn() == 0 {
		t.Error("the winning update is not stored")
	}
	wantPolicyFileMatches(t, path, h.list())
}

func TestConcurrentPolicyReadModifyWriteLoopsLoseNoUpdate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policies.json")
	h := newPolicyHarness(t, path)

	// Half the callers count up a shared field, retrying on ABORTED; the
	// other half each create a host policy of their own.
	const n = 100
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			ctx := policyTestContext(t)
			if i%2 == 1 {
				_, err := h.client.UpdatePolicy(ctx, &pooldv1.UpdatePolicyRequest{
					Policy:       &pooldv1.Policy{Name: policyName(policyHostN(i)), MaxRequestsPerConn: pu32(uint32(i))},
					AllowMissing: true,
				})
				errs <- err
				return
			}
			for {
				cur, err := h.client.GetPolicy(ctx, &pooldv1.GetPolicyRequest{Name: defaultPolicyName})
				if err != nil {
					errs <- err
					return
				}
				_, err = h.client.UpdatePolicy(ctx, &pooldv1.UpdatePolicyRequest{
					Policy: &pooldv1.Policy{
						Name:               defaultPolicyName,
						MaxRequestsPerConn: pu32(cur.GetMaxRequestsPerConn() + 1),
						Etag:               cur.GetEtag(),
					},
					UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"max_requests_per_conn"}},
				})
				if status.Code(err) == codes.Aborted {
					continue
				}
				errs <- err
				return
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}

	if got := h.get(defaultPolicyName).GetMaxRequestsPerConn(); got != n/2 {
		t.Errorf("counter = %d after %d increments", got, n/2)
	}
	list := h.list()
	if got := len(list.GetPolicies()); got != 1+n/2 {
		t.Errorf("%d policies, want %d", got, 1+n/2)
	}
	for i := 1; i < n; i += 2 {
		if got := h.get(policyName(policyHostN(i))).GetMaxRequestsPerConn(); got != uint32(i) {
			t.Errorf("%s: max_requests_per_conn = %d, want %d", policyHostN(i), got, i)
		}
	}
	wantPolicyFileMatches(t, path, list)
	if diff := cmp.Diff(h.store.PolicySet(), h.rec.last()); diff != "" {
		t.Errorf("engine set differs from the store's (-store +engine):\n%s", diff)
	}

	reopened, err := OpenPolicyStore(path, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(list, reopened.List(), protocmp.Transform()); diff != "" {
		t.Errorf("reopened store (-before +after):\n%s", diff)
	}
}

func policyHostN(i int) string {
	return fmt.Sprintf("h%d.example.com", i)
}

func TestAPolicyUpdateGivesUpWhenTheCallerHasGoneWhileWaiting(t *testing.T) {
	h := newPolicyHarness(t, "")
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err := h.store.Update(ctx, &pooldv1.Policy{Name: defaultPolicyName, MaxRetries: pu32(2)}, nil, false)
	if status.Code(err) != codes.Canceled {
		t.Fatalf("error = %v, want CANCELED", err)
	}
	if got := h.get(defaultPolicyName).GetMaxRetries(); got != *pool.DefaultPolicy().MaxRetries {
		t.Errorf("max_retries = %d after a canceled update, want the built-in %d", got, *pool.DefaultPolicy().MaxRetries)
	}
}

func TestAnEngineThatRefusesAPolicySetChangesNothing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policies.json")
	h := newPolicyHarness(t, path)
	h.update(&pooldv1.Policy{Name: defaultPolicyName, MaxRetries: pu32(2)}, false)
	before := h.list()

	h.rec.setFail(errors.New("engine busy"))
	_, err := h.client.UpdatePolicy(policyTestContext(t), &pooldv1.UpdatePolicyRequest{
		Policy: &pooldv1.Policy{Name: defaultPolicyName, MaxRetries: pu32(3)},
	})
	wantPolicyStatus(t, err, codes.Internal, "")
	h.rec.setFail(&pool.PolicyError{Field: "dial_timeout", Reason: "engine says no"})
	_, err = h.client.UpdatePolicy(policyTestContext(t), &pooldv1.UpdatePolicyRequest{
		Policy: &pooldv1.Policy{Name: defaultPolicyName, MaxRetries: pu32(3)},
	})
	wantPolicyViolation(t, err, "policy.dial_timeout", "engine says no")
	h.rec.setFail(pool.ErrClosed)
	_, err = h.client.UpdatePolicy(policyTestContext(t), &pooldv1.UpdatePolicyRequest{
		Policy: &pooldv1.Policy{Name: "policies/api.example.com", MaxRetries: pu32(3)}, AllowMissing: true,
	})
	wantPolicyStatus(t, err, codes.Unavailable, ReasonShuttingDown)

	if diff := cmp.Diff(before, h.list(), protocmp.Transform()); diff != "" {
		t.Errorf("refused changes altered the policies (-before +after):\n%s", diff)
	}
	wantPolicyFileMatches(t, path, before)
}

func TestPoliciesHandedOutAreCopies(t *testing.T) {
	h := newPolicyHarness(t, "")
	h.update(&pooldv1.Policy{Name: defaultPolicyName, MaxRetries: pu32(2)}, false)
	p, err := h.store.Get(defaultPolicyName)
	if err != nil {
		t.Fatal(err)
	}
	p.MaxRetries = pu32(9)
	h.store.List().GetPolicies()[0].Etag = "changed"
	if got, _ := h.store.Get(defaultPolicyName); got.GetMaxRetries() != 2 || got.GetEtag() == "changed" || proto.Equal(got, p) {
		t.Errorf("stored policy changed through a copy: %v", got)
	}
}
