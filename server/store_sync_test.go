package server

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// scriptedBackend is a shared backend whose watches deliver what the test
// sends them, over a memory backend for lists.
type scriptedBackend struct {
	*FileBackend
	lists, watches atomic.Int64
	next           chan scriptedStep
}

type scriptedStep struct {
	batch WatchBatch
	err   error
}

func (b *scriptedBackend) List(ctx context.Context) ([]Record, int64, error) {
	b.lists.Add(1)
	return b.FileBackend.List(ctx)
}

func (b *scriptedBackend) Watch(ctx context.Context, rev int64) (Watcher, error) {
	b.watches.Add(1)
	return &scriptedWatcher{ctx: ctx, next: b.next}, nil
}

type scriptedWatcher struct {
	ctx  context.Context
	next chan scriptedStep
}

func (w *scriptedWatcher) Next() (WatchBatch, error) {
	select {
	case <-w.ctx.Done():
		return WatchBatch{}, w.ctx.Err()
	case s := <-w.next:
		return s.batch, s.err
	}
}

func (w *scriptedWatcher) Close() error { return nil }

func TestABrokenWatchListsAgainAfterABackoffAndBadValuesAreSkipped(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		mem, err := OpenFileBackend("")
		if err != nil {
			t.Fatal(err)
		}
		b := &scriptedBackend{FileBackend: mem, next: make(chan scriptedStep)}
		rec := &policySetRecorder{}
		s, err := NewPolicyStore(b, StoreOptions{Apply: rec.apply, SkipBadValues: true, RetryBackoff: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()

		b.next <- scriptedStep{err: errors.New("connection reset")}
		synctest.Wait()
		if b.lists.Load() != 1 || s.sync.restarts.Load() != 1 {
			t.Fatalf("%d lists and %d restarts right after the watch broke, want 1 and 1: no list before the backoff", b.lists.Load(), s.sync.restarts.Load())
		}
		time.Sleep(time.Second)
		synctest.Wait()
		if b.lists.Load() != 2 || b.watches.Load() != 2 {
			t.Fatalf("%d lists and %d watches after the backoff, want 2 and 2", b.lists.Load(), b.watches.Load())
		}

		b.next <- scriptedStep{batch: WatchBatch{Revision: 7, Events: []Event{
			{Key: "policies/bad.example.com", Value: []byte(`{"name":"policies/bad.example.com","maxRetries":99}`), Revision: 6},
			{Key: "policies/good.example.com", Value: []byte(`{"name":"policies/good.example.com","maxRetries":2}`), Revision: 7},
		}}}
		synctest.Wait()
		if _, err := s.Get("policies/bad.example.com"); err == nil {
			t.Error("a bad watched value is served")
		}
		if _, err := s.Get("policies/good.example.com"); err != nil {
			t.Errorf("the good value of the same batch: %v", err)
		}
		if _, ok := rec.last().Hosts["good.example.com"]; !ok {
			t.Error("the good value did not reach the engine")
		}

		// A compacted watch lists again at once: waiting gains nothing.
		b.next <- scriptedStep{err: ErrCompacted}
		synctest.Wait()
		if b.lists.Load() != 3 {
			t.Errorf("%d lists after a compaction, want a third at once", b.lists.Load())
		}
	})
}
