package server

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	pooldv1 "github.com/poold/poold/gen/poold/v1"
	"github.com/poold/poold/pool"
)

// syncState is what the store knows of how current it is.
type syncState struct {
	now     func() time.Time
	backoff time.Duration
	stop    context.CancelFunc
	done    chan struct{} // closed when the sync loop has ended
	ready   chan struct{} // closed after the first full list

	local     atomic.Bool  // no one else writes the backend: always current
	loaded    atomic.Bool  // a full list has been applied
	syncedAt  atomic.Int64 // unix nanoseconds the backend last said we were current
	rev       atomic.Int64 // the highest revision applied
	restarts  atomic.Uint64
	readyOnce sync.Once
}

func (st *syncState) init(backoff time.Duration) {
	// Real time, not the store's clock for update_time: staleness is
	// measured, and testing/synctest stands in for it in tests.
	st.now = time.Now
	st.backoff = backoff
	if st.backoff <= 0 {
		st.backoff = 100 * time.Millisecond
	}
	st.done = make(chan struct{})
	st.ready = make(chan struct{})
}

// unshared marks a backend that needs no watching; the loop never runs.
func (st *syncState) unshared() {
	st.local.Store(true)
	close(st.done)
}

func (st *syncState) isShared() bool { return !st.local.Load() }

// synced records that the backend said the store is current at rev.
func (st *syncState) synced(rev int64, full bool) {
	st.syncedAt.Store(st.now().UnixNano())
	st.applied(rev)
	if full {
		st.loaded.Store(true)
		st.readyOnce.Do(func() { close(st.ready) })
	}
}

func (st *syncState) applied(rev int64) {
	for {
		cur := st.rev.Load()
		if rev <= cur || st.rev.CompareAndSwap(cur, rev) {
			return
		}
	}
}

// writableLocked refuses changes before the first full list: a change
// merged into the built-in defaults could undo what the backend holds.
func (st *syncState) writableLocked() error {
	if st.loaded.Load() {
		return nil
	}
	return policyStatus(codes.Unavailable, ReasonPolicyStoreUnavailable, "",
		"the policies have not been loaded from the policy store yet; nothing was changed: retry")
}

// Ready is closed once the store has loaded what the backend holds; until
// then it serves the built-in defaults and refuses changes.
func (s *PolicyStore) Ready() <-chan struct{} { return s.sync.ready }

// Staleness says how long ago the backend last told the store it was
// current: 0 for a backend only this process writes; ok is false when
// the store has never loaded.
func (s *PolicyStore) Staleness() (d time.Duration, ok bool) {
	if s.sync.local.Load() {
		return 0, true
	}
	if !s.sync.loaded.Load() {
		return 0, false
	}
	return max(0, s.sync.now().Sub(time.Unix(0, s.sync.syncedAt.Load()))), true
}

// Shared reports whether other processes write the backend, so that what
// this store serves may lag behind it.
func (s *PolicyStore) Shared() bool { return s.sync.isShared() }

// storedValueError reports stored values that fail validation, each named
// with its key and field.
type storedValueError struct{ problems []string }

func (e *storedValueError) Error() string { return strings.Join(e.problems, "; ") }

// listLocked replaces the store's contents with what the backend holds
// and applies them at once. With strict, a bad stored value fails it and
// changes nothing; otherwise bad values are logged and left out. It is
// called with mu held but lets go of it while the backend answers, so
// that a slow list does not hold up a change, which fails fast instead.
func (s *PolicyStore) listLocked(ctx context.Context, strict bool, timeout time.Duration) error {
	s.mu.Unlock()
	lctx, cancel := context.WithTimeout(ctx, timeout)
	records, rev, err := s.backend.List(lctx)
	cancel()
	s.mu.Lock()
	if err != nil {
		return err
	}
	// A change this store made while the list was read may be newer
	// than the list: it stays, and so does a deletion.
	cur := s.cur.Load()
	records = slices.DeleteFunc(records, func(r Record) bool {
		return r.Revision < max(cur.revs[r.Key], s.tombstones[r.Key])
	})
	next := emptySnapshot()
	if s.flagsEgress != nil {
		next.egress[defaultEgressID] = s.flagsEgress
	}
	var problems []string
	for _, r := range records {
		if p := putRecord(next, r); p != nil {
			problems = append(problems, p...)
		}
	}
	for key, r := range cur.revs {
		if r <= rev || slices.ContainsFunc(records, func(rec Record) bool { return rec.Key == key }) {
			continue
		}
		keepRecord(next, cur, key)
	}
	if problems != nil {
		if strict {
			return &storedValueError{problems: problems}
		}
		for _, p := range problems {
			s.logger.Error("policy store: a stored value is invalid; it is left out", "problem", p)
		}
	}
	if err := s.applyLocked(next, true, true); err != nil {
		return fmt.Errorf("applying the policies: %w", err)
	}
	for key, r := range s.tombstones {
		if r <= rev {
			delete(s.tombstones, key)
		}
	}
	s.watchRev = rev
	s.cur.Store(next)
	s.sync.synced(rev, true)
	return nil
}

// keepRecord copies the resource under key from cur into next, as it is.
func keepRecord(next, cur *policySnapshot, key string) {
	next.revs[key] = cur.revs[key]
	if id, ok := strings.CutPrefix(key, egressNamePrefix); ok {
		next.egress[id] = cur.egress[id]
		return
	}
	host, _ := parsePolicyName(key, "name")
	next.policies[host] = cur.policies[host]
	pp := cur.set.Default
	if host != "" {
		pp = cur.set.Hosts[host]
	}
	next.putPolicy(host, pp)
}

// applyBatchLocked applies the changes a watch delivered, at once. A
// change already known (this store's own write, or one it fetched) is
// skipped; a value that fails validation is logged naming its key and
// field and skipped, and the rest still applies.
func (s *PolicyStore) applyBatchLocked(b WatchBatch) {
	old := s.cur.Load()
	next := old.clone()
	var policies, egress, changed bool
	for _, ev := range b.Events {
		if ev.Revision <= max(old.revs[ev.Key], next.revs[ev.Key], s.tombstones[ev.Key]) {
			continue
		}
		var problems []string
		if ev.Value == nil {
			s.removeRecord(next, ev.Key)
			s.tombstones[ev.Key] = ev.Revision
		} else {
			problems = putRecord(next, Record{Key: ev.Key, Value: ev.Value, Revision: ev.Revision})
		}
		for _, p := range problems {
			s.logger.Error("policy store: a changed value is invalid; it is skipped", "key", ev.Key, "revision", ev.Revision, "problem", p)
		}
		if problems != nil {
			continue
		}
		changed = true
		if strings.HasPrefix(ev.Key, egressNamePrefix) {
			egress = true
		} else {
			policies = true
		}
	}
	// Deletions the watch has passed can no longer be undone by a late
	// event.
	for key, rev := range s.tombstones {
		if rev <= b.Revision {
			delete(s.tombstones, key)
		}
	}
	s.watchRev = max(s.watchRev, b.Revision)
	if changed {
		if err := s.applyLocked(next, policies, egress); err != nil {
			s.logger.Error("policy store: the engine refused watched changes", "revision", b.Revision, "err", err)
			s.sync.synced(b.Revision, false)
			return
		}
		s.cur.Store(next)
	}
	s.sync.synced(b.Revision, false)
}

// refreshLocked reads key from the backend and applies it as a watched
// change, for a caller that saw something newer than the store has.
func (s *PolicyStore) refreshLocked(ctx context.Context, key string) error {
	if !s.sync.isShared() {
		return nil
	}
	rctx, cancel := context.WithTimeout(ctx, s.writeTimeout)
	defer cancel()
	rec, ok, err := s.backend.Get(rctx, key)
	if err != nil {
		return err
	}
	cur := s.cur.Load()
	ev := Event{Key: key, Value: rec.Value, Revision: rec.Revision}
	if !ok {
		rev, had := cur.revs[key]
		if !had {
			return nil
		}
		// Deleted elsewhere at a revision the read does not tell; just
		// above ours is enough to drop it, and the watch's own event
		// for the deletion comes later and changes nothing.
		ev = Event{Key: key, Revision: rev + 1}
	}
	s.applyBatchLocked(WatchBatch{Events: []Event{ev}, Revision: s.watchRev})
	return nil
}

// parsePolicyFile reads a policy file's contents into a snapshot, as a
// store over it opens, and returns the highest revision in it. Errors name
// the policy and the field at fault, all of them at once, so that one edit
// fixes the file.
func parsePolicyFile(data []byte) (*policySnapshot, uint64, error) {
	records, gen, err := parseFileRecords(data)
	if err != nil {
		return nil, 0, err
	}
	snap := emptySnapshot()
	var problems []string
	for _, key := range slices.SortedFunc(maps.Keys(records), compareResourceKeys) {
		r := records[key]
		problems = append(problems, putRecord(snap, Record{Key: key, Value: r.value, Revision: r.rev, Source: r.source})...)
	}
	if problems != nil {
		return nil, 0, &storedValueError{problems: problems}
	}
	return snap, uint64(gen), nil
}

// putRecord validates a stored record and, if it is good, puts it into
// next. Problems name the record and the field at fault.
func putRecord(next *policySnapshot, r Record) []string {
	where := r.Source
	if where == "" {
		where = r.Key
	}
	msg, err := decodeResource(r.Key, r.Value)
	if err != nil {
		return []string{fmt.Sprintf("%s: %v", where, err)}
	}
	switch m := msg.(type) {
	case *pooldv1.Policy:
		return putPolicyRecord(next, r, where, m)
	case *pooldv1.EgressRuleSet:
		return putEgressRecord(next, r, where, m)
	}
	return []string{where + ": not a policy or an egress rule set"}
}

func putPolicyRecord(next *policySnapshot, r Record, where string, p *pooldv1.Policy) []string {
	host, v := parsePolicyName(r.Key, "name")
	if v != nil {
		return []string{fmt.Sprintf("%s: name: %s", where, v.Reason)}
	}
	var problems []string
	if p.GetName() != r.Key {
		problems = append(problems, fmt.Sprintf("%s: name: %q does not match the key", where, p.GetName()))
	}
	pp, violations := toPoolPolicy(p)
	for _, v := range violations {
		problems = append(problems, fmt.Sprintf("%s: %s: %s", r.Key, strings.TrimPrefix(v.Field, "policy."), v.Reason))
	}
	if t := p.GetUpdateTime(); t != nil && t.CheckValid() != nil {
		problems = append(problems, fmt.Sprintf("%s: update_time: not a valid timestamp", r.Key))
	}
	if problems != nil {
		return problems
	}
	// Each policy is checked on its own: PolicySet.Validate judges every
	// policy by itself, so one bad policy leaves the others standing.
	alone := pool.PolicySet{Default: pp}
	if host != "" {
		alone = pool.PolicySet{Hosts: map[string]pool.Policy{host: pp}}
	}
	if err := alone.Validate(); err != nil {
		// PolicyError reads "policies/{host}: field: reason".
		if joined, ok := err.(interface{ Unwrap() []error }); ok {
			for _, e := range joined.Unwrap() {
				problems = append(problems, e.Error())
			}
		} else {
			problems = append(problems, err.Error())
		}
		return problems
	}
	next.putPolicy(host, pp)
	stored := fromPoolPolicy(r.Key, pp)
	stored.UpdateTime = p.GetUpdateTime()
	stored.Etag = resourceEtag(uint64(r.Revision), stored)
	next.policies[host] = stored
	next.revs[r.Key] = r.Revision
	return nil
}

func putEgressRecord(next *policySnapshot, r Record, where string, rs *pooldv1.EgressRuleSet) []string {
	id, v := parseEgressName(r.Key, "name")
	if v != nil {
		return []string{fmt.Sprintf("%s: name: %s", where, v.Reason)}
	}
	var problems []string
	if rs.GetName() != r.Key {
		problems = append(problems, fmt.Sprintf("%s: name: %q does not match the key", where, rs.GetName()))
	}
	if t := rs.GetUpdateTime(); t != nil && t.CheckValid() != nil {
		problems = append(problems, fmt.Sprintf("%s: update_time: not a valid timestamp", r.Key))
	}
	for _, v := range egressViolations(id, rs, next.egress, "") {
		problems = append(problems, fmt.Sprintf("%s: %s: %s", r.Key, v.Field, v.Reason))
	}
	if problems != nil {
		return problems
	}
	stored := proto.CloneOf(rs)
	stored.Etag = resourceEtag(uint64(r.Revision), stored)
	next.egress[id] = stored
	next.revs[r.Key] = r.Revision
	return nil
}

// removeRecord takes a deleted key out of next. A deleted default falls
// back to what it is when nothing is stored: the built-in policy, the
// flags' rule set.
func (s *PolicyStore) removeRecord(next *policySnapshot, key string) {
	delete(next.revs, key)
	if id, ok := strings.CutPrefix(key, egressNamePrefix); ok {
		delete(next.egress, id)
		if id == defaultEgressID && s.flagsEgress != nil {
			next.egress[id] = s.flagsEgress
		}
		return
	}
	host, v := parsePolicyName(key, "name")
	if v != nil {
		return
	}
	if host == "" {
		next.set.Default = pool.Policy{}
		next.policies[""] = emptySnapshot().policies[""]
		return
	}
	delete(next.set.Hosts, host)
	delete(next.policies, host)
}

// listTimeout bounds a list in the background; a large prefix may take
// longer than one write.
const listTimeout = 5 * time.Second

// syncLoop keeps the store current with a shared backend until Close: it
// applies what the watch delivers; when the watch breaks it waits (with
// backoff, unless the revision was compacted, where waiting gains
// nothing), lists again and watches from there. w is the first watch, or
// nil with why when there is none yet.
func (s *PolicyStore) syncLoop(ctx context.Context, w Watcher, why error) {
	defer close(s.sync.done)
	defer func() {
		if w != nil {
			w.Close()
		}
	}()
	wait := s.sync.backoff
	for {
		if w == nil {
			if !errors.Is(why, ErrCompacted) {
				t := time.NewTimer(wait)
				select {
				case <-ctx.Done():
					t.Stop()
					return
				case <-t.C:
				}
				wait = min(2*wait, 30*s.sync.backoff)
			}
			s.mu.Lock()
			err := s.listLocked(ctx, false, listTimeout)
			rev := s.watchRev
			s.mu.Unlock()
			if ctx.Err() != nil {
				return
			}
			if err != nil {
				s.logger.Warn("policy store: listing failed; keeping the last policies", "err", err)
				why = err
				continue
			}
			if w, why = s.backend.Watch(ctx, rev+1); why != nil {
				s.logger.Warn("policy store: watching failed; keeping the last policies", "err", why)
				w = nil
				continue
			}
		}
		b, err := w.Next()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			s.sync.restarts.Add(1)
			s.logger.Warn("policy store: the watch broke; listing again", "err", err)
			w.Close()
			w, why = nil, err
			continue
		}
		wait = s.sync.backoff
		s.mu.Lock()
		s.applyBatchLocked(b)
		s.mu.Unlock()
	}
}
