package server

import (
	"fmt"
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	pooldv1 "github.com/poold/poold/gen/poold/v1"
)

// fixedPolicyFields are the Policy fields an update mask may not name:
// the name identifies the resource, the others are output only.
var fixedPolicyFields = map[string]string{
	"name":        "identifies the policy and cannot be updated",
	"etag":        "is output only; send it in policy.etag to guard the update",
	"update_time": "is output only",
}

// policyMask is a validated update mask for a Policy (AIP-134).
type policyMask struct {
	// replace is the "*" mask: the request's policy replaces the stored
	// one whole.
	replace bool
	// paths are the normalized field paths; none means every field the
	// request's policy sets.
	paths []string
}

// parsePolicyMask checks every path against the Policy descriptor, so that
// a new proto field is updatable without touching this file. A path may
// descend into poold's own messages ("tcp_keepalive.idle") but not into a
// well-known type: a Duration is one value, not two fields.
func parsePolicyMask(m *fieldmaskpb.FieldMask) (policyMask, []fieldViolation) {
	paths := m.GetPaths()
	var violations []fieldViolation
	bad := func(format string, args ...any) {
		violations = append(violations, fieldViolation{Field: "update_mask", Reason: fmt.Sprintf(format, args...)})
	}
	if len(paths) == 1 && paths[0] == "*" {
		return policyMask{replace: true}, nil
	}
	desc := (*pooldv1.Policy)(nil).ProtoReflect().Descriptor()
	for _, path := range paths {
		if path == "*" {
			bad(`"*" must be the only path`)
			continue
		}
		if _, err := fieldmaskpb.New((*pooldv1.Policy)(nil), path); err != nil {
			bad("unknown field path %q", path)
			continue
		}
		top, _, _ := strings.Cut(path, ".")
		if reason, ok := fixedPolicyFields[top]; ok {
			bad("%q %s", path, reason)
			continue
		}
		if reason := descendReason(desc, path); reason != "" {
			bad("%q: %s", path, reason)
		}
	}
	if violations != nil {
		return policyMask{}, violations
	}
	// Normalize sorts, drops duplicates and drops a path already covered
	// by its parent, so applying the paths in order is well defined.
	norm := &fieldmaskpb.FieldMask{Paths: append([]string(nil), paths...)}
	norm.Normalize()
	return policyMask{paths: norm.GetPaths()}, nil
}

// descendReason says why path, already known to name real fields, may not
// be used; "" when it may.
func descendReason(md protoreflect.MessageDescriptor, path string) string {
	parts := strings.Split(path, ".")
	for i, part := range parts[:len(parts)-1] {
		fd := md.Fields().ByName(protoreflect.Name(part))
		if fd.Message() == nil || fd.Cardinality() == protoreflect.Repeated {
			return fmt.Sprintf("%s is not a message", strings.Join(parts[:i+1], "."))
		}
		if !ownMessage(fd.Message()) {
			return fmt.Sprintf("%s is set as a whole", strings.Join(parts[:i+1], "."))
		}
		md = fd.Message()
	}
	return ""
}

// ownMessage tells poold's messages, whose fields masks may name one by
// one, from well-known types such as Duration, which are single values.
func ownMessage(md protoreflect.MessageDescriptor) bool {
	own := (*pooldv1.Policy)(nil).ProtoReflect().Descriptor().ParentFile().Package()
	return md.ParentFile().Package() == own
}

// apply returns cur changed as the mask says, taking values from req; cur
// and req are left alone. A path whose field req leaves unset clears it,
// so the policy inherits that field again.
func (m policyMask) apply(cur, req *pooldv1.Policy) *pooldv1.Policy {
	if req == nil {
		req = &pooldv1.Policy{}
	}
	if m.replace {
		out := proto.CloneOf(req)
		out.Name = cur.GetName()
		out.Etag = ""
		out.UpdateTime = nil
		return out
	}
	out := proto.CloneOf(cur)
	if out == nil {
		out = &pooldv1.Policy{}
	}
	paths := m.paths
	if len(paths) == 0 {
		paths = populatedPaths(req.ProtoReflect(), "")
	}
	for _, path := range paths {
		applyPath(out.ProtoReflect(), req.ProtoReflect(), strings.Split(path, "."))
	}
	return out
}

// populatedPaths lists the fields set in msg as mask paths: a field of a
// well-known type or a scalar is one path, one of poold's own messages
// contributes a path per field it sets. So an empty mask with
// tcp_keepalive {idle: 5s} changes only the idle time, and an empty
// tcp_keepalive changes nothing. Fixed fields are skipped, not refused:
// a caller may send back what GetPolicy returned, etag and all.
func populatedPaths(msg protoreflect.Message, prefix string) []string {
	var paths []string
	msg.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		path := prefix + string(fd.Name())
		if _, fixed := fixedPolicyFields[path]; fixed {
			return true
		}
		if fd.Message() != nil && fd.Cardinality() != protoreflect.Repeated && ownMessage(fd.Message()) {
			paths = append(paths, populatedPaths(v.Message(), path+".")...)
			return true
		}
		paths = append(paths, path)
		return true
	})
	return paths
}

// applyPath copies the field at path from src to dst, or clears it in dst
// when src leaves it unset.
func applyPath(dst, src protoreflect.Message, path []string) {
	fd := dst.Descriptor().Fields().ByName(protoreflect.Name(path[0]))
	if fd == nil {
		panic(fmt.Sprintf("server: internal error: unchecked mask path component %q", path[0]))
	}
	if len(path) == 1 {
		if !src.Has(fd) {
			dst.Clear(fd)
			return
		}
		v := src.Get(fd)
		if fd.Message() != nil {
			v = protoreflect.ValueOfMessage(proto.Clone(v.Message().Interface()).ProtoReflect())
		}
		dst.Set(fd, v)
		return
	}
	if !src.Has(fd) && !dst.Has(fd) {
		// Clearing a field of an absent message: nothing to do, and
		// Mutable would make an empty message appear.
		return
	}
	// Get of an unset message field is an empty read-only view, so a
	// path into it clears the field in dst.
	applyPath(dst.Mutable(fd).Message(), src.Get(fd).Message(), path[1:])
}
