package server

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	pooldv1 "github.com/poold/poold/gen/poold/v1"
)

// FuzzPolicyFileParse feeds arbitrary bytes to the policy file loader: it
// must never panic, and a file it accepts must hold a valid set and
// survive being saved and loaded again unchanged.
func FuzzPolicyFileParse(f *testing.F) {
	for _, seed := range []string{
		``,
		`{}`,
		`{"policies": [{"name": "policies/default", "idleConnTimeout": "45s", "maxIdleConns": 10}]}`,
		`{"policies": [{"name": "policies/api.example.com:8443", "dialTimeout": "1.5s", "tcpKeepalive": {"enabled": false, "idle": "5s"}}]}`,
		`{"policies": [{"name": "policies/*.example.com", "proxyUrl": "http://proxy:3128", "etag": "3-abc", "updateTime": "2030-01-02T03:04:05Z"}]}`,
		`{"policies": [{"name": "policies/api.example.com", "dialTimeout": "-1s"}]}`,
		`{"policies": [{"name": "policies/a.example.com"}, {"name": "policies/a.example.com"}]}`,
		`{"policies": [{"name": "policies/default", "dialTim`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		snap, gen, err := parsePolicyFile(data)
		if err != nil {
			return
		}
		if err := snap.set.Validate(); err != nil {
			t.Fatalf("accepted an invalid set: %v", err)
		}
		list := snap.list()
		if len(list.GetPolicies()) == 0 || list.GetPolicies()[0].GetName() != defaultPolicyName {
			t.Fatalf("policies do not start with the default one: %v", list)
		}
		saved, err := protojson.Marshal(list)
		if err != nil {
			t.Fatal(err)
		}
		again, gen2, err := parsePolicyFile(saved)
		if err != nil {
			t.Fatalf("a saved file does not load: %v\n%s", err, saved)
		}
		if diff := cmp.Diff(list, again.list(), protocmp.Transform()); diff != "" {
			t.Fatalf("save and load changed the policies (-saved +loaded):\n%s", diff)
		}
		if gen != gen2 {
			t.Fatalf("version went from %d to %d", gen, gen2)
		}
	})
}

// FuzzFieldMaskApply sends arbitrary policies and mask paths through
// UpdatePolicy's logic: it must never panic, and it either stores a valid
// policy that differs from the old one only where the mask says, or fails
// with INVALID_ARGUMENT.
func FuzzFieldMaskApply(f *testing.F) {
	for _, seed := range []struct{ policy, paths string }{
		{`{"name": "policies/default", "dialTimeout": "7s"}`, "dial_timeout"},
		{`{"name": "policies/api.example.com", "idleConnTimeout": "40s", "maxRetries": 0}`, ""},
		{`{"name": "policies/api.example.com"}`, "idle_conn_timeout"},
		{`{"name": "policies/api.example.com", "maxConnsPerHost": 8}`, "*"},
		{`{"name": "policies/api.example.com", "tcpKeepalive": {"idle": "5s", "count": 9}}`, "tcp_keepalive.idle"},
		{`{"name": "policies/api.example.com", "tcpKeepalive": {"idle": "5s"}}`, "tcp_keepalive"},
		{`{"name": "policies/api.example.com"}`, "dial_timeoutt,etag,update_time.seconds,name,dial_timeout.seconds,*"},
		{`{"name": "policies/api.example.com", "dialTimeout": "-1s"}`, ""},
		{`{"name": "policies/api.example.com", "maxIdleConns": 5}`, "max_idle_conns"},
		{`{"name": "policies/new.example.com:8443", "proxyUrl": "ftp://x"}`, "proxy_url"},
		{`{"name": "policies/API.example.com"}`, ""},
	} {
		f.Add([]byte(seed.policy), seed.paths)
	}
	f.Fuzz(func(t *testing.T, policy []byte, paths string) {
		p := &pooldv1.Policy{}
		if protojson.Unmarshal(policy, p) != nil && proto.Unmarshal(policy, p) != nil {
			return
		}
		if p.GetName() == "" {
			p.Name = "policies/api.example.com"
		}
		p.Etag = ""
		var mask *fieldmaskpb.FieldMask
		if paths != "" {
			mask = &fieldmaskpb.FieldMask{Paths: strings.Split(paths, ",")}
		}

		store, err := OpenPolicyStore("", nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		ctx := t.Context()
		if _, err := store.Update(ctx, &pooldv1.Policy{Name: defaultPolicyName, DialTimeout: pdur(3 * time.Second)}, nil, false); err != nil {
			t.Fatal(err)
		}
		if _, err := store.Update(ctx, &pooldv1.Policy{
			Name: "policies/api.example.com", MaxRetries: pu32(2),
			TcpKeepalive: &pooldv1.TcpKeepalive{Enabled: pbool(false), Count: pu32(4)},
		}, nil, true); err != nil {
			t.Fatal(err)
		}
		before, _ := store.Get(p.GetName())

		got, err := store.Update(ctx, p, mask, true)
		if err != nil {
			if code := status.Code(err); code != codes.InvalidArgument {
				t.Fatalf("error %v, want INVALID_ARGUMENT", err)
			}
			return
		}
		if err := store.PolicySet().Validate(); err != nil {
			t.Fatalf("stored an invalid set: %v", err)
		}
		stored, err := store.Get(got.GetName())
		if err != nil || !proto.Equal(stored, got) {
			t.Fatalf("GetPolicy = %v, %v; UpdatePolicy returned %v", stored, err, got)
		}
		if before == nil || len(mask.GetPaths()) == 0 || mask.GetPaths()[0] == "*" {
			return
		}
		// Top-level fields no path touches are as they were.
		fields := got.ProtoReflect().Descriptor().Fields()
		for i := range fields.Len() {
			fd := fields.Get(i)
			if _, fixed := fixedPolicyFields[string(fd.Name())]; fixed || maskTouches(mask.GetPaths(), fd) {
				continue
			}
			if !policyFieldEqual(before.ProtoReflect(), got.ProtoReflect(), fd) {
				t.Fatalf("%s changed though no path names it", fd.Name())
			}
		}
	})
}

func maskTouches(paths []string, fd protoreflect.FieldDescriptor) bool {
	for _, p := range paths {
		if p == string(fd.Name()) || strings.HasPrefix(p, string(fd.Name())+".") {
			return true
		}
	}
	return false
}

func policyFieldEqual(a, b protoreflect.Message, fd protoreflect.FieldDescriptor) bool {
	if a.Has(fd) != b.Has(fd) {
		return false
	}
	if fd.Message() != nil {
		return proto.Equal(a.Get(fd).Message().Interface(), b.Get(fd).Message().Interface())
	}
	return a.Get(fd).Equal(b.Get(fd))
}
