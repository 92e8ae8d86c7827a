package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
)

var _ Backend = (*EtcdBackend)(nil)

// EtcdConfig says how to reach the etcd cluster that replicas share.
type EtcdConfig struct {
	// Endpoints are the members' client addresses, host:port.
	Endpoints []string
	// Prefix is the key prefix everything is kept under, e.g. "/poold":
	// "/poold/policies/default", "/poold/egressRuleSets/billing".
	Prefix string
	// CAFile, CertFile and KeyFile turn on TLS: the CA etcd's certificate
	// chains to, and a client certificate for etcd's client auth.
	CAFile, CertFile, KeyFile string
	// Username and Password log in to etcd's own auth.
	Username, Password string
	// ProgressInterval is how often a watch asks etcd to say it is up to
	// date, which bounds how stale a quiet replica believes it is. 0
	// means 500ms.
	ProgressInterval time.Duration
}

// EtcdBackend keeps each resource under its own key, Prefix/NAME, with
// its protobuf JSON as the value. A key's mod_revision is its revision,
// so an etag means the same on every replica, and a write is a
// transaction comparing it, so that of two replicas writing with the same
// etag exactly one wins.
type EtcdBackend struct {
	client   *clientv3.Client
	prefix   string // ends in "/"
	progress time.Duration
}

// OpenEtcdBackend connects to etcd. It does not wait for a connection: a
// cluster that is down now fails the calls that need it, quickly, and
// the client reconnects on its own.
func OpenEtcdBackend(cfg EtcdConfig) (*EtcdBackend, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("no etcd endpoints")
	}
	prefix := strings.TrimSuffix(cfg.Prefix, "/")
	if prefix == "" {
		return nil, errors.New("no key prefix: name one, e.g. /poold")
	}
	var tlsConfig *tls.Config
	if cfg.CAFile != "" || cfg.CertFile != "" {
		tlsConfig = &tls.Config{MinVersion: tls.VersionTLS12}
		if cfg.CAFile != "" {
			pem, err := os.ReadFile(cfg.CAFile)
			if err != nil {
				return nil, fmt.Errorf("etcd CA: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("etcd CA %s: no PEM certificate", cfg.CAFile)
			}
			tlsConfig.RootCAs = pool
		}
		if cfg.CertFile != "" {
			cert, err := tls.LoadX509KeyPair(cfg.CertFile, cfg.KeyFile)
			if err != nil {
				return nil, fmt.Errorf("etcd client certificate: %w", err)
			}
			tlsConfig.Certificates = []tls.Certificate{cert}
		}
	}
	client, err := clientv3.New(clientv3.Config{
		Endpoints: cfg.Endpoints,
		TLS:       tlsConfig,
		Username:  cfg.Username,
		Password:  cfg.Password,
		// Keep-alive pings find a member that died without closing its
		// connections within seconds, so the client moves to another.
		DialKeepAliveTime:    2 * time.Second,
		DialKeepAliveTimeout: 2 * time.Second,
		DialTimeout:          2 * time.Second,
		DialOptions: []grpc.DialOption{
			grpc.WithKeepaliveParams(keepalive.ClientParameters{
				Time: 2 * time.Second, Timeout: 2 * time.Second, PermitWithoutStream: true,
			}),
			// gRPC's default reconnect backoff grows to two minutes, so a
			// member back after an outage of some seconds could wait
			// that long to be dialed again, and the store to be current.
			grpc.WithConnectParams(grpc.ConnectParams{
				Backoff:           etcdReconnectBackoff,
				MinConnectTimeout: 2 * time.Second,
			}),
		},
		// The client's own log would go around poold's; the store logs
		// what matters.
		Logger: zap.NewNop(),
	})
	if err != nil {
		return nil, err
	}
	progress := cfg.ProgressInterval
	if progress <= 0 {
		progress = 500 * time.Millisecond
	}
	return &EtcdBackend{client: client, prefix: prefix + "/", progress: progress}, nil
}

// List reads every key under the prefix in one linearizable read.
func (b *EtcdBackend) List(ctx context.Context) ([]Record, int64, error) {
	resp, err := b.client.Get(ctx, b.prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, 0, etcdError(err)
	}
	out := make([]Record, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		out = append(out, b.record(kv))
	}
	return out, resp.Header.Revision, nil
}

// Get reads one key.
func (b *EtcdBackend) Get(ctx context.Context, key string) (Record, bool, error) {
	resp, err := b.client.Get(ctx, b.prefix+key)
	if err != nil {
		return Record{}, false, etcdError(err)
	}
	if len(resp.Kvs) == 0 {
		return Record{}, false, nil
	}
	return b.record(resp.Kvs[0]), true, nil
}

func (b *EtcdBackend) record(kv *mvccpb.KeyValue) Record {
	return Record{
		Key:      strings.TrimPrefix(string(kv.Key), b.prefix),
		Value:    kv.Value,
		Revision: kv.ModRevision,
		Source:   string(kv.Key),
	}
}

// Put writes value if the key's mod_revision is still rev; rev 0 creates.
func (b *EtcdBackend) Put(ctx context.Context, key string, value []byte, rev int64) (int64, error) {
	return b.txn(ctx, key, rev, clientv3.OpPut(b.prefix+key, string(value)))
}

// Delete removes the key if its mod_revision is still rev.
func (b *EtcdBackend) Delete(ctx context.Context, key string, rev int64) (int64, error) {
	return b.txn(ctx, key, rev, clientv3.OpDelete(b.prefix+key))
}

func (b *EtcdBackend) txn(ctx context.Context, key string, rev int64, op clientv3.Op) (int64, error) {
	if err := b.connected(); err != nil {
		return 0, err
	}
	cmp := clientv3.Compare(clientv3.ModRevision(b.prefix+key), "=", rev)
	if rev == 0 {
		cmp = clientv3.Compare(clientv3.CreateRevision(b.prefix+key), "=", 0)
	}
	// A member lost, or a leader being elected, is over within the
	// caller's time, so a write that fails so is tried again meanwhile.
	// Each try gets a part of the time only: a proposal forwarded to a
	// leader that just died waits for the server's own timeout, far
	// longer than a new election takes.
	wait := 25 * time.Millisecond
	ambiguous := false // an earlier try may have committed
	for {
		actx, cancel := context.WithTimeout(ctx, txnAttemptTimeout)
		// Without a leader a write cannot commit; the member says so
		// at once rather than when the time runs out.
		resp, err := b.client.Txn(clientv3.WithRequireLeader(actx)).If(cmp).Then(op).Commit()
		cancel()
		switch {
		case err == nil && resp.Succeeded:
			return resp.Header.Revision, nil
		case err == nil && ambiguous:
			// The comparison failed: maybe because an earlier try of
			// this very write committed. Its value says so.
			if rev, ok := b.committed(ctx, key, op); ok {
				return rev, nil
			}
			return 0, ErrConflict
		case err == nil:
			return 0, ErrConflict
		}
		err = etcdError(err)
		if !errors.Is(err, ErrStoreUnavailable) {
			return 0, err
		}
		ambiguous = true
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return 0, err
		case <-t.C:
		}
		wait = min(2*wait, 400*time.Millisecond)
		if err := b.connected(); err != nil {
			return 0, err
		}
	}
}

// txnAttemptTimeout bounds one try of a write; see txn.
const txnAttemptTimeout = 750 * time.Millisecond

// committed reports whether op is what key holds now, and at which
// revision: the write a try whose answer was lost made. A value holds its
// update time to the nanosecond, so another writer's is never the same.
func (b *EtcdBackend) committed(ctx context.Context, key string, op clientv3.Op) (int64, bool) {
	rec, ok, err := b.Get(ctx, key)
	switch {
	case err != nil:
		return 0, false
	case op.IsDelete():
		return 0, false // a deletion leaves nothing to recognise
	case ok && string(rec.Value) == string(op.ValueBytes()):
		return rec.Revision, true
	}
	return 0, false
}

// connected fails at once when the client knows it reaches no member, so
// that a write does not wait out its timeout for nothing.
func (b *EtcdBackend) connected() error {
	switch st := b.client.ActiveConnection().GetState(); st {
	case connectivity.TransientFailure, connectivity.Shutdown:
		return fmt.Errorf("%w: no etcd member reachable (%v)", ErrStoreUnavailable, st)
	}
	return nil
}

// etcdReconnectBackoff paces the redials of an etcd member that cannot be
// reached: quickly at first, then every two seconds at most.
var etcdReconnectBackoff = backoff.Config{
	BaseDelay:  250 * time.Millisecond,
	Multiplier: 1.6,
	Jitter:     0.2,
	MaxDelay:   2 * time.Second,
}

// Watch watches every key under the prefix from rev on.
func (b *EtcdBackend) Watch(ctx context.Context, rev int64) (Watcher, error) {
	// A member cut off from the others would keep the watch open and
	// silent; with a leader required it ends the watch instead.
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	w := clientv3.NewWatcher(b.client)
	// etcd answers no progress request for a watch that starts beyond
	// its current revision, which is where a watch from just after a
	// list starts; starting one revision earlier and dropping what was
	// listed already keeps the progress coming.
	from := max(rev-1, 1)
	ch := w.Watch(wctx, b.prefix, clientv3.WithPrefix(), clientv3.WithRev(from), clientv3.WithProgressNotify())
	return &etcdWatcher{b: b, ctx: wctx, cancel: cancel, w: w, ch: ch, min: rev, tick: time.NewTicker(b.progress), heard: time.Now()}, nil
}

// silenceLimit is how long a watch may go unanswered, however often it
// asks for progress, before it counts as broken.
//
// The client resumes a watch whose connection broke on its own, from one
// past the last revision it heard of, and etcd answers no progress
// request for a watch that starts beyond its current revision
// (progressIfSync in its watchable store). Once etcd is back such a
// watch would stay silent until the next change, and the store stale
// however current it is; ending it makes the store list and watch anew,
// from a revision etcd has.
func (b *EtcdBackend) silenceLimit() time.Duration {
	return max(10*b.progress, 2*time.Second)
}

// etcdWatcher is one etcd watch. It asks for progress every tick, so that
// a watch with nothing to deliver still says it is current, and one whose
// member has gone stops saying so.
type etcdWatcher struct {
	b      *EtcdBackend
	ctx    context.Context
	cancel context.CancelFunc
	w      clientv3.Watcher
	ch     clientv3.WatchChan
	min    int64 // events before it were asked not to be delivered
	tick   *time.Ticker
	heard  time.Time // when etcd last answered on the watch
}

// Next returns the next batch of changes, or a progress notice.
func (w *etcdWatcher) Next() (WatchBatch, error) {
	for {
		select {
		case <-w.ctx.Done():
			return WatchBatch{}, w.ctx.Err()
		case resp, ok := <-w.ch:
			w.heard = time.Now()
			if !ok {
				if err := w.ctx.Err(); err != nil {
					return WatchBatch{}, err
				}
				return WatchBatch{}, fmt.Errorf("%w: the etcd watch closed", ErrStoreUnavailable)
			}
			if resp.CompactRevision != 0 {
				return WatchBatch{}, fmt.Errorf("%w: etcd keeps revisions from %d on", ErrCompacted, resp.CompactRevision)
			}
			if err := resp.Err(); err != nil {
				return WatchBatch{}, etcdError(err)
			}
			if resp.Created && len(resp.Events) == 0 {
				continue
			}
			batch := WatchBatch{Revision: max(resp.Header.Revision, w.min-1)}
			for _, ev := range resp.Events {
				if ev.Kv.ModRevision < w.min {
					continue
				}
				e := Event{Key: strings.TrimPrefix(string(ev.Kv.Key), w.b.prefix), Revision: ev.Kv.ModRevision}
				if ev.Type == clientv3.EventTypePut {
					e.Value = ev.Kv.Value
					if e.Value == nil {
						e.Value = []byte{}
					}
				}
				batch.Events = append(batch.Events, e)
			}
			return batch, nil
		case <-w.tick.C:
			if d := time.Since(w.heard); d > w.b.silenceLimit() {
				return WatchBatch{}, fmt.Errorf("%w: etcd answered no progress request on the watch for %v", ErrStoreUnavailable, d.Round(time.Millisecond))
			}
			// The answer comes on the watch channel; no answer is how a
			// lost cluster shows, as staleness. The request must not
			// hold up the loop while the client reconnects.
			rctx, cancel := context.WithTimeout(w.ctx, w.b.progress)
			_ = w.w.RequestProgress(rctx)
			cancel()
		}
	}
}

// Close ends the watch.
func (w *etcdWatcher) Close() error {
	w.tick.Stop()
	w.cancel()
	return w.w.Close()
}

// Close closes the client.
func (b *EtcdBackend) Close() error { return b.client.Close() }

// etcdError sorts etcd's failures: those that mean the cluster cannot be
// reached or cannot commit now are ErrStoreUnavailable; the caller's own
// cancellation stays what it is.
func etcdError(err error) error {
	if errors.Is(err, context.Canceled) {
		return err
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%w: etcd did not answer in time: %v", ErrStoreUnavailable, err)
	}
	switch {
	case errors.Is(err, rpctypes.ErrNoLeader), errors.Is(err, rpctypes.ErrTimeout),
		errors.Is(err, rpctypes.ErrTimeoutDueToLeaderFail), errors.Is(err, rpctypes.ErrTimeoutDueToConnectionLost),
		errors.Is(err, rpctypes.ErrLeaderChanged), errors.Is(err, rpctypes.ErrStopped):
		return fmt.Errorf("%w: %v", ErrStoreUnavailable, err)
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded:
		return fmt.Errorf("%w: %v", ErrStoreUnavailable, err)
	}
	return fmt.Errorf("etcd: %w", err)
}
