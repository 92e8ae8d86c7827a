package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	pooldv1 "github.com/poold/poold/gen/poold/v1"
)

var _ Backend = (*FileBackend)(nil)

// FileBackend keeps the resources in memory and, given a path, in a
// policy file: a PolicyFile in protobuf JSON, rewritten whole and
// atomically on every change. It is the backend of one process: nothing
// else writes the file while poold runs, so it has nothing to watch.
//
// Revisions come from one counter; the file keeps each resource's etag,
// which holds its revision and a hash of the resource, so revisions and
// etags survive a restart, and a resource edited by hand (its hash no
// longer matches) gets a new revision above all others.
type FileBackend struct {
	path string // "" keeps the resources in memory only

	mu      sync.Mutex // guards following fields
	records map[string]fileRecord
	gen     int64 // the highest revision handed out
	closed  bool
}

type fileRecord struct {
	value  []byte
	rev    int64
	source string
}

// fileSaveError reports a change that could not be written to the policy
// file; the change was not made.
type fileSaveError struct {
	path       string
	err        error
	restoreErr error // the file may hold the new contents, and restoring the old failed
}

func (e *fileSaveError) Error() string {
	msg := fmt.Sprintf("saving %s: %v", e.path, e.err)
	if e.restoreErr != nil {
		msg += fmt.Sprintf("; restoring the previous file also failed: %v", e.restoreErr)
	}
	return msg
}

func (e *fileSaveError) Unwrap() error { return e.err }

// OpenFileBackend reads the policy file at path ("" = memory only). A
// missing file holds nothing and is created on the first change; its
// directory must exist, so that a file that could never be written fails
// now rather than at the first change. Empty contents, as touch leaves,
// hold nothing. A file that does not parse, or names a resource badly or
// twice, does not open; the values it holds are the store's to judge.
func OpenFileBackend(path string) (*FileBackend, error) {
	b := &FileBackend{path: path, records: map[string]fileRecord{}}
	if path == "" {
		return b, nil
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		err = checkPolicyDir(path)
	}
	if err != nil {
		return nil, err
	}
	records, gen, err := parseFileRecords(data)
	if err != nil {
		return nil, err
	}
	b.records, b.gen = records, gen
	return b, nil
}

// parseFileRecords reads a policy file's contents into records, and
// returns the highest revision among them.
func parseFileRecords(data []byte) (map[string]fileRecord, int64, error) {
	records := map[string]fileRecord{}
	var gen int64
	// A file written before egress rule sets were saved is a
	// ListPoliciesResponse, which reads the same.
	var file pooldv1.PolicyFile
	if len(bytes.TrimSpace(data)) > 0 {
		if err := protojson.Unmarshal(data, &file); err != nil {
			return nil, 0, err
		}
	}
	var problems []string
	type entry struct {
		key string
		msg etagged
	}
	var entries []entry
	add := func(list string, i int, name string, msg etagged, v *fieldViolation) {
		switch {
		case v != nil:
			problems = append(problems, fmt.Sprintf("%s[%d] (%q): name: %s", list, i, name, v.Reason))
		case slices.ContainsFunc(entries, func(e entry) bool { return e.key == name }):
			problems = append(problems, fmt.Sprintf("%s: listed twice", name))
		default:
			entries = append(entries, entry{key: name, msg: msg})
		}
	}
	for i, rs := range file.GetEgressRuleSets() {
		_, v := parseEgressName(rs.GetName(), "name")
		add("egress_rule_sets", i, rs.GetName(), rs, v)
	}
	for i, p := range file.GetPolicies() {
		_, v := parsePolicyName(p.GetName(), "name")
		add("policies", i, p.GetName(), p, v)
	}
	if problems != nil {
		return nil, 0, errors.New(strings.Join(problems, "; "))
	}

	// Keep the saved revisions, unless a resource no longer matches its
	// etag: it gets a new one above all others, in key order so that two
	// loads of the same file agree.
	var stale []string
	for _, e := range entries {
		value, err := encodeResource(e.msg)
		if err != nil {
			return nil, 0, fmt.Errorf("%s: %w", e.key, err)
		}
		rec := fileRecord{value: value, source: e.key}
		// Revision 0 is a resource listed before its first change (a
		// default policy copied from ListPolicies): it keeps its etag.
		if version, ok := etagVersion(e.msg); ok {
			rec.rev = int64(version)
			gen = max(gen, rec.rev)
		} else {
			stale = append(stale, e.key)
		}
		records[e.key] = rec
	}
	slices.SortFunc(stale, compareResourceKeys)
	for _, key := range stale {
		gen++
		rec := records[key]
		rec.rev = gen
		records[key] = rec
	}
	return records, gen, nil
}

// List returns every resource.
func (b *FileBackend) List(context.Context) ([]Record, int64, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, 0, errBackendClosed
	}
	out := make([]Record, 0, len(b.records))
	for _, key := range slices.SortedFunc(maps.Keys(b.records), compareResourceKeys) {
		r := b.records[key]
		out = append(out, Record{Key: key, Value: r.value, Revision: r.rev, Source: r.source})
	}
	return out, b.gen, nil
}

// Get returns one resource.
func (b *FileBackend) Get(_ context.Context, key string) (Record, bool, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return Record{}, false, errBackendClosed
	}
	r, ok := b.records[key]
	return Record{Key: key, Value: r.value, Revision: r.rev, Source: r.source}, ok, nil
}

// Put stores value under key and saves the file before it returns.
func (b *FileBackend) Put(_ context.Context, key string, value []byte, rev int64) (int64, error) {
	return b.change(key, value, rev)
}

// Delete removes key and saves the file before it returns.
func (b *FileBackend) Delete(_ context.Context, key string, rev int64) (int64, error) {
	return b.change(key, nil, rev)
}

// change makes one change (value nil deletes) and saves it; if saving
// fails nothing changes, so that a restart loads what callers were told.
func (b *FileBackend) change(key string, value []byte, rev int64) (int64, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return 0, errBackendClosed
	}
	old, exists := b.records[key]
	if old.rev != rev || (value == nil && !exists) {
		return 0, ErrConflict
	}
	next := maps.Clone(b.records)
	if value == nil {
		delete(next, key)
	} else {
		next[key] = fileRecord{value: value, rev: b.gen + 1, source: key}
	}
	if err := b.saveLocked(b.records, next); err != nil {
		return 0, err
	}
	b.gen++
	b.records = next
	return b.gen, nil
}

// Watch has nothing to watch: only this process writes the file.
func (b *FileBackend) Watch(context.Context, int64) (Watcher, error) { return nil, ErrUnshared }

// Close makes later calls fail; the file is always saved already.
func (b *FileBackend) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	return nil
}

var errBackendClosed = errors.New("policy store: closed")

// saveLocked writes next to the policy file, if there is one. If that
// fails the file is left holding old (restored if the new contents were
// already in place).
func (b *FileBackend) saveLocked(old, next map[string]fileRecord) error {
	if b.path == "" {
		return nil
	}
	contents, err := policyFileOf(next)
	if err != nil {
		return &fileSaveError{path: b.path, err: err}
	}
	renamed, err := writePolicyFile(b.path, contents)
	if err == nil {
		return nil
	}
	serr := &fileSaveError{path: b.path, err: err}
	if renamed {
		// The new file is in place but may not survive a crash.
		if prev, perr := policyFileOf(old); perr != nil {
			serr.restoreErr = perr
		} else if _, werr := writePolicyFile(b.path, prev); werr != nil {
			serr.restoreErr = werr
		}
	}
	return serr
}

// policyFileOf is what the policy file holds for records: the policies,
// the default first, then the rule sets, each with its etag.
func policyFileOf(records map[string]fileRecord) (*pooldv1.PolicyFile, error) {
	f := &pooldv1.PolicyFile{}
	for _, key := range slices.SortedFunc(maps.Keys(records), compareResourceKeys) {
		r := records[key]
		msg, err := decodeResource(key, r.value)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", key, err)
		}
		switch m := msg.(type) {
		case *pooldv1.Policy:
			m.Etag = resourceEtag(uint64(r.rev), m)
			f.Policies = append(f.Policies, m)
		case *pooldv1.EgressRuleSet:
			m.Etag = resourceEtag(uint64(r.rev), m)
			f.EgressRuleSets = append(f.EgressRuleSets, m)
		}
	}
	return f, nil
}

// compareResourceKeys orders keys as List shows the resources: policies
// before rule sets, each kind's default first, then by name.
func compareResourceKeys(a, b string) int {
	rank := func(k string) int {
		switch {
		case k == defaultPolicyName:
			return 0
		case strings.HasPrefix(k, policyNamePrefix):
			return 1
		case k == defaultEgressName:
			return 2
		default:
			return 3
		}
	}
	if ra, rb := rank(a), rank(b); ra != rb {
		return ra - rb
	}
	return strings.Compare(a, b)
}

// encodeResource is the stored form of a resource: protobuf JSON without
// its etag, which the store derives from the revision. JSON, so that an
// operator reading the backend (a policy file, etcdctl get) sees fields by
// name.
func encodeResource(m proto.Message) ([]byte, error) {
	c := proto.Clone(m)
	r := c.ProtoReflect()
	r.Clear(r.Descriptor().Fields().ByName("etag"))
	return protojson.Marshal(c)
}

// decodeResource reads a stored value as the resource its key names.
// Unknown fields are an error: a value written by a newer poold must not
// be half applied.
func decodeResource(key string, value []byte) (etagged, error) {
	var m etagged
	switch {
	case strings.HasPrefix(key, policyNamePrefix):
		m = &pooldv1.Policy{}
	case strings.HasPrefix(key, egressNamePrefix):
		m = &pooldv1.EgressRuleSet{}
	default:
		return nil, fmt.Errorf("not a policy or an egress rule set")
	}
	if err := protojson.Unmarshal(value, m); err != nil {
		return nil, err
	}
	return m, nil
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

// writePolicyFile replaces the file at path with contents so that a crash
// at any point leaves either the old file or the new one, never a mix: the
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
