package pool_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/poold/poold/dialer/dialertest"
	"github.com/poold/poold/pool"
)

// These tests run the engine's HTTP/2 conns against real x/net servers on
// loopback. Waits are bounded polls: a bound turns a hang into a failure
// and is far beyond what a loaded machine needs.

const h2Proto = "HTTP/2.0"

// h2Conns returns the engine's HTTP/2 conns for hostport.
func h2Conns(e *pool.Engine, hostport string) []pool.ConnInfo {
	var out []pool.ConnInfo
	for _, c := range e.Conns(pool.ConnFilter{Host: hostport}) {
		if c.Protocol == h2Proto {
			out = append(out, c)
		}
	}
	return out
}

func describeConns(e *pool.Engine, hostport string) func() string {
	return func() string { return fmt.Sprintf("conns %+v", e.Conns(pool.ConnFilter{Host: hostport})) }
}

func describeHost(e *pool.Engine, hostport string) func() string {
	return func() string {
		h, _ := e.Host(hostport)
		return fmt.Sprintf("host %+v", h)
	}
}

func TestH2PoolCarriesAConcurrentBurstOnOneConn(t *testing.T) {
	const n, limit = 200, 250
	tests := []struct {
		name string
		warm bool // one request first, so the pool has a conn and knows the limit
	}{
		{name: "cold host"},
		{name: "host whose limit a first request learned", warm: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ca := dialertest.NewCA(t)
			g := newGate(t)
			u := newH2Upstream(t, ca, limit, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/warm" {
					answer(w, r)
					return
				}
				g.ServeHTTP(w, r)
			}))
			e := newH2Engine(t, ca, pool.Policy{})
			client := &http.Client{Transport: e}
			ctx := testContext(t)
			streams := uint64(n)
			if tt.warm {
				req, err := http.NewRequestWithContext(ctx, "GET", u.URL+"/warm", nil)
				if err != nil {
					t.Fatal(err)
				}
				if r := exchange(client.Do, req); r.err != nil || r.protoMajor != 2 {
					t.Fatalf("first request: %+v", r)
				}
				streams++
			}

			results := make(chan h2Response, n)
			for i := range n {
				go func() {
					req, err := http.NewRequestWithContext(ctx, "GET", fmt.Sprintf("%s/burst/%d", u.URL, i), nil)
					if err != nil {
						results <- h2Response{err: err}
						return
					}
					r := exchange(client.Do, req)
					if r.err == nil && r.body != echo("GET", req.URL.Path, 0) {
						r.err = fmt.Errorf("%s: body %q", req.URL.Path, r.body)
					}
					results <- r
				}()
			}
			// Every request is held by the handler: the burst is at its peak.
			waitFor(t, 10*time.Second, "all requests in the handler", func() bool { return g.held.Load() == n },
				describeConns(e, u.Host), describeHost(e, u.Host))
			conns := e.Conns(pool.ConnFilter{Host: u.Host})
			if len(conns) != 1 {
				t.Errorf("during the burst the engine has %d conns, want 1: %+v", len(conns), conns)
			}
			for _, c := range conns {
				if c.Protocol != h2Proto || c.ALPN != "h2" || c.ActiveStreams <= 1 {
					t.Errorf("conn %d during the burst: protocol %q, ALPN %q, %d active streams; want %q, h2, more than 1",
						c.ID, c.Protocol, c.ALPN, c.ActiveStreams, h2Proto)
				}
				if c.PeerMaxStreams != limit || c.MaxStreams != limit {
					t.Errorf("conn %d stream limits: peer %d, in force %d; want %d and %d", c.ID, c.PeerMaxStreams, c.MaxStreams, limit, limit)
				}
			}
			if h := h2Host(t, e, u.Host); h.H2Conns != 1 || h.Streams != n {
				t.Errorf("during the burst: %d HTTP/2 conns carrying %d streams, want 1 and %d", h.H2Conns, h.Streams, n)
			}
			g.releaseAll()
			for range n {
				r := <-results
				if r.err != nil {
					t.Error(r.err)
				} else if r.protoMajor != 2 {
					t.Errorf("response ProtoMajor %d, want 2", r.protoMajor)
				}
			}
			h := h2Host(t, e, u.Host)
			if a := u.accepted.Load(); a != 1 || h.Counters.Dials != 1 {
				t.Errorf("server accepted %d conns, engine dialed %d; want 1", a, h.Counters.Dials)
			}
			if p := u.peakPerConn(); p > limit {
				t.Errorf("one conn had %d requests in the handler at once, limit %d", p, limit)
			}
			if h.Counters.Streams != streams {
				t.Errorf("Counters.Streams = %d, want %d", h.Counters.Streams, streams)
			}
		})
	}
}

func TestH2PoolColdBurstDialsNoMoreConnsThanTheStreamLimitNeeds(t *testing.T) {
	const n, limit, maxConns = 50, 10, 5
	tests := []struct {
		name string
		tls  bool
		hold bool // hold every request until all n are in the handler
	}{
		{name: "h2 over TLS, answered at once", tls: true},
		{name: "h2c, held until all have arrived", hold: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var ca *dialertest.CA
			p := pool.Policy{Protocols: new(pool.ProtocolsH2C)}
			if tt.tls {
				ca = dialertest.NewCA(t)
				p = pool.Policy{}
			}
			g := newGate(t)
			var handler http.Handler = answer
			if tt.hold {
				handler = g
			}
			u := newH2Upstream(t, ca, limit, handler)
			e := newH2Engine(t, ca, p)
			ctx := testContext(t)

			results := getMany(ctx, e, u.URL+"/cold", n)
			if tt.hold {
				waitFor(t, 10*time.Second, "all requests in the handler", func() bool { return g.held.Load() == n },
					describeConns(e, u.Host), describeHost(e, u.Host))
				g.releaseAll()
			}
			for range n {
				r := <-results
				if r.err != nil {
					t.Error(r.err)
				} else if r.protoMajor != 2 {
					t.Errorf("response ProtoMajor %d, want 2", r.protoMajor)
				}
			}
			h := h2Host(t, e, u.Host)
			if a := u.accepted.Load(); a > maxConns || h.Counters.Dials > maxConns {
				t.Errorf("server accepted %d conns, engine dialed %d; want at most %d", a, h.Counters.Dials, maxConns)
			}
			if h.Counters.Errors != 0 || h.Counters.RefusedStreams != 0 {
				t.Errorf("errors %d, refused streams %d; want 0 and 0", h.Counters.Errors, h.Counters.RefusedStreams)
			}
			if p := u.peakPerConn(); p > limit {
				t.Errorf("one conn had %d requests in the handler at once, limit %d", p, limit)
			}
		})
	}
}

func TestH2PoolStreamLimitDialsMoreConnsUnlessStrict(t *testing.T) {
	const n, limit = 100, 10
	tests := []struct {
		name        string
		strict      bool
		wantConns   int
		wantHeld    int64
		wantPending int
	}{
		{name: "not strict: a conn per 10 streams", wantConns: 10, wantHeld: n},
		{name: "strict: one conn, the rest queued", strict: true, wantConns: 1, wantHeld: limit, wantPending: n - limit},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := newGate(t)
			u := newH2Upstream(t, nil, limit, g)
			e := newH2Engine(t, nil, pool.Policy{
				Protocols:                  new(pool.ProtocolsH2C),
				StrictMaxConcurrentStreams: new(tt.strict),
			})
			ctx := testContext(t)

			results := getMany(ctx, e, u.URL+"/limit", n)
			waitFor(t, 10*time.Second, fmt.Sprintf("%d requests in the handler and %d queued", tt.wantHeld, tt.wantPending),
				func() bool { return g.held.Load() == tt.wantHeld && h2Host(t, e, u.Host).Pending == tt.wantPending },
				func() string { return fmt.Sprintf("held %d", g.held.Load()) }, describeHost(e, u.Host), describeConns(e, u.Host))

			h := h2Host(t, e, u.Host)
			if a := u.accepted.Load(); a != int64(tt.wantConns) || h.Counters.Dials != uint64(tt.wantConns) {
				t.Errorf("server accepted %d conns, engine dialed %d; want %d", a, h.Counters.Dials, tt.wantConns)
			}
			conns := h2Conns(e, u.Host)
			if len(conns) != tt.wantConns || h.H2Conns != tt.wantConns {
				t.Errorf("%d HTTP/2 conns listed, HostStats.H2Conns %d; want %d", len(conns), h.H2Conns, tt.wantConns)
			}
			for _, c := range conns {
				if c.ActiveStreams != limit || c.MaxStreams != limit {
					t.Errorf("conn %d: %d active streams, limit in force %d; want %d and %d", c.ID, c.ActiveStreams, c.MaxStreams, limit, limit)
				}
			}
			g.releaseAll()
			for range n {
				if r := <-results; r.err != nil {
					t.Error(r.err)
				}
			}
			if a := u.accepted.Load(); a != int64(tt.wantConns) {
				t.Errorf("after the queue drained the server had accepted %d conns, want %d", a, tt.wantConns)
			}
			if p := u.peakPerConn(); p > limit {
				t.Errorf("one conn had %d requests in the handler at once, limit %d", p, limit)
			}
		})
	}
}

func TestH2PoolStrictQueueDrainsInOrderAndACanceledWaiterFailsAlone(t *testing.T) {
	const n, limit, canceled = 100, 10, 50
	g := newGate(t)
	u := newH2Upstream(t, nil, limit, g)
	e := newH2Engine(t, nil, pool.Policy{
		Protocols:                  new(pool.ProtocolsH2C),
		StrictMaxConcurrentStreams: new(true),
	})
	ctx := testContext(t)

	path := func(i int) string { return fmt.Sprintf("/q/%02d", i) }
	results := make([]chan h2Response, n)
	cancels := make([]context.CancelFunc, n)
	start := func(i int) {
		rctx, cancel := context.WithCancel(ctx)
		cancels[i] = cancel
		t.Cleanup(cancel)
		results[i] = make(chan h2Response, 1)
		go func() {
			req, err := http.NewRequestWithContext(rctx, "GET", u.URL+path(i), nil)
			if err != nil {
				results[i] <- h2Response{err: err}
				return
			}
			results[i] <- exchange(e.RoundTrip, req)
		}()
	}
	// The first ten take every stream of the one conn.
	for i := range limit {
		start(i)
	}
	waitFor(t, 10*time.Second, "the first requests to hold every stream", func() bool { return g.held.Load() == limit },
		describeHost(e, u.Host), describeConns(e, u.Host))
	// The rest queue one at a time, so their order is known.
	for i := limit; i < n; i++ {
		start(i)
		waitFor(t, 10*time.Second, fmt.Sprintf("request %d to queue", i),
			func() bool { return h2Host(t, e, u.Host).Pending == i-limit+1 }, describeHost(e, u.Host), describeConns(e, u.Host))
	}

	// Canceling one waiter fails it and nothing else.
	cancels[canceled]()
	select {
	case r := <-results[canceled]:
		if !errors.Is(r.err, context.Canceled) {
			t.Errorf("canceled request: error %v, want context.Canceled", r.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("canceled request did not return")
	}
	waitFor(t, 10*time.Second, "the canceled request to leave the queue",
		func() bool { return h2Host(t, e, u.Host).Pending == n-limit-1 }, describeHost(e, u.Host))
	for i, ch := range results {
		if i == canceled {
			continue
		}
		select {
		case r := <-ch:
			t.Errorf("request %d returned when only request %d was canceled: %+v", i, canceled, r)
		default:
		}
	}

	// Each freed stream goes to the head of the queue.
	for i := limit; i < n; i++ {
		if i == canceled {
			continue
		}
		before := len(g.arrivals())
		g.releaseOne(t)
		waitFor(t, 10*time.Second, fmt.Sprintf("a freed stream to take request %d", i),
			func() bool { return len(g.arrivals()) == before+1 }, describeHost(e, u.Host))
		if got := g.arrivals()[before]; got != path(i) {
			t.Fatalf("the stream freed after %d arrivals went to %s, want %s (the head of the queue)", before, got, path(i))
		}
	}
	g.releaseAll()
	for i, ch := range results {
		if i == canceled {
			continue
		}
		if r := <-ch; r.err != nil {
			t.Errorf("request %d: %v", i, r.err)
		}
	}
	if a := u.accepted.Load(); a != 1 {
		t.Errorf("server accepted %d conns, want 1", a)
	}
	if slices.Contains(g.arrivals(), path(canceled)) {
		t.Errorf("the canceled request reached the server")
	}
}

func TestH2PoolClosesASilentConnOnPingTimeoutAndFollowsLiveTimeouts(t *testing.T) {
	u := newH2Upstream(t, nil, 0, answer)
	px := newFreezeProxy(t, u.Host)
	withTimeouts := func(readIdle, ping time.Duration) pool.Policy {
		return pool.Policy{Protocols: new(pool.ProtocolsH2C), H2ReadIdleTimeout: new(readIdle), H2PingTimeout: new(ping)}
	}
	e := newH2Engine(t, nil, withTimeouts(time.Second, time.Second))
	ctx := testContext(t)
	get := func() {
		t.Helper()
		req, err := http.NewRequestWithContext(ctx, "GET", px.URL+"/ping", nil)
		if err != nil {
			t.Fatal(err)
		}
		if r := exchange(e.RoundTrip, req); r.err != nil || r.protoMajor != 2 {
			t.Fatalf("GET: %+v", r)
		}
	}
	onlyConn := func() pool.ConnInfo {
		t.Helper()
		cs := h2Conns(e, px.Host)
		if len(cs) != 1 {
			t.Fatalf("HTTP/2 conns %+v, want one", e.Conns(pool.ConnFilter{Host: px.Host}))
		}
		return cs[0]
	}
	pingClosed := func() uint64 { return h2Host(t, e, px.Host).Counters.Closed[pool.ClosePingTimeout] }
	isOpen := func(id uint64) bool {
		return slices.ContainsFunc(e.Conns(pool.ConnFilter{Host: px.Host}), func(c pool.ConnInfo) bool { return c.ID == id })
	}

	// An idle conn to a server that answers is pinged and kept.
	get()
	first := onlyConn()
	waitFor(t, 10*time.Second, "a PING round trip on the idle conn", func() bool {
		cs := h2Conns(e, px.Host)
		return len(cs) == 1 && cs[0].LastPingRTT > 0
	}, describeConns(e, px.Host))

	// The server goes silent: the next PING goes unanswered.
	if n := px.freeze(); n != 1 {
		t.Fatalf("froze %d proxied conns, want 1", n)
	}
	frozen := time.Now()
	waitFor(t, 10*time.Second, "the silent conn to close for ping_timeout", func() bool { return pingClosed() == 1 },
		describeHost(e, px.Host), describeConns(e, px.Host))
	t.Logf("silent conn closed %v after the freeze (read idle 1s, ping timeout 1s)", time.Since(frozen))
	if isOpen(first.ID) {
		t.Errorf("conn %d is still listed after its ping_timeout close", first.ID)
	}
	if h := h2Host(t, e, px.Host); h.Counters.PingFailures == 0 {
		t.Errorf("PingFailures = 0 after a ping_timeout close")
	}
	get()
	second := onlyConn()
	if second.ID == first.ID || h2Host(t, e, px.Host).Counters.Dials != 2 {
		t.Errorf("the request after the close used conn %d (first %d), dials %d; want a new conn",
			second.ID, first.ID, h2Host(t, e, px.Host).Counters.Dials)
	}

	// Read-idle PINGs off, live: the open conn sends none, so a silent
	// server goes unnoticed. The window is twice what the old timeouts
	// took to close a conn.
	if err := e.SetPolicies(pool.PolicySet{Default: withTimeouts(0, time.Second)}); err != nil {
		t.Fatal(err)
	}
	if n := px.freeze(); n != 1 {
		t.Fatalf("froze %d proxied conns, want 1", n)
	}
	for end := time.Now().Add(4 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if n := pingClosed(); n != 1 || !isOpen(second.ID) {
			t.Fatalf("with read-idle PINGs off, conn %d open %v, ping_timeout closes %d; want open and 1",
				second.ID, isOpen(second.ID), n)
		}
	}

	// PINGs back on with a longer PING timeout: the open conn is pinged at
	// once (it has read nothing for seconds) and waits the new timeout,
	// not the old 1s, before it gives up.
	resumed := time.Now()
	if err := e.SetPolicies(pool.PolicySet{Default: withTimeouts(time.Second, 4*time.Second)}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 15*time.Second, "the silent conn to close for ping_timeout under the new timeouts",
		func() bool { return pingClosed() == 2 }, describeHost(e, px.Host), describeConns(e, px.Host))
	if d := time.Since(resumed); d < 3*time.Second {
		t.Errorf("conn closed %v after PINGs resumed with a 4s PING timeout; the old 1s timeout would close it this soon", d)
	} else {
		t.Logf("conn closed %v after PINGs resumed with a 4s PING timeout", d)
	}
	get()
}

func TestH2PoolRidesOutAGracefulGoAwayWithRequestsInFlight(t *testing.T) {
	const n = 500
	g := newGate(t)
	u := newH2Upstream(t, nil, 1000, g)
	e := newH2Engine(t, nil, pool.Policy{Protocols: new(pool.ProtocolsH2C)})
	ctx := testContext(t)

	methods := []string{"GET", "POST", "PUT", "DELETE"}
	type sent struct {
		method, path string
		bodyLen      int
	}
	type outcome struct {
		sent
		h2Response
	}
	results := make(chan outcome, n)
	for i := range n {
		s := sent{method: methods[i%len(methods)], path: fmt.Sprintf("/goaway/%d", i)}
		go func() {
			var body *bytes.Reader
			if s.method == "POST" || s.method == "PUT" {
				s.bodyLen = 100 + i
				body = bytes.NewReader(bytes.Repeat([]byte("x"), s.bodyLen))
			}
			var req *http.Request
			var err error
			if body != nil {
				// http.NewRequest sets GetBody for a bytes.Reader: the
				// body can be sent again.
				req, err = http.NewRequestWithContext(ctx, s.method, u.URL+s.path, body)
			} else {
				req, err = http.NewRequestWithContext(ctx, s.method, u.URL+s.path, nil)
			}
			if err != nil {
				results <- outcome{s, h2Response{err: err}}
				return
			}
			if body != nil && req.GetBody == nil {
				results <- outcome{s, h2Response{err: errors.New("request has no GetBody")}}
				return
			}
			results <- outcome{s, exchange(e.RoundTrip, req)}
		}()
	}
	// GOAWAY goes out with half the requests in the handler and the rest
	// still arriving.
	waitFor(t, 10*time.Second, "half the requests in the handler", func() bool { return g.held.Load() >= n/2 },
		describeHost(e, u.Host), describeConns(e, u.Host))
	heldAtGoAway := g.held.Load()
	if told := u.goAway(); told == 0 {
		t.Fatal("no server conn to send GOAWAY on")
	}
	waitFor(t, 10*time.Second, "the engine to count the GOAWAY", func() bool { return h2Host(t, e, u.Host).Counters.GoAways > 0 },
		describeHost(e, u.Host), describeConns(e, u.Host))
	g.releaseAll()

	failed := 0
	for range n {
		o := <-results
		if o.err != nil {
			failed++
			t.Errorf("%s %s: %v", o.method, o.path, o.err)
		} else if want := echo(o.method, o.path, int64(o.bodyLen)); o.body != want {
			t.Errorf("%s %s: body %q, want %q", o.method, o.path, o.h2Response.body, want)
		}
	}
	if failed > 0 {
		t.Errorf("%d of %d requests failed across a graceful GOAWAY, want 0", failed, n)
	}
	// The server took each request once: one above the GOAWAY's last
	// stream id was never processed, so sending it again is safe, and
	// one below it was answered.
	seen := make(map[string]int)
	for _, p := range g.arrivals() {
		seen[p]++
	}
	for p, k := range seen {
		if k != 1 {
			t.Errorf("%s reached the server %d times, want once", p, k)
		}
	}
	waitFor(t, 10*time.Second, "the old conn to close for goaway",
		func() bool { return h2Host(t, e, u.Host).Counters.Closed[pool.CloseGoAway] > 0 }, describeHost(e, u.Host))
	h := h2Host(t, e, u.Host)
	t.Logf("held at GOAWAY %d; server conns %d; counters: dials %d, goaways %d, retries %d, refused streams %d, closed %v",
		heldAtGoAway, u.accepted.Load(), h.Counters.Dials, h.Counters.GoAways, h.Counters.Retries, h.Counters.RefusedStreams, h.Counters.Closed)
	if h.Counters.GoAways == 0 {
		t.Errorf("Counters.GoAways = 0 after the server sent GOAWAY")
	}
	if h.Counters.Errors != 0 {
		t.Errorf("Counters.Errors = %d, want 0", h.Counters.Errors)
	}
}

func TestH2PoolRefusedStreamsFailAfterTheBoundedRetries(t *testing.T) {
	// A refused stream was not processed, so it goes again whatever the
	// method and apart from MaxRetries (which is for failures that may
	// have reached the server): 4 times, then the refusal is the answer.
	// A body that cannot be produced again is not resent.
	const refusedAttempts = 5
	tests := []struct {
		name       string
		method     string
		retries    uint32
		onceBody   bool
		wantStream int64
	}{
		{name: "GET, MaxRetries 0", method: "GET", retries: 0, wantStream: refusedAttempts},
		{name: "GET, MaxRetries 2", method: "GET", retries: 2, wantStream: refusedAttempts},
		{name: "POST with a replayable body", method: "POST", retries: 2, wantStream: refusedAttempts},
		{name: "POST with a body that cannot be replayed", method: "POST", retries: 2, onceBody: true, wantStream: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newRefusingH2Server(t)
			e := newH2Engine(t, nil, pool.Policy{Protocols: new(pool.ProtocolsH2C), MaxRetries: new(tt.retries)})
			var req *http.Request
			var err error
			switch {
			case tt.onceBody:
				req, err = http.NewRequestWithContext(testContext(t), tt.method, s.URL+"/refused", io.NopCloser(strings.NewReader("payload")))
			case tt.method == "POST":
				req, err = http.NewRequestWithContext(testContext(t), tt.method, s.URL+"/refused", strings.NewReader("payload"))
			default:
				req, err = http.NewRequestWithContext(testContext(t), tt.method, s.URL+"/refused", nil)
			}
			if err != nil {
				t.Fatal(err)
			}
			r := exchange(e.RoundTrip, req)
			var pe *pool.Error
			if !errors.As(r.err, &pe) {
				t.Fatalf("error %v (%T), want a *pool.Error", r.err, r.err)
			}
			var se *pool.StreamResetError
			if !errors.As(r.err, &se) {
				t.Fatalf("error %v, want a *pool.StreamResetError inside", r.err)
			}
			if se.Code != uint32(http2.ErrCodeRefusedStream) || se.GoAway {
				t.Errorf("stream reset: code %d (%s), GoAway %v; want 7 (REFUSED_STREAM), false", se.Code, se.CodeName(), se.GoAway)
			}
			want := tt.wantStream
			h := h2Host(t, e, s.Host)
			if got := s.refused.Load(); got != want {
				t.Errorf("server refused %d streams, want %d", got, want)
			}
			if h.Counters.RefusedStreams != uint64(want) || h.Counters.Retries != uint64(want-1) {
				t.Errorf("Counters.RefusedStreams %d, Retries %d; want %d and %d", h.Counters.RefusedStreams, h.Counters.Retries, want, want-1)
			}
			if h.Counters.Errors != 1 {
				t.Errorf("Counters.Errors = %d, want 1", h.Counters.Errors)
			}
		})
	}
}

// getMany sends n GETs of prefix/0 to prefix/(n-1) at once, each on its
// own goroutine, and returns the channel their results arrive on.
func getMany(ctx context.Context, e *pool.Engine, prefix string, n int) <-chan h2Response {
	results := make(chan h2Response, n)
	for i := range n {
		go func() {
			req, err := http.NewRequestWithContext(ctx, "GET", fmt.Sprintf("%s/%d", prefix, i), nil)
			if err != nil {
				results <- h2Response{err: err}
				return
			}
			results <- exchange(e.RoundTrip, req)
		}()
	}
	return results
}

// A stream's timing: the first request dials, the next one shares the
// conn and says so, and both measure their time to first byte; the
// response's Request keeps the caller's context, request timeout or not.
func TestH2TimingTellsASharedConnFromAFreshOne(t *testing.T) {
	tests := []struct {
		name   string
		policy pool.Policy
	}{
		{name: "no request timeout"},
		// Tighter than testContext's minute, so the pool runs the
		// stream under a context of its own.
		{name: "request timeout", policy: pool.Policy{RequestTimeout: new(30 * time.Second)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ca := dialertest.NewCA(t)
			u := newH2Upstream(t, ca, 250, http.HandlerFunc(answer))
			e := newH2Engine(t, ca, tt.policy)
			ctx := testContext(t)
			var got []pool.Timing
			for range 2 {
				req, err := http.NewRequestWithContext(ctx, "GET", u.URL+"/t", nil)
				if err != nil {
					t.Fatal(err)
				}
				resp, err := e.RoundTrip(req)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := io.ReadAll(resp.Body); err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.ProtoMajor != 2 {
					t.Fatalf("response over %s, want HTTP/2.0", resp.Proto)
				}
				if err := resp.Request.Context().Err(); err != nil {
					t.Fatalf("the response's Request context ended with the body: %v", err)
				}
				tm, ok := pool.TimingFrom(resp)
				if !ok {
					t.Fatal("TimingFrom found no timing on an HTTP/2 response")
				}
				got = append(got, tm)
			}
			first, second := got[0], got[1]
			if first.Reused || !second.Reused || first.ConnID != second.ConnID {
				t.Errorf("reused %v then %v on conns %d and %d, want false then true on one conn", first.Reused, second.Reused, first.ConnID, second.ConnID)
			}
			for i, tm := range got {
				if tm.TimeToFirstByte <= 0 || tm.Total < tm.TimeToFirstByte || tm.Attempts != 1 {
					t.Errorf("request %d: %+v, want a time to first byte within the total and one attempt", i, tm)
				}
			}
		})
	}
}
