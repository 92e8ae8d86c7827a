package server

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	pooldv1 "github.com/poold/poold/gen/poold/v1"
	"github.com/poold/poold/pool"
)

func TestFieldMaskPathsAreNormalized(t *testing.T) {
	m, violations := parsePolicyMask(&fieldmaskpb.FieldMask{Paths: []string{"tcp_keepalive.idle", "tcp_keepalive", "max_retries", "dial_timeout", "max_retries"}})
	if violations != nil {
		t.Fatal(violations)
	}
	if want := []string{"dial_timeout", "max_retries", "tcp_keepalive"}; !slices.Equal(m.paths, want) {
		t.Errorf("paths = %q, want %q", m.paths, want)
	}
}

func TestFieldMaskReportsEveryBadPath(t *testing.T) {
	_, violations := parsePolicyMask(&fieldmaskpb.FieldMask{Paths: []string{"nope", "dial_timeout", "etag", ""}})
	if len(violations) != 3 {
		t.Fatalf("violations = %v, want 3", violations)
	}
	for _, v := range violations {
		if v.Field != "update_mask" {
			t.Errorf("violation of %q, want update_mask", v.Field)
		}
	}
}

func TestFieldMaskEmptyMaskTakesTheFieldsTheRequestSets(t *testing.T) {
	req := &pooldv1.Policy{
		Name:         "policies/x.example.com",
		Etag:         "1-abc",
		DialTimeout:  pdur(time.Second),
		MaxRetries:   pu32(0),
		TcpKeepalive: &pooldv1.TcpKeepalive{Idle: pdur(time.Second), Count: pu32(2)},
	}
	got := populatedPaths(req.ProtoReflect(), "")
	slices.Sort(got)
	want := []string{"dial_timeout", "max_retries", "tcp_keepalive.count", "tcp_keepalive.idle"}
	if !slices.Equal(got, want) {
		t.Errorf("paths = %q, want %q", got, want)
	}
}

func TestFieldMaskEveryPolicyFieldIsUpdatableOnItsOwn(t *testing.T) {
	// Walks the descriptor, so a field added to the proto is covered
	// without a new case here.
	full := fromPoolPolicy(defaultPolicyName, pool.DefaultPolicy())
	var paths []string
	for _, p := range populatedPaths(full.ProtoReflect(), "") {
		paths = append(paths, p)
		if top, _, nested := strings.Cut(p, "."); nested {
			paths = append(paths, top)
		}
	}
	for _, path := range paths {
		m, violations := parsePolicyMask(&fieldmaskpb.FieldMask{Paths: []string{path}})
		if violations != nil {
			t.Errorf("%s: %v", path, violations)
			continue
		}
		got := m.apply(&pooldv1.Policy{Name: defaultPolicyName}, full)
		if got.GetName() != defaultPolicyName {
			t.Errorf("%s: name became %q", path, got.GetName())
		}
		if paths := populatedPaths(got.ProtoReflect(), ""); len(paths) == 0 {
			t.Errorf("%s: nothing copied", path)
		}
		// Clearing it again restores the empty policy.
		back := m.apply(got, &pooldv1.Policy{})
		if left := populatedPaths(back.ProtoReflect(), ""); left != nil {
			t.Errorf("%s: clearing left %v", path, back)
		}
	}
}

func TestFieldMaskApplyLeavesItsInputsAlone(t *testing.T) {
	cur := &pooldv1.Policy{Name: defaultPolicyName, TcpKeepalive: &pooldv1.TcpKeepalive{Count: pu32(3)}}
	req := &pooldv1.Policy{TcpKeepalive: &pooldv1.TcpKeepalive{Idle: pdur(time.Second)}}
	curCopy, reqCopy := proto.Clone(cur), proto.Clone(req)
	for _, paths := range [][]string{nil, {"tcp_keepalive"}, {"tcp_keepalive.count"}, {"*"}} {
		m, _ := parsePolicyMask(&fieldmaskpb.FieldMask{Paths: paths})
		got := m.apply(cur, req)
		got.TcpKeepalive.Idle = pdur(time.Hour)
		if diff := cmp.Diff(curCopy, cur, protocmp.Transform()); diff != "" {
			t.Errorf("%q changed the stored policy:\n%s", paths, diff)
		}
		if diff := cmp.Diff(reqCopy, req, protocmp.Transform()); diff != "" {
			t.Errorf("%q changed the request:\n%s", paths, diff)
		}
	}
}
