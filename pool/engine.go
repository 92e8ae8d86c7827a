package pool

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http/httpproxy"

	"github.com/poold/poold/dialer"
)

// Options configure an Engine.
type Options struct {
	// Policies is the initial policy set; it is validated by New.
	Policies PolicySet
	// Dialer makes connections. nil means a Dialer with the system roots
	// and no egress checks.
	Dialer *dialer.Dialer
	// Proxy picks a proxy for an origin when the effective ProxyURL is "".
	// nil means HTTP_PROXY, HTTPS_PROXY and NO_PROXY, read once by New.
	Proxy func(*url.URL) (*url.URL, error)
	// EventBuffer is how many events each subscriber may have queued
	// before events are dropped. 0 means 256.
	EventBuffer int
	// Now is the clock for idle and lifetime decisions and for
	// timestamps. nil means time.Now.
	Now func() time.Time
	// SweepInterval is how often idle and over-age connections are
	// looked for. 0 means 1s.
	SweepInterval time.Duration
	// MaxDialsPerHost caps dials in flight per host, whatever
	// MaxConnsPerHost allows. Dials outlive the requests that started them
	// (the conn serves the next one), so without a cap a flood of requests
	// that give up at once would leave a pile of dials behind. Requests
	// over the cap wait for a dial or a conn like any other. 0 means 64.
	MaxDialsPerHost int
	// IdleHostTimeout is how long a host pool with no connections, no
	// waiters and no new requests is kept before it is removed and its
	// memory returned; a host reached again gets a fresh pool. A pool
	// whose every dial failed goes at the next sweep. 0 means 1 minute;
	// negative keeps every pool for the engine's life.
	IdleHostTimeout time.Duration
	// CountedHosts is how many host pool keys keep counters of their own
	// in Totals across their pools' removal, first come first served; the
	// counters of every other pool are summed into one. It bounds what
	// the engine remembers of hosts it no longer talks to. 0 means 100.
	CountedHosts int
	// AfterSweep, if set, is called by the sweeper after every sweep,
	// outside every lock, with how many host pools it removed (often 0):
	// the daemon uses it to hand their memory back to the operating
	// system.
	AfterSweep func(removed int)
}

// Engine is the connection pool: an http.RoundTripper keeping one pool of
// persistent connections per scheme, host, port and proxy, run by a
// policy set that can be swapped while requests flow.
type Engine struct {
	// Set by New, read-only after.
	dialer      *dialer.Dialer
	proxyEnv    func(*url.URL) (*url.URL, error)
	now         func() time.Time
	eventBuffer int
	sweep       time.Duration
	maxDials    int
	idleHost    time.Duration // < 0: never remove
	countedMax  int
	afterSweep  func(removed int)

	snap  atomic.Pointer[policySnapshot] // the policy in force; replaced whole
	setMu sync.Mutex                     // serialises SetPolicies so snapshots apply in order

	mu        sync.RWMutex // guards hosts, closed and the fields below
	hosts     map[string]*hostPool
	hostsPeak int // the most pools hosts has held since it was last rebuilt
	closed    bool
	// counted holds, for the first CountedHosts keys, the counters of
	// their removed pools; other holds the sum for every other key.
	// Removing a pool folds its counters in here under mu, so Totals,
	// which reads both under mu, never sees a count go down.
	counted map[string]*HostCounters
	other   HostCounters

	isClosed atomic.Bool // closed, readable without mu on hot paths

	idle    idleLRU // idle conns of every host, for MaxIdleConns
	h2      h2Transports
	h2conns h2Registry // for the pinger
	events  eventHub
	connID  atomic.Uint64

	ctx    context.Context // ends at Close: aborts dials, stops the reaper and subscribers
	cancel context.CancelFunc
	wg     sync.WaitGroup // dials, the reaper and subscribers
}

var _ http.RoundTripper = (*Engine)(nil)

// policySnapshot is one immutable generation of the policy set.
type policySnapshot struct {
	set          PolicySet
	maxIdleConns uint32        // the default policy's MaxIdleConns
	changed      chan struct{} // closed when a newer snapshot replaces this one

	routesMu   sync.RWMutex
	routes     map[origin]*hostPool // valid for this generation
	routesPeak int                  // as Engine.hostsPeak, for routes
}

// origin is what a request's pool is looked up by, before the proxy (and
// so the pool key) is known. A struct, so looking one up costs no
// allocation.
// origin is what a request's pool is routed by: where it goes, and under
// which egress scope (nil for none).
type origin struct {
	scheme, host, port string
	scope              *EgressScope
}

func newSnapshot(set PolicySet) *policySnapshot {
	// MaxIdleConns lives only in the default policy, so any host that no
	// pattern matches gives it.
	return &policySnapshot{
		set: set, maxIdleConns: set.Resolve("", "").MaxIdleConns, changed: make(chan struct{}),
		routes: make(map[origin]*hostPool),
	}
}

// New returns an Engine running opts.Policies.
func New(opts Options) (*Engine, error) {
	if err := opts.Policies.Validate(); err != nil {
		return nil, err
	}
	e := &Engine{
		dialer:      opts.Dialer,
		proxyEnv:    opts.Proxy,
		now:         opts.Now,
		eventBuffer: opts.EventBuffer,
		sweep:       opts.SweepInterval,
		maxDials:    opts.MaxDialsPerHost,
		idleHost:    opts.IdleHostTimeout,
		countedMax:  opts.CountedHosts,
		afterSweep:  opts.AfterSweep,
		hosts:       make(map[string]*hostPool),
		counted:     make(map[string]*HostCounters),
	}
	if e.dialer == nil {
		cfg, err := dialer.NewTLSConfig("")
		if err != nil {
			return nil, fmt.Errorf("pool: default TLS config: %w", err)
		}
		e.dialer = &dialer.Dialer{TLSConfig: cfg}
	}
	if e.proxyEnv == nil {
		e.proxyEnv = httpproxy.FromEnvironment().ProxyFunc()
	}
	if e.now == nil {
		e.now = time.Now
	}
	if e.eventBuffer <= 0 {
		e.eventBuffer = 256
	}
	if e.sweep <= 0 {
		e.sweep = time.Second
	}
	if e.maxDials <= 0 {
		e.maxDials = 64
	}
	if e.idleHost == 0 {
		e.idleHost = time.Minute
	}
	if e.countedMax <= 0 {
		e.countedMax = 100
	}
	e.snap.Store(newSnapshot(opts.Policies.Clone()))
	e.ctx, e.cancel = context.WithCancel(context.Background())
	e.wg.Add(2)
	go e.reap()
	go e.pinger()
	return e, nil
}

// RoundTrip sends req on a pooled connection and returns the response.
// The response body must be read to EOF or closed for the connection to be
// reused. Errors are *Error values naming the failed phase.
func (e *Engine) RoundTrip(req *http.Request) (*http.Response, error) {
	start := time.Now()
	framing, err := checkRequest(req)
	if err != nil {
		closeBody(req.Body)
		return nil, err
	}
	scheme, host, port, _ := originOf(req.URL)
	if e.isClosed.Load() {
		closeBody(req.Body)
		return nil, &Error{Phase: PhaseQueue, Host: scheme + "://" + hostPort(host, port), Err: ErrClosed}
	}
	scope := scopeFrom(req.Context())
	for {
		hp, err := e.route(scheme, host, port, scope)
		if err != nil {
			closeBody(req.Body)
			return nil, err
		}
		eff, ok := hp.enter()
		if !ok {
			// Removed after the route was looked up: the next lookup
			// makes a fresh pool.
			e.forgetRoute(hp)
			continue
		}
		resp, err := hp.roundTrip(req, eff, framing, start)
		hp.inflight.Add(-1)
		return resp, err
	}
}

// checkRequest refuses what cannot be framed safely on the wire, and
// otherwise says how the body is framed.
func checkRequest(req *http.Request) (reqFraming, error) {
	bad := func(format string, args ...any) error {
		return &Error{Phase: PhaseWrite, Err: fmt.Errorf("%w: "+format, append([]any{ErrInvalidRequest}, args...)...)}
	}
	if req.URL == nil {
		return reqFraming{}, bad("nil URL")
	}
	if _, _, _, ok := originOf(req.URL); !ok {
		return reqFraming{}, bad("URL must be http or https with a host, got %q", req.URL.Redacted())
	}
	if req.Method != "" && !httpguts.ValidHeaderFieldName(req.Method) {
		return reqFraming{}, bad("method %q", req.Method)
	}
	if hasCTL(req.URL.Opaque) || hasCTL(req.URL.EscapedPath()) || hasCTL(req.URL.RawQuery) {
		return reqFraming{}, bad("control character in the request target")
	}
	framing, err := requestFraming(req)
	if err != nil {
		return reqFraming{}, &Error{Phase: PhaseWrite, Err: err}
	}
	for k, vs := range req.Header {
		if !httpguts.ValidHeaderFieldName(k) {
			return reqFraming{}, bad("header field name %q", k)
		}
		for _, v := range vs {
			if !httpguts.ValidHeaderFieldValue(v) {
				return reqFraming{}, bad("header %q has a value with control characters", k)
			}
		}
	}
	return framing, nil
}

// hasCTL reports whether s holds a byte that would split a request line.
func hasCTL(s string) bool {
	for i := 0; i < len(s); i++ {
		if b := s[i]; b < ' ' || b == 0x7f {
			return true
		}
	}
	return false
}

// closeBody closes a request body the engine will not send, as a
// RoundTripper must. Its error is the caller's body's business and would
// only hide the error that made the request fail.
func closeBody(b io.Closer) {
	if b != nil {
		_ = b.Close()
	}
}

// route finds the pool for an origin under the current policy, creating it
// on first use. The answer is cached per policy generation, since the
// proxy (and so the key) follows from the policy.
func (e *Engine) route(scheme, host, port string, scope *EgressScope) (*hostPool, error) {
	snap := e.snap.Load()
	o := origin{scheme, host, port, scope}
	snap.routesMu.RLock()
	hp := snap.routes[o]
	snap.routesMu.RUnlock()
	if hp != nil {
		return hp, nil
	}
	eff := snap.set.Resolve(host, port)
	proxy, err := e.proxyFor(eff.ProxyURL, scheme, hostPort(host, port))
	if err != nil {
		return nil, &Error{Phase: PhaseProxy, Host: scheme + "://" + hostPort(host, port), Err: err}
	}
	key := scopedKey(poolKey(scheme, hostPort(host, port), proxy), scope)
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil, &Error{Phase: PhaseQueue, Host: key, Err: ErrClosed}
	}
	hp = e.hosts[key]
	if hp == nil {
		// Resolve under e.mu against the snapshot current now: SetPolicies
		// swaps before it lists the pools to update, so a pool is either
		// listed or born with the new policy.
		cur := e.snap.Load()
		hp = newHostPool(e, key, scheme, host, port, proxy, cur, cur.set.Resolve(host, port))
		hp.scope = scope // before anyone else sees hp
		e.hosts[key] = hp
		e.hostsPeak = max(e.hostsPeak, len(e.hosts))
		if _, ok := e.counted[key]; !ok && len(e.counted) < e.countedMax {
			e.counted[key] = &HostCounters{}
		}
	}
	e.mu.Unlock()
	snap.routesMu.Lock()
	snap.routes[o] = hp
	snap.routesPeak = max(snap.routesPeak, len(snap.routes))
	snap.routesMu.Unlock()
	return hp, nil
}

// hostList returns the pools sorted by key.
func (e *Engine) hostList() []*hostPool {
	list := e.pools()
	sort.Slice(list, func(i, j int) bool { return list[i].key < list[j].key })
	return list
}

// pools returns the live pools in no order.
func (e *Engine) pools() []*hostPool {
	e.mu.RLock()
	list := make([]*hostPool, 0, len(e.hosts))
	for _, hp := range e.hosts {
		list = append(list, hp)
	}
	e.mu.RUnlock()
	return list
}

// Close closes every connection (reason shutdown), fails waiting requests
// with ErrClosed, and makes later requests fail with ErrClosed. Requests in
// flight fail too: Close is for after callers have been drained.
func (e *Engine) Close() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed = true
	e.isClosed.Store(true)
	e.mu.Unlock()
	e.goAwayIdle()
	e.cancel()
	for _, hp := range e.hostList() {
		hp.shutdown()
	}
	e.wg.Wait()
	return nil
}

// Policies returns a copy of the policy set in force.
func (e *Engine) Policies() PolicySet {
	return e.snap.Load().set.Clone()
}

// EffectivePolicy returns the policy a request to scheme://hostport would
// run under now.
func (e *Engine) EffectivePolicy(scheme, hostport string) Effective {
	u := &url.URL{Scheme: scheme, Host: hostport}
	_, host, port, ok := originOf(u)
	if !ok {
		host, port = u.Hostname(), u.Port()
	}
	return e.snap.Load().set.Resolve(host, port)
}
