package server

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	pooldv1 "github.com/poold/poold/gen/poold/v1"
	"github.com/poold/poold/pool"
)

// PolicyStore holds the policies PolicyService serves: the default policy
// and the host policies, each with its etag and update time. Every change
// is validated, handed to the engine and saved to the policy file before it
// is acknowledged; when any step fails nothing changes, so memory, engine
// and disk agree.
type PolicyStore struct {
	path  string                     // policy file; "" keeps policies in memory only
	apply func(pool.PolicySet) error // hands a new set to the engine
	now   func() time.Time

	// mu serializes changes. It is held from reading the current snapshot
	// until the next one is applied and saved, so that two updates cannot
	// both pass the same etag check, and the engine and the file see
	// changes in the order callers do.
	mu  sync.Mutex
	gen uint64 // guarded by mu: the highest policy version handed out

	// cur is the latest committed snapshot. Readers load it without mu and
	// so never wait behind a file write.
	cur atomic.Pointer[policySnapshot]

	// applyEgress hands the egress rule sets to whoever enforces them; nil
	// until UseEgress. Guarded by mu.
	applyEgress func([]*pooldv1.EgressRuleSet) error
}

// policySnapshot is one state of the store. It is never changed once
// stored: a change builds the next snapshot.
type policySnapshot struct {
	set pool.PolicySet
	// policies holds the resource form of every policy in set, keyed like
	// set.Hosts with "" for the default policy: only the fields set, plus
	// name, etag and (once changed) update_time.
	policies map[string]*pooldv1.Policy
	// egress holds the egress rule sets by id ("default" for the default
	// one), in resource form with etag and update time.
	egress map[string]*pooldv1.EgressRuleSet
	// egressFromFlags says the default rule set is the daemon's flags, not
	// one saved: it is not written to the file, so the flags keep working
	// until the default is changed over the API.
	egressFromFlags bool
}

// clone returns a copy of snap that can be changed into the next one; the
// resources are shared, as they are never changed in place.
func (snap *policySnapshot) clone() *policySnapshot {
	next := *snap
	next.policies = maps.Clone(snap.policies)
	next.egress = maps.Clone(snap.egress)
	if next.egress == nil {
		next.egress = map[string]*pooldv1.EgressRuleSet{}
	}
	return &next
}

// file is what the policy file holds for snap.
func (snap *policySnapshot) file() *pooldv1.PolicyFile {
	f := &pooldv1.PolicyFile{Policies: snap.list().GetPolicies()}
	for _, rs := range snap.egressList() {
		if rs.GetName() == defaultEgressName && snap.egressFromFlags {
			continue
		}
		f.EgressRuleSets = append(f.EgressRuleSets, rs)
	}
	return f
}

// OpenPolicyStore loads the policies saved at path and applies them with
// apply (normally the engine's SetPolicies) before returning, so nothing is
// served under the built-in defaults by mistake.
//
// path "" keeps the policies in memory only. A missing file starts from an
// empty default policy (the built-in settings) and is created on the first
// change; its directory must exist. A present file holds a PolicyFile in
// protobuf JSON: the policies as PolicyService.ListPolicies returns them
// (so a file from before egress rule sets, a ListPoliciesResponse, reads
// the same) and the egress rule sets; it must be valid in full, unknown
// fields included, or the store does not open. now stamps update_time; nil means time.Now. apply
// nil applies nowhere, for a store used on its own.
func OpenPolicyStore(path string, apply func(pool.PolicySet) error, now func() time.Time) (*PolicyStore, error) {
	if apply == nil {
		apply = func(pool.PolicySet) error { return nil }
	}
	if now == nil {
		now = time.Now
	}
	s := &PolicyStore{path: path, apply: apply, now: now}
	var data []byte
	if path != "" {
		var err error
		data, err = os.ReadFile(path)
		if errors.Is(err, fs.ErrNotExist) {
			err = checkPolicyDir(path)
		}
		if err != nil {
			return nil, fmt.Errorf("policy file %s: %w", path, err)
		}
	}
	snap, gen, err := parsePolicyFile(data)
	if err != nil {
		return nil, fmt.Errorf("policy file %s: %w", path, err)
	}
	s.gen = gen
	if err := apply(snap.set); err != nil {
		return nil, fmt.Errorf("policy file %s: applying the policies: %w", path, err)
	}
	s.cur.Store(snap)
	return s, nil
}

// PolicySet returns the current policies in the engine's form.
func (s *PolicyStore) PolicySet() pool.PolicySet {
	return s.cur.Load().set.Clone()
}

// Get returns the named policy as the API shows it (see shown).
func (s *PolicyStore) Get(name string) (*pooldv1.Policy, error) {
	host, v := parsePolicyName(name, "name")
	if v != nil {
		return nil, invalidArgument(*v)
	}
	p, ok := s.cur.Load().policies[host]
	if !ok {
		return nil, notFound(name)
	}
	return shown(host, p), nil
}

// shown is a stored policy as the API shows it. A host policy shows the
// fields it sets, so that what it inherits stays visibly inherited. The
// default policy is where inheritance ends, so it shows the values in
// force: what it sets, and the built-in value of every field it leaves
// unset. The etag is the stored policy's; an update still changes only the
// fields it names, and the policy file holds only what was set.
func shown(host string, p *pooldv1.Policy) *pooldv1.Policy {
	if host != "" {
		return proto.CloneOf(p)
	}
	stored, violations := toPoolPolicy(p)
	if len(violations) > 0 {
		// Stored policies were validated on the way in; show it as is.
		return proto.CloneOf(p)
	}
	out := fromPoolPolicy(p.GetName(), pool.DefaultPolicy().Merge(stored))
	out.Etag, out.UpdateTime = p.GetEtag(), proto.CloneOf(p.GetUpdateTime())
	return out
}

// List returns every policy: the default policy first, then host policies
// ordered by name.
func (s *PolicyStore) List() *pooldv1.ListPoliciesResponse {
	resp := s.cur.Load().list()
	for i, p := range resp.Policies {
		host, _ := parsePolicyName(p.GetName(), "name")
		resp.Policies[i] = shown(host, p)
	}
	return resp
}

// Effective returns the fully resolved policy for host, "api.example.com"
// or "api.example.com:8443": every field set, named after the policy that
// matched, without an etag.
func (s *PolicyStore) Effective(host string) (*pooldv1.Policy, error) {
	name, port, v := splitPolicyHost(host)
	if v != nil {
		return nil, invalidArgument(*v)
	}
	return effectiveProto(s.cur.Load().set.Resolve(name, port)), nil
}

// Update changes the policy named by p.Name as mask says (see
// UpdatePolicyRequest.update_mask) and returns it as stored. A non-empty
// p.Etag must match the current etag. A missing host policy is created
// when allowMissing is set. Errors are gRPC statuses.
func (s *PolicyStore) Update(ctx context.Context, p *pooldv1.Policy, mask *fieldmaskpb.FieldMask, allowMissing bool) (*pooldv1.Policy, error) {
	if p == nil {
		return nil, invalidArgument(fieldViolation{Field: "policy", Reason: "is required"})
	}
	host, v := parsePolicyName(p.GetName(), "policy.name")
	if v != nil {
		return nil, invalidArgument(*v)
	}
	m, violations := parsePolicyMask(mask)
	if violations != nil {
		return nil, invalidArgument(violations...)
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	// Waiting for mu may have outlasted the caller; a change it no longer
	// waits for must not happen behind its back.
	if err := ctx.Err(); err != nil {
		return nil, status.FromContextError(err).Err()
	}
	old := s.cur.Load()
	cur, exists := old.policies[host]
	switch {
	case !exists && !allowMissing:
		return nil, notFound(p.GetName())
	case !exists:
		cur = &pooldv1.Policy{Name: p.GetName()}
	}
	// AIP-154: a stale etag, or one sent for a policy that does not exist
	// yet, means the caller's view is out of date.
	if p.GetEtag() != "" && p.GetEtag() != cur.GetEtag() {
		return nil, etagMismatch(p.GetName())
	}

	pp, violations := toPoolPolicy(m.apply(cur, p))
	if violations != nil {
		return nil, invalidArgument(violations...)
	}
	next := old.set.Clone()
	if host == "" {
		next.Default = pp
	} else {
		if next.Hosts == nil {
			next.Hosts = map[string]pool.Policy{}
		}
		next.Hosts[host] = pp
	}
	if err := next.Validate(); err != nil {
		return nil, invalidArgument(policyViolations(err)...)
	}

	stored := fromPoolPolicy(p.GetName(), pp)
	stored.UpdateTime = timestamppb.New(s.now())
	s.gen++
	stored.Etag = resourceEtag(s.gen, stored)
	policies := maps.Clone(old.policies)
	policies[host] = stored
	if err := s.commitLocked(old, &policySnapshot{set: next, policies: policies}); err != nil {
		s.gen--
		return nil, err
	}
	return shown(host, stored), nil
}

// Delete removes a host policy; its hosts fall back to the next most
// specific policy. A non-empty etag must match the current one. Errors are
// gRPC statuses.
func (s *PolicyStore) Delete(name, etag string) error {
	host, v := parsePolicyName(name, "name")
	if v != nil {
		return invalidArgument(*v)
	}
	if host == "" {
		return policyStatus(codes.FailedPrecondition, ReasonDefaultPolicyRequired, name,
			"policies/default cannot be deleted; clear its fields with UpdatePolicy instead")
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.cur.Load()
	cur, ok := old.policies[host]
	if !ok {
		return notFound(name)
	}
	if etag != "" && etag != cur.GetEtag() {
		return etagMismatch(name)
	}
	next := old.set.Clone()
	delete(next.Hosts, host)
	policies := maps.Clone(old.policies)
	delete(policies, host)
	return s.commitLocked(old, &policySnapshot{set: next, policies: policies})
}

// commitLocked makes next current: the engine first, since it may still
// refuse, then the file, then memory. If saving fails the engine gets old
// back, so that what callers read, what the engine runs and what a restart
// loads stay the same.
func (s *PolicyStore) commitLocked(old, next *policySnapshot) error {
	if err := s.apply(next.set); err != nil {
		return applyStatus(err)
	}
	if err := s.saveLocked(old, next); err != nil {
		if rerr := s.apply(old.set); rerr != nil {
			return fmt.Errorf("%w; restoring the previous policies also failed: %v", err, rerr)
		}
		return err
	}
	s.cur.Store(next)
	return nil
}

// saveLocked writes next to the policy file, if there is one. If that
// fails the file is left holding old (restored if the new contents were
// already in place), so that a restart loads what callers were told is
// current.
func (s *PolicyStore) saveLocked(old, next *policySnapshot) error {
	if s.path == "" {
		return nil
	}
	renamed, err := writePolicyFile(s.path, next.file())
	if err == nil {
		return nil
	}
	msg := fmt.Sprintf("not changed: saving %s: %v", s.path, err)
	if renamed {
		// The new file is in place but may not survive a crash.
		if _, werr := writePolicyFile(s.path, old.file()); werr != nil {
			msg += fmt.Sprintf("; restoring the previous file also failed: %v", werr)
		}
	}
	return policyStatus(codes.Internal, ReasonPolicyNotSaved, "", msg)
}

// list returns the snapshot's policies in List order, shared, not copied.
func (snap *policySnapshot) list() *pooldv1.ListPoliciesResponse {
	resp := &pooldv1.ListPoliciesResponse{Policies: make([]*pooldv1.Policy, 0, len(snap.policies))}
	// "" sorts first, so the default policy leads; host names sort the
	// same way as their resource names.
	for _, host := range slices.Sorted(maps.Keys(snap.policies)) {
		resp.Policies = append(resp.Policies, snap.policies[host])
	}
	return resp
}

// policyViolations turns the errors of pool.PolicySet.Validate into field
// violations of the policy being updated.
func policyViolations(err error) []fieldViolation {
	var errs []error
	if joined, ok := err.(interface{ Unwrap() []error }); ok {
		errs = joined.Unwrap()
	} else {
		errs = []error{err}
	}
	var violations []fieldViolation
	for _, e := range errs {
		var perr *pool.PolicyError
		if errors.As(e, &perr) {
			violations = append(violations, fieldViolation{Field: "policy." + perr.Field, Reason: perr.Reason})
		} else {
			violations = append(violations, fieldViolation{Field: "policy", Reason: e.Error()})
		}
	}
	return violations
}

// applyStatus maps an engine's refusal of a set. The store validated the
// set already, so a policy error here means the engine checks more than
// pool.PolicySet.Validate does; it is still the caller's input at fault.
func applyStatus(err error) error {
	var perr *pool.PolicyError
	if errors.As(err, &perr) {
		return invalidArgument(policyViolations(err)...)
	}
	if errors.Is(err, pool.ErrClosed) {
		return statusFromError(err)
	}
	return status.Errorf(codes.Internal, "applying the policies: %v", err)
}

// notFound answers for a policy or an egress rule set that does not
// exist; name says which kind it is.
func notFound(name string) error {
	return policyStatus(codes.NotFound, ReasonPolicyNotFound, name, fmt.Sprintf("%q not found", name))
}

// etagMismatch answers for a policy or an egress rule set whose etag is
// stale.
func etagMismatch(name string) error {
	return policyStatus(codes.Aborted, ReasonEtagMismatch, name,
		fmt.Sprintf("%s changed since its etag was read; read it again and retry", name))
}

// policyStatus builds a status with an ErrorInfo naming the policy.
func policyStatus(code codes.Code, reason, name, msg string) error {
	info := &errdetails.ErrorInfo{Reason: reason, Domain: ErrorDomain}
	if name != "" {
		info.Metadata = map[string]string{"name": name}
	}
	st, err := status.New(code, msg).WithDetails(info)
	if err != nil {
		return status.Error(code, msg)
	}
	return st.Err()
}

// parsePolicyFile reads a policy file's contents into a snapshot, and
// returns the highest policy version in it. Empty contents, as left by
// touch, hold no policies. Errors name the policy and the field at fault,
// all of them at once, so that one edit fixes the file.
func parsePolicyFile(data []byte) (*policySnapshot, uint64, error) {
	// A PolicyFile; a file written before egress rule sets were saved is
	// a ListPoliciesResponse, which reads the same.
	var file pooldv1.PolicyFile
	if len(bytes.TrimSpace(data)) > 0 {
		if err := protojson.Unmarshal(data, &file); err != nil {
			return nil, 0, err
		}
	}
	snap := &policySnapshot{policies: map[string]*pooldv1.Policy{}, egress: map[string]*pooldv1.EgressRuleSet{}}
	var problems []string
	for i, rs := range file.GetEgressRuleSets() {
		id, v := parseEgressName(rs.GetName(), "name")
		switch {
		case v != nil:
			problems = append(problems, fmt.Sprintf("egress_rule_sets[%d] (%q): name: %s", i, rs.GetName(), v.Reason))
			continue
		case snap.egress[id] != nil:
			problems = append(problems, fmt.Sprintf("%s: listed twice", rs.GetName()))
			continue
		}
		if t := rs.GetUpdateTime(); t != nil && t.CheckValid() != nil {
			problems = append(problems, fmt.Sprintf("%s: update_time: not a valid timestamp", rs.GetName()))
		}
		snap.egress[id] = rs
	}
	for id, rs := range snap.egress {
		for _, v := range egressViolations(id, rs, snap.egress, "") {
			problems = append(problems, fmt.Sprintf("%s: %s: %s", rs.GetName(), v.Field, v.Reason))
		}
	}
	for i, p := range file.GetPolicies() {
		host, v := parsePolicyName(p.GetName(), "name")
		if v != nil {
			problems = append(problems, fmt.Sprintf("policies[%d] (%q): name: %s", i, p.GetName(), v.Reason))
			continue
		}
		if _, dup := snap.policies[host]; dup {
			problems = append(problems, fmt.Sprintf("%s: listed twice", p.GetName()))
			continue
		}
		pp, violations := toPoolPolicy(p)
		for _, v := range violations {
			problems = append(problems, fmt.Sprintf("%s: %s: %s", p.GetName(), strings.TrimPrefix(v.Field, "policy."), v.Reason))
		}
		if t := p.GetUpdateTime(); t != nil && t.CheckValid() != nil {
			problems = append(problems, fmt.Sprintf("%s: update_time: not a valid timestamp", p.GetName()))
		}
		if host == "" {
			snap.set.Default = pp
		} else {
			if snap.set.Hosts == nil {
				snap.set.Hosts = map[string]pool.Policy{}
			}
			snap.set.Hosts[host] = pp
		}
		stored := fromPoolPolicy(p.GetName(), pp)
		stored.UpdateTime = p.GetUpdateTime()
		stored.Etag = p.GetEtag()
		snap.policies[host] = stored
	}
	if problems == nil {
		if err := snap.set.Validate(); err != nil {
			// PolicyError reads "policies/{host}: field: reason".
			if joined, ok := err.(interface{ Unwrap() []error }); ok {
				for _, e := range joined.Unwrap() {
					problems = append(problems, e.Error())
				}
			} else {
				problems = append(problems, err.Error())
			}
		}
	}
	if problems != nil {
		return nil, 0, errors.New(strings.Join(problems, "; "))
	}
	if _, ok := snap.policies[""]; !ok {
		snap.policies[""] = &pooldv1.Policy{Name: defaultPolicyName}
	}

	// Keep the saved etags, so callers holding one can still use it after
	// a restart, unless the policy no longer matches its etag (the file
	// was edited by hand): that policy gets a new version above all others.
	var gen uint64
	var stale []string
	for _, host := range slices.Sorted(maps.Keys(snap.policies)) {
		p := snap.policies[host]
		if version, ok := etagVersion(p); ok {
			gen = max(gen, version)
		} else {
			stale = append(stale, host)
		}
	}
	for _, host := range stale {
		gen++
		snap.policies[host].Etag = resourceEtag(gen, snap.policies[host])
	}
	var staleSets []string
	for _, id := range slices.Sorted(maps.Keys(snap.egress)) {
		if version, ok := etagVersion(snap.egress[id]); ok {
			gen = max(gen, version)
		} else {
			staleSets = append(staleSets, id)
		}
	}
	for _, id := range staleSets {
		gen++
		snap.egress[id].Etag = resourceEtag(gen, snap.egress[id])
	}
	return snap, gen, nil
}

// etagged is a resource with an etag: a policy or an egress rule set.
type etagged interface {
	proto.Message
	GetEtag() string
}

// resourceEtag is a strong etag for r at version: the version, which the
// store raises on every change, and a hash of everything r holds but its
// etag. The hash lets a loaded etag be checked against its resource; the
// update time in it keeps a resource deleted and made again with the same
// settings from reviving an etag handed out before.
func resourceEtag(version uint64, r etagged) string {
	c := proto.Clone(r)
	m := c.ProtoReflect()
	m.Clear(m.Descriptor().Fields().ByName("etag"))
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(c)
	if err != nil {
		panic("server: internal error: marshalling a resource: " + err.Error())
	}
	h := sha256.New()
	h.Write(binary.BigEndian.AppendUint64(nil, version))
	h.Write(b)
	return strconv.FormatUint(version, 10) + "-" + base64.RawURLEncoding.EncodeToString(h.Sum(nil)[:15])
}

// etagVersion returns the version in p's etag when the etag is one
// resourceEtag made for p as it is now.
func etagVersion(p etagged) (uint64, bool) {
	v, _, ok := strings.Cut(p.GetEtag(), "-")
	if !ok {
		return 0, false
	}
	version, err := strconv.ParseUint(v, 10, 64)
	if err != nil || resourceEtag(version, p) != p.GetEtag() {
		return 0, false
	}
	return version, true
}

// checkPolicyDir makes a missing policy file fail at start rather than at
// the first change when the file could never be written.
func checkPolicyDir(path string) error {
	dir := filepath.Dir(path)
	st, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if !st.IsDir() {
		return fmt.Errorf("%s is not a directory", dir)
	}
	return nil
}

// writePolicyFile replaces the file at path with list so that a crash at
// any point leaves either the old file or the new one, never a mix: the
// contents go to a temporary file in the same directory, are synced, and
// the file is renamed over path; syncing the directory then makes the
// rename itself durable. A temporary file left by a crash is never read.
// renamed reports that path holds the new contents even though err is set.
func writePolicyFile(path string, contents *pooldv1.PolicyFile) (renamed bool, err error) {
	data, err := protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(contents)
	if err != nil {
		return false, err
	}
	data = append(data, '\n')
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return false, err
	}
	tmp := f.Name()
	err = func() error {
		defer f.Close()
		// Keep the mode an operator gave the file. A new one is 0600,
		// as CreateTemp makes it: a proxy URL may hold a password.
		if st, err := os.Stat(path); err == nil {
			if err := f.Chmod(st.Mode().Perm()); err != nil {
				return err
			}
		}
		if _, err := f.Write(data); err != nil {
			return err
		}
		if err := f.Sync(); err != nil {
			return err
		}
		return f.Close()
	}()
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return false, err
	}
	return true, syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
