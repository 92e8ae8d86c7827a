package server

import (
	"context"
	"errors"
)

// Backend is where a PolicyStore keeps its resources: the mechanism under
// the store's policy, as a database/sql driver is under sql.DB. A backend
// holds opaque values under keys, each with the revision of its last
// change, and knows nothing of policies: validation, field masks, merging,
// applying to the engine and mapping errors to gRPC are the store's.
//
// Keys are resource names ("policies/default", "policies/api.example.com",
// "egressRuleSets/billing"). Revisions are positive, rise with every change
// and are the same for every reader of the same backend, so an etag made
// from one means the same on every replica. A backend is safe for
// concurrent use.
type Backend interface {
	// List returns every record and the revision the list was taken at:
	// a Watch from that revision + 1 misses nothing and repeats nothing.
	List(ctx context.Context) ([]Record, int64, error)
	// Get returns the record under key; ok is false when there is none.
	Get(ctx context.Context, key string) (rec Record, ok bool, err error)
	// Put stores value under key if the key's revision is still rev (0:
	// the key must not exist) and returns the new revision. A key changed
	// since fails with ErrConflict and changes nothing.
	Put(ctx context.Context, key string, value []byte, rev int64) (int64, error)
	// Delete removes key if its revision is still rev, as Put does, and
	// returns the revision of the deletion.
	Delete(ctx context.Context, key string, rev int64) (int64, error)
	// Watch starts watching the changes made after rev, which the
	// Watcher delivers in revision order until ctx ends or the watch
	// breaks. A backend no other process writes to returns ErrUnshared:
	// what the store wrote itself is all there is.
	Watch(ctx context.Context, rev int64) (Watcher, error)
	// Close releases the backend's connections. Calls after Close fail.
	Close() error
}

// Watcher is one watch started by Backend.Watch.
type Watcher interface {
	// Next blocks for the next batch of changes. It fails with the
	// watch's context error once that ends, with ErrCompacted when the
	// revision watched from is no longer kept (List again), and with
	// another error when the watch broke. A batch with no events says
	// the watcher is up to date at its revision.
	Next() (WatchBatch, error)
	// Close ends the watch and releases what it holds.
	Close() error
}

// Record is one stored resource.
type Record struct {
	Key   string
	Value []byte
	// Revision is the revision of the key's last change.
	Revision int64
	// Source says where the value was read, for messages about it: the
	// entry of a policy file, the key in etcd. "" means Key.
	Source string
}

// Event is one change a watch saw.
type Event struct {
	Key string
	// Value is the new value; nil when the key was deleted.
	Value []byte
	// Revision is the revision of the change.
	Revision int64
}

// WatchBatch is the changes one watch delivery holds, applied together.
type WatchBatch struct {
	Events []Event
	// Revision is the backend's revision the batch brings the watcher to.
	Revision int64
}

var (
	// ErrConflict reports a Put or Delete whose revision is no longer the
	// key's: someone else changed it first.
	ErrConflict = errors.New("policy store: changed since it was read")
	// ErrCompacted reports a Watch from a revision the backend no longer
	// keeps; the watcher must List again.
	ErrCompacted = errors.New("policy store: revision compacted")
	// ErrStoreUnavailable reports a backend that cannot be reached, or did
	// not answer in time. Whether a write that fails so was made is not
	// known, but a policy change is idempotent and guarded by its etag, so
	// it is safe to send again as it is.
	ErrStoreUnavailable = errors.New("policy store unavailable")
	// ErrUnshared is Watch's answer when no one else writes to the backend.
	ErrUnshared = errors.New("policy store: not shared")
)
