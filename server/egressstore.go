package server

import (
	"context"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/poold/poold/dialer"
	pooldv1 "github.com/poold/poold/gen/poold/v1"
)

const (
	egressNamePrefix  = "egressRuleSets/"
	defaultEgressID   = "default"
	defaultEgressName = egressNamePrefix + defaultEgressID
)

// egressIDPattern is what may follow "egressRuleSets/".
var egressIDPattern = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// egressMaskPaths are the fields an update mask may name.
var egressMaskPaths = []string{"allow", "deny", "default_deny", "allowed_ports", "callers"}

// parseEgressName returns the id in a rule set's name.
func parseEgressName(name, field string) (string, *fieldViolation) {
	id, ok := strings.CutPrefix(name, egressNamePrefix)
	if !ok || !egressIDPattern.MatchString(id) {
		reason := `must be "egressRuleSets/default" or "egressRuleSets/{id}", id of lower-case letters, digits and hyphens`
		if name == "" {
			reason = "is required: " + reason
		}
		return "", &fieldViolation{Field: field, Reason: reason}
	}
	return id, nil
}

// EgressConfig turns a stored rule set into the dialer's form, without the
// daemon's own listeners, which whoever applies it adds.
func EgressConfig(rs *pooldv1.EgressRuleSet) dialer.EgressConfig {
	ports := make([]uint16, 0, len(rs.GetAllowedPorts()))
	for _, p := range rs.GetAllowedPorts() {
		ports = append(ports, uint16(p))
	}
	return dialer.EgressConfig{
		Allow:        slices.Clone(rs.GetAllow()),
		Deny:         slices.Clone(rs.GetDeny()),
		DefaultDeny:  rs.GetDefaultDeny(),
		AllowedPorts: ports,
	}
}

// EgressRuleSetFrom is the resource form of an egress configuration, for
// the default rule set the daemon's flags make.
func EgressRuleSetFrom(cfg dialer.EgressConfig) *pooldv1.EgressRuleSet {
	rs := &pooldv1.EgressRuleSet{
		Name:        defaultEgressName,
		Allow:       slices.Clone(cfg.Allow),
		Deny:        slices.Clone(cfg.Deny),
		DefaultDeny: cfg.DefaultDeny,
	}
	for _, p := range cfg.AllowedPorts {
		rs.AllowedPorts = append(rs.AllowedPorts, uint32(p))
	}
	return rs
}

// egressViolations checks one rule set against the others (by id), so
// that each entry that is wrong is named with its reason, and a caller is
// bound to one rule set at most.
func egressViolations(id string, rs *pooldv1.EgressRuleSet, others map[string]*pooldv1.EgressRuleSet, prefix string) []fieldViolation {
	var out []fieldViolation
	bad := func(field, format string, args ...any) {
		out = append(out, fieldViolation{Field: prefix + field, Reason: fmt.Sprintf(format, args...)})
	}
	for _, list := range []struct {
		field   string
		entries []string
	}{{"allow", rs.GetAllow()}, {"deny", rs.GetDeny()}} {
		for i, e := range list.entries {
			if err := dialer.CheckEgressEntry(e); err != nil {
				bad(fmt.Sprintf("%s[%d]", list.field, i), "%q: %v", e, err)
			}
		}
	}
	for i, p := range rs.GetAllowedPorts() {
		if p == 0 || p > 65535 {
			bad(fmt.Sprintf("allowed_ports[%d]", i), "must be from 1 to 65535, got %d", p)
		}
	}
	if id == defaultEgressID && len(rs.GetCallers()) > 0 {
		bad("callers", "the default rule set is for callers bound to none; bind callers to another rule set")
	}
	bound := map[string]string{}
	for otherID, o := range others {
		if otherID == id {
			continue
		}
		for _, c := range o.GetCallers() {
			bound[c] = o.GetName()
		}
	}
	seen := map[string]bool{}
	for i, c := range rs.GetCallers() {
		kind, who, ok := strings.Cut(c, ":")
		field := fmt.Sprintf("callers[%d]", i)
		switch {
		case !ok || who == "" || kind != "token" && kind != "cert":
			bad(field, `%q: must be "token:NAME" or "cert:ID"`, c)
		case kind == "token" && !validTokenName(who):
			bad(field, "%q: not a token name (letters, digits, '.', '_' and '-')", c)
		case seen[c]:
			bad(field, "%q is listed twice", c)
		case bound[c] != "":
			bad(field, "%q is bound to %s already; a caller is bound to one rule set", c, bound[c])
		}
		seen[c] = true
	}
	return out
}

// egressList returns the snapshot's rule sets, the default first, shared.
func (snap *policySnapshot) egressList() []*pooldv1.EgressRuleSet {
	out := make([]*pooldv1.EgressRuleSet, 0, len(snap.egress))
	ids := slices.Sorted(maps.Keys(snap.egress))
	if i := slices.Index(ids, defaultEgressID); i > 0 {
		ids = append([]string{defaultEgressID}, slices.Delete(ids, i, i+1)...)
	}
	for _, id := range ids {
		out = append(out, snap.egress[id])
	}
	return out
}

// UseEgress makes def (the daemon's flags) the default rule set unless one
// is stored, and hands every rule set to apply now and after each change.
// It is called once, before serving.
func (s *PolicyStore) UseEgress(def *pooldv1.EgressRuleSet, apply func([]*pooldv1.EgressRuleSet) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := proto.CloneOf(def)
	d.Name, d.Callers = defaultEgressName, nil
	if v := egressViolations(defaultEgressID, d, nil, "--egress-"); len(v) > 0 {
		return invalidArgument(v...)
	}
	// Not stored, so it has no revision: the first change creates it.
	d.Etag = resourceEtag(0, d)
	old := s.cur.Load()
	next := old.clone()
	if _, ok := next.egress[defaultEgressID]; !ok {
		next.egress[defaultEgressID] = d
	}
	if err := apply(next.egressList()); err != nil {
		return err
	}
	s.flagsEgress = d
	s.applyEgress = apply
	s.cur.Store(next)
	return nil
}

// GetEgress returns the named rule set.
func (s *PolicyStore) GetEgress(name string) (*pooldv1.EgressRuleSet, error) {
	id, v := parseEgressName(name, "name")
	if v != nil {
		return nil, invalidArgument(*v)
	}
	rs, ok := s.cur.Load().egress[id]
	if !ok {
		return nil, notFound(name)
	}
	return proto.CloneOf(rs), nil
}

// ListEgress returns every rule set, the default first.
func (s *PolicyStore) ListEgress() *pooldv1.ListEgressRuleSetsResponse {
	list := s.cur.Load().egressList()
	for i, rs := range list {
		list[i] = proto.CloneOf(rs)
	}
	return &pooldv1.ListEgressRuleSetsResponse{EgressRuleSets: list}
}

// UpdateEgress changes the rule set rs names as mask says and returns it
// as stored; see UpdateEgressRuleSetRequest.
func (s *PolicyStore) UpdateEgress(ctx context.Context, rs *pooldv1.EgressRuleSet, mask *fieldmaskpb.FieldMask, allowMissing bool) (*pooldv1.EgressRuleSet, error) {
	if rs == nil {
		return nil, invalidArgument(fieldViolation{Field: "egress_rule_set", Reason: "is required"})
	}
	id, v := parseEgressName(rs.GetName(), "egress_rule_set.name")
	if v != nil {
		return nil, invalidArgument(*v)
	}
	paths, violations := parseEgressMask(mask, rs)
	if violations != nil {
		return nil, invalidArgument(violations...)
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return nil, status.FromContextError(err).Err()
	}
	if err := s.sync.writableLocked(); err != nil {
		return nil, err
	}
	key := egressNamePrefix + id
	for attempt := 0; ; attempt++ {
		old := s.cur.Load()
		cur, exists := old.egress[id]
		if !exists && attempt == 0 && s.sync.isShared() {
			if err := s.refreshLocked(ctx, key); err != nil {
				return nil, s.storeStatus(err)
			}
			if _, exists = s.cur.Load().egress[id]; exists {
				continue
			}
		}
		switch {
		case !exists && !allowMissing:
			return nil, notFound(rs.GetName())
		case !exists:
			cur = &pooldv1.EgressRuleSet{Name: rs.GetName()}
		}
		if rs.GetEtag() != "" && rs.GetEtag() != cur.GetEtag() {
			if attempt == 0 && etagRevision(rs.GetEtag()) > old.revs[key] {
				if err := s.refreshLocked(ctx, key); err != nil {
					return nil, s.storeStatus(err)
				}
				continue
			}
			return nil, etagMismatch(rs.GetName())
		}
		stored := proto.CloneOf(cur)
		stored.Etag = ""
		for _, p := range paths {
			switch p {
			case "allow":
				stored.Allow = slices.Clone(rs.GetAllow())
			case "deny":
				stored.Deny = slices.Clone(rs.GetDeny())
			case "default_deny":
				stored.DefaultDeny = rs.GetDefaultDeny()
			case "allowed_ports":
				stored.AllowedPorts = slices.Clone(rs.GetAllowedPorts())
			case "callers":
				stored.Callers = slices.Clone(rs.GetCallers())
			}
		}
		if v := egressViolations(id, stored, old.egress, "egress_rule_set."); len(v) > 0 {
			return nil, invalidArgument(v...)
		}
		stored.UpdateTime = timestamppb.New(s.now())
		next := old.clone()
		next.egress[id] = stored
		rev, retry, err := s.commitLocked(ctx, old, next, key, rs.GetName(), stored, rs.GetEtag() == "", attempt)
		if err != nil {
			return nil, err
		}
		if retry {
			continue
		}
		stored.Etag = resourceEtag(uint64(rev), stored)
		next.revs[key] = rev
		s.publishLocked(next, rev)
		return proto.CloneOf(stored), nil
	}
}

// DeleteEgress removes a rule set; its callers fall back to the default.
func (s *PolicyStore) DeleteEgress(ctx context.Context, name, etag string) error {
	id, v := parseEgressName(name, "name")
	if v != nil {
		return invalidArgument(*v)
	}
	if id == defaultEgressID {
		return policyStatus(codes.FailedPrecondition, ReasonDefaultPolicyRequired, name,
			"egressRuleSets/default cannot be deleted; change it with UpdateEgressRuleSet instead")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.sync.writableLocked(); err != nil {
		return err
	}
	return s.deleteLocked(ctx, name, etag, egressNamePrefix+id,
		func(snap *policySnapshot) (etagged, bool) {
			rs, ok := snap.egress[id]
			return rs, ok
		},
		func(next *policySnapshot) { delete(next.egress, id) })
}

// parseEgressMask returns the fields an update changes: the mask's paths,
// all of them for "*", or the fields rs sets for an empty mask.
func parseEgressMask(m *fieldmaskpb.FieldMask, rs *pooldv1.EgressRuleSet) ([]string, []fieldViolation) {
	paths := m.GetPaths()
	if len(paths) == 1 && paths[0] == "*" {
		return egressMaskPaths, nil
	}
	if len(paths) == 0 {
		for _, p := range egressMaskPaths {
			if rs.ProtoReflect().Has(rs.ProtoReflect().Descriptor().Fields().ByName(protoreflect.Name(p))) {
				paths = append(paths, p)
			}
		}
		return paths, nil
	}
	var violations []fieldViolation
	for _, p := range paths {
		if !slices.Contains(egressMaskPaths, p) {
			violations = append(violations, fieldViolation{Field: "update_mask", Reason: fmt.Sprintf(`unknown or fixed field path %q (one of %s, or "*")`, p, strings.Join(egressMaskPaths, ", "))})
		}
	}
	return paths, violations
}
