package server

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	pooldv1 "github.com/poold/poold/gen/poold/v1"
	"github.com/poold/poold/pool"
)

// PolicyStore holds the policies PolicyService serves and the egress rule
// sets EgressService serves, each with its etag and update time. It is the
// policy over a Backend's mechanism: every change is validated, handed to
// the engine and written to the backend before it is acknowledged, and
// when any step fails nothing changes, so what callers read, what the
// engine runs and what the backend holds agree. Over a shared backend
// (etcd) it also watches the changes other replicas make and applies them
// through the same path.
type PolicyStore struct {
	backend      Backend
	apply        func(pool.PolicySet) error // hands a new set to the engine
	now          func() time.Time
	logger       *slog.Logger
	skipBad      bool
	writeTimeout time.Duration

	// mu serializes changes, the store's own and those it watches. It is
	// held from reading the current snapshot until the next one is
	// applied and published, so that the engine sees changes in the
	// order callers do.
	mu sync.Mutex
	// applyEgress hands the egress rule sets to whoever enforces them;
	// nil until UseEgress. Guarded by mu.
	applyEgress func([]*pooldv1.EgressRuleSet) error
	// flagsEgress is the default rule set the daemon's flags make, in
	// force while none is stored; nil until UseEgress. Guarded by mu.
	flagsEgress *pooldv1.EgressRuleSet
	// tombstones holds the revision of each key deleted since the last
	// list, so that an older change the watch still delivers cannot bring
	// it back. Guarded by mu.
	tombstones map[string]int64
	// watchRev is the revision the last list or watch batch brought the
	// store to: a watch resumes after it. Guarded by mu.
	watchRev int64

	// cur is the latest committed snapshot. Readers load it without mu and
	// so never wait behind a write.
	cur atomic.Pointer[policySnapshot]

	sync syncState
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
	// revs holds the revision of every stored resource by key (its name);
	// a resource not stored (the default policy or rule set before their
	// first change) has none, and writing it creates it.
	revs map[string]int64
}

// putPolicy sets host's policy ("" for the default) in snap's set.
func (snap *policySnapshot) putPolicy(host string, pp pool.Policy) {
	if host == "" {
		snap.set.Default = pp
		return
	}
	if snap.set.Hosts == nil {
		snap.set.Hosts = map[string]pool.Policy{}
	}
	snap.set.Hosts[host] = pp
}

// clone returns a copy of snap that can be changed into the next one; the
// resources are shared, as they are never changed in place.
func (snap *policySnapshot) clone() *policySnapshot {
	next := *snap
	next.set = snap.set.Clone()
	next.policies = maps.Clone(snap.policies)
	next.egress = maps.Clone(snap.egress)
	next.revs = maps.Clone(snap.revs)
	if next.egress == nil {
		next.egress = map[string]*pooldv1.EgressRuleSet{}
	}
	if next.revs == nil {
		next.revs = map[string]int64{}
	}
	return &next
}

// emptySnapshot is a store holding nothing: the built-in defaults.
func emptySnapshot() *policySnapshot {
	def := &pooldv1.Policy{Name: defaultPolicyName}
	def.Etag = resourceEtag(0, def)
	return &policySnapshot{
		policies: map[string]*pooldv1.Policy{"": def},
		egress:   map[string]*pooldv1.EgressRuleSet{},
		revs:     map[string]int64{},
	}
}

// StoreOptions configure NewPolicyStore.
type StoreOptions struct {
	// Apply hands each new set of policies to the engine; nil applies
	// nowhere, for a store used on its own.
	Apply func(pool.PolicySet) error
	// Now stamps update_time; nil means time.Now.
	Now func() time.Time
	// Logger gets the changes watched and the stored values skipped; nil
	// discards.
	Logger *slog.Logger
	// SkipBadValues logs a stored value that fails validation, naming its
	// key and field, and leaves it out, instead of refusing to open. A
	// store shared by replicas sets it: one bad key must not keep every
	// replica from starting, and the rest of the policies still apply.
	SkipBadValues bool
	// RetryLoad opens the store on the built-in defaults when the first
	// list fails, and keeps listing in the background until one succeeds
	// (Ready is closed then; writes fail until it is). Without it a failed
	// first list fails the open.
	RetryLoad bool
	// WriteTimeout bounds one write to the backend, so that a backend
	// that does not answer fails a change quickly rather than holding up
	// every change behind it. 0 means 2s.
	WriteTimeout time.Duration
	// RetryBackoff is the first wait before listing or watching again
	// after a failure; it doubles up to 30 times that. 0 means 100ms.
	RetryBackoff time.Duration
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
// fields included, or the store does not open. now stamps update_time; nil
// means time.Now. apply nil applies nowhere, for a store used on its own.
func OpenPolicyStore(path string, apply func(pool.PolicySet) error, now func() time.Time) (*PolicyStore, error) {
	b, err := OpenFileBackend(path)
	if err != nil {
		return nil, fmt.Errorf("policy file %s: %w", path, err)
	}
	s, err := NewPolicyStore(b, StoreOptions{Apply: apply, Now: now})
	if err != nil {
		return nil, fmt.Errorf("policy file %s: %w", path, err)
	}
	return s, nil
}

// NewPolicyStore opens a store over backend: it lists what the backend
// holds, applies it, and over a shared backend starts watching for the
// changes others make. Close ends the watch and closes the backend.
func NewPolicyStore(backend Backend, opts StoreOptions) (*PolicyStore, error) {
	s := &PolicyStore{
		backend:      backend,
		apply:        opts.Apply,
		now:          opts.Now,
		logger:       opts.Logger,
		skipBad:      opts.SkipBadValues,
		writeTimeout: opts.WriteTimeout,
		tombstones:   map[string]int64{},
	}
	if s.apply == nil {
		s.apply = func(pool.PolicySet) error { return nil }
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.logger == nil {
		s.logger = slog.New(slog.DiscardHandler)
	}
	if s.writeTimeout == 0 {
		s.writeTimeout = 2 * time.Second
	}
	s.sync.init(opts.RetryBackoff)
	s.cur.Store(emptySnapshot())

	ctx, cancel := context.WithCancel(context.Background())
	s.sync.stop = cancel
	s.mu.Lock()
	// A store that may open without its backend should not hold the
	// daemon's start up for long; one that must list waits longer.
	timeout := listTimeout
	if opts.RetryLoad {
		timeout = s.writeTimeout
	}
	err := s.listLocked(ctx, !s.skipBad, timeout)
	s.mu.Unlock()
	var perr *storedValueError
	switch {
	case errors.As(err, &perr), err != nil && !opts.RetryLoad:
		cancel()
		return nil, err
	case err != nil:
		s.logger.Warn("policy store: listing failed; serving the built-in defaults until it succeeds", "err", err)
	}
	if err == nil {
		w, werr := s.backend.Watch(ctx, s.watchRev+1)
		if errors.Is(werr, ErrUnshared) {
			cancel()
			s.sync.unshared()
			return s, nil
		}
		go s.syncLoop(ctx, w, werr)
		return s, nil
	}
	go s.syncLoop(ctx, nil, err)
	return s, nil
}

// Close stops watching the backend and closes it.
func (s *PolicyStore) Close() error {
	s.sync.stop()
	<-s.sync.done
	return s.backend.Close()
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
	if err := s.sync.writableLocked(); err != nil {
		return nil, err
	}
	key := policyName(host)
	for attempt := 0; ; attempt++ {
		old := s.cur.Load()
		cur, exists := old.policies[host]
		if !exists && attempt == 0 && s.sync.isShared() {
			// It may have been made on another replica since we heard.
			if err := s.refreshLocked(ctx, key); err != nil {
				return nil, s.storeStatus(err)
			}
			if _, exists = s.cur.Load().policies[host]; exists {
				continue
			}
		}
		if !exists && !allowMissing {
			return nil, notFound(p.GetName())
		}
		if !exists {
			cur = &pooldv1.Policy{Name: p.GetName()}
		}
		// AIP-154: a stale etag, or one sent for a policy that does not
		// exist yet, means the caller's view is out of date. One newer
		// than ours was read from another replica: learn what it saw.
		if p.GetEtag() != "" && p.GetEtag() != cur.GetEtag() {
			if attempt == 0 && etagRevision(p.GetEtag()) > old.revs[key] {
				if err := s.refreshLocked(ctx, key); err != nil {
					return nil, s.storeStatus(err)
				}
				continue
			}
			return nil, etagMismatch(p.GetName())
		}

		pp, violations := toPoolPolicy(m.apply(cur, p))
		if violations != nil {
			return nil, invalidArgument(violations...)
		}
		next := old.clone()
		next.putPolicy(host, pp)
		if err := next.set.Validate(); err != nil {
			return nil, invalidArgument(policyViolations(err)...)
		}
		stored := fromPoolPolicy(p.GetName(), pp)
		stored.UpdateTime = timestamppb.New(s.now())
		next.policies[host] = stored
		rev, retry, err := s.commitLocked(ctx, old, next, key, p.GetName(), stored, p.GetEtag() == "", attempt)
		if err != nil {
			return nil, err
		}
		if retry {
			continue
		}
		stored.Etag = resourceEtag(uint64(rev), stored)
		next.revs[key] = rev
		s.publishLocked(next, rev)
		return shown(host, stored), nil
	}
}

// maxBlindRetries bounds how often an update without an etag is merged
// again into what another replica wrote meanwhile.
const maxBlindRetries = 10

// Delete removes a host policy; its hosts fall back to the next most
// specific policy. A non-empty etag must match the current one. Errors are
// gRPC statuses.
func (s *PolicyStore) Delete(ctx context.Context, name, etag string) error {
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
	if err := s.sync.writableLocked(); err != nil {
		return err
	}
	return s.deleteLocked(ctx, name, etag, policyName(host),
		func(snap *policySnapshot) (etagged, bool) {
			p, ok := snap.policies[host]
			return p, ok
		},
		func(next *policySnapshot) {
			delete(next.set.Hosts, host)
			delete(next.policies, host)
		})
}

// deleteLocked removes the resource stored at key, which find looks up in
// a snapshot and drop takes out of the next one, if etag ("" for any)
// matches. A resource missing, or an etag newer than this replica has
// heard of, is looked up in the store once before the answer is given:
// it may have been made or changed on another replica.
func (s *PolicyStore) deleteLocked(ctx context.Context, name, etag, key string,
	find func(*policySnapshot) (etagged, bool), drop func(*policySnapshot)) error {
	for attempt := 0; ; attempt++ {
		old := s.cur.Load()
		cur, ok := find(old)
		stale := etag != "" && (!ok || etag != cur.GetEtag())
		if (!ok || stale) && attempt == 0 && (etag == "" || etagRevision(etag) > old.revs[key]) {
			if err := s.refreshLocked(ctx, key); err != nil {
				return s.storeStatus(err)
			}
			continue
		}
		if !ok {
			return notFound(name)
		}
		if stale {
			return etagMismatch(name)
		}
		next := old.clone()
		drop(next)
		delete(next.revs, key)
		rev, retry, err := s.commitLocked(ctx, old, next, key, name, nil, etag == "", attempt)
		if err != nil {
			return err
		}
		if retry {
			continue
		}
		s.tombstones[key] = rev
		s.publishLocked(next, rev)
		return nil
	}
}

// commitLocked writes one change, value (nil deletes key), with
// writeLocked and settles a conflict: a blind change (the caller sent no
// etag) that lost to another replica's write says retry, after reading
// what that replica wrote, at most maxBlindRetries times; any other is
// ETAG_MISMATCH naming name. Its errors are gRPC statuses.
func (s *PolicyStore) commitLocked(ctx context.Context, old, next *policySnapshot, key, name string, value etagged, blind bool, attempt int) (rev int64, retry bool, err error) {
	rev, err = s.writeLocked(ctx, old, next, key, value)
	switch {
	case errors.Is(err, ErrConflict) && blind && attempt < maxBlindRetries:
		// No etag: the caller asked for its change whatever the rest
		// holds now, so learn what another replica wrote and make the
		// change again on top of it.
		if err := s.refreshLocked(ctx, key); err != nil {
			return 0, false, s.storeStatus(err)
		}
		return 0, true, nil
	case errors.Is(err, ErrConflict):
		return 0, false, etagMismatch(name)
	}
	return rev, false, err
}

// writeLocked writes one change, value (nil deletes key) at the key's
// revision in old, and returns its new revision; next is the snapshot it makes.
// The engine gets next first, since it may still refuse (then nothing is
// written), and gets old back if the write fails, so that the engine never
// runs what the backend does not hold for longer than the write takes.
// ErrConflict is returned as is, for the caller to decide; other errors
// are gRPC statuses.
func (s *PolicyStore) writeLocked(ctx context.Context, old, next *policySnapshot, key string, value etagged) (int64, error) {
	rev := old.revs[key]
	egress := strings.HasPrefix(key, egressNamePrefix)
	if err := s.applyLocked(next, !egress, egress); err != nil {
		return 0, applyStatus(err)
	}
	wctx, cancel := context.WithTimeout(ctx, s.writeTimeout)
	defer cancel()
	var newRev int64
	var err error
	if value == nil {
		newRev, err = s.backend.Delete(wctx, key, rev)
	} else {
		var data []byte
		if data, err = encodeResource(value); err == nil {
			newRev, err = s.backend.Put(wctx, key, data, rev)
		}
	}
	if err != nil {
		if rerr := s.applyLocked(old, !egress, egress); rerr != nil {
			s.logger.Error("policy store: restoring the previous policies after a failed write", "key", key, "err", rerr)
		}
		if errors.Is(err, ErrConflict) {
			return 0, err
		}
		return 0, s.storeStatus(err)
	}
	return newRev, nil
}

// applyLocked hands snap's policies and rule sets to the engine, as asked.
func (s *PolicyStore) applyLocked(snap *policySnapshot, policies, egress bool) error {
	if policies {
		if err := s.apply(snap.set); err != nil {
			return err
		}
	}
	if egress && s.applyEgress != nil {
		if err := s.applyEgress(snap.egressList()); err != nil {
			return err
		}
	}
	return nil
}

// publishLocked makes next current; rev is the revision it holds.
func (s *PolicyStore) publishLocked(next *policySnapshot, rev int64) {
	s.cur.Store(next)
	s.sync.applied(rev)
}

// storeStatus maps a backend's failure. The caller hears that the store
// could not be reached, or that a file could not be written; the log
// gets the detail, which may name internal addresses.
func (s *PolicyStore) storeStatus(err error) error {
	var serr *fileSaveError
	switch {
	case errors.As(err, &serr):
		return policyStatus(codes.Internal, ReasonPolicyNotSaved, "", "not changed: "+serr.Error())
	case errors.Is(err, ErrStoreUnavailable):
		s.logger.Warn("policy store unavailable", "err", err)
		return policyStatus(codes.Unavailable, ReasonPolicyStoreUnavailable, "",
			"the policy store cannot be reached; the change may not have been made: retry it as it is, or read again")
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return status.FromContextError(err).Err()
	}
	s.logger.Error("policy store failed", "err", err)
	return policyStatus(codes.Internal, ReasonPolicyNotSaved, "", "the policy store failed; nothing was changed")
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

// etagRevision is the revision an etag was made at, as far as it tells;
// 0 for one that is not poold's.
func etagRevision(etag string) int64 {
	v, _, _ := strings.Cut(etag, "-")
	rev, err := strconv.ParseInt(v, 10, 64)
	if err != nil || rev < 0 {
		return 0
	}
	return rev
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
