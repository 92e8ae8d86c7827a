package pool_test

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/poold/poold/dialer"
	"github.com/poold/poold/dialer/dialertest"
	"github.com/poold/poold/internal/h2script"
	"github.com/poold/poold/pool"
)

// h2Upstream is an x/net HTTP/2 server on loopback: h2 over TLS (ALPN)
// when made with a CA, h2c with prior knowledge otherwise. Every conn gets
// its own http.Server and http2.Server, joined by http2.ConfigureServer, so
// that a test can send the graceful GOAWAY of the conns open now while new
// ones are still served. It counts conns, requests, and per conn (keyed by
// the request's RemoteAddr) the requests in its handler at once.
type h2Upstream struct {
	t          testing.TB
	URL, Host  string
	maxStreams uint32
	tlsConfig  *tls.Config // nil: h2c
	handler    http.Handler

	ln       net.Listener
	accepted atomic.Int64
	requests atomic.Int64

	mu       sync.Mutex // guards following fields
	servers  []*http.Server
	live     map[net.Conn]struct{}
	inflight map[string]int // by RemoteAddr
	peak     int            // the most requests one conn had in the handler at once

	wg sync.WaitGroup
}

// newH2Upstream serves h with SETTINGS_MAX_CONCURRENT_STREAMS maxStreams
// (0: the x/net default of 250), over TLS with a leaf of ca, or h2c when
// ca is nil. It is closed when the test ends.
func newH2Upstream(t testing.TB, ca *dialertest.CA, maxStreams uint32, h http.Handler) *h2Upstream {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &h2Upstream{
		t: t, Host: ln.Addr().String(), maxStreams: maxStreams, handler: h, ln: ln,
		live: make(map[net.Conn]struct{}), inflight: make(map[string]int),
	}
	u.URL = "http://" + u.Host
	if ca != nil {
		u.URL = "https://" + u.Host
		// ConfigureServer on a template gives the TLS config an h2 server
		// announces: h2 first in ALPN.
		tmpl := &http.Server{TLSConfig: &tls.Config{
			Certificates: []tls.Certificate{ca.Certificate(t, 2, "localhost", "127.0.0.1")},
		}}
		if err := http2.ConfigureServer(tmpl, &http2.Server{}); err != nil {
			t.Fatal(err)
		}
		u.tlsConfig = tmpl.TLSConfig
	}
	u.wg.Add(1)
	go u.accept()
	t.Cleanup(u.close)
	return u
}

func (u *h2Upstream) accept() {
	defer u.wg.Done()
	for {
		c, err := u.ln.Accept()
		if err != nil {
			return
		}
		u.accepted.Add(1)
		u.mu.Lock()
		u.live[c] = struct{}{}
		u.mu.Unlock()
		u.wg.Add(1)
		go u.serve(c)
	}
}

func (u *h2Upstream) serve(raw net.Conn) {
	defer u.wg.Done()
	defer func() {
		raw.Close()
		u.mu.Lock()
		delete(u.live, raw)
		u.mu.Unlock()
	}()
	c := raw
	if u.tlsConfig != nil {
		tc := tls.Server(raw, u.tlsConfig)
		if err := tc.Handshake(); err != nil || tc.ConnectionState().NegotiatedProtocol != http2.NextProtoTLS {
			return
		}
		c = tc
	}
	// The server's own log would only repeat what the tests check.
	h1 := &http.Server{Handler: u, ErrorLog: log.New(io.Discard, "", 0)}
	h2 := &http2.Server{MaxConcurrentStreams: u.maxStreams}
	if err := http2.ConfigureServer(h1, h2); err != nil {
		u.t.Errorf("http2.ConfigureServer: %v", err)
		return
	}
	u.mu.Lock()
	u.servers = append(u.servers, h1)
	u.mu.Unlock()
	h2.ServeConn(c, &http2.ServeConnOpts{BaseConfig: h1, Handler: u})
}

// ServeHTTP counts the request against its conn and runs the handler.
func (u *h2Upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	u.requests.Add(1)
	u.mu.Lock()
	u.inflight[r.RemoteAddr]++
	u.peak = max(u.peak, u.inflight[r.RemoteAddr])
	u.mu.Unlock()
	defer func() {
		u.mu.Lock()
		u.inflight[r.RemoteAddr]--
		u.mu.Unlock()
	}()
	u.handler.ServeHTTP(w, r)
}

// peakPerConn is the most requests one conn had in the handler at once.
func (u *h2Upstream) peakPerConn() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.peak
}

// goAway starts the graceful shutdown of every conn open now: each sends
// GOAWAY(NO_ERROR) naming the last stream it took, finishes those streams
// and closes. Conns accepted later are served as usual. It returns how
// many conns were told.
func (u *h2Upstream) goAway() int {
	u.mu.Lock()
	servers := slices.Clone(u.servers)
	u.servers = nil
	u.mu.Unlock()
	for _, s := range servers {
		// The http.Server serves no listener and tracks no conn, so
		// Shutdown returns at once, after starting its OnShutdown hook:
		// the http2.Server's graceful shutdown of its conn.
		s.Shutdown(context.Background())
	}
	return len(servers)
}

func (u *h2Upstream) close() {
	u.ln.Close()
	u.mu.Lock()
	for c := range u.live {
		c.Close()
	}
	u.mu.Unlock()
	u.wg.Wait()
}

// gate holds requests in the handler until the test lets them go, one at
// a time or all at once, and records the order they arrived in.
type gate struct {
	held atomic.Int64 // requests that have entered the handler
	one  chan struct{}
	all  chan struct{}
	once sync.Once

	mu      sync.Mutex // guards arrived
	arrived []string   // request paths, in the order they entered
}

func newGate(t testing.TB) *gate {
	g := &gate{one: make(chan struct{}), all: make(chan struct{})}
	t.Cleanup(g.releaseAll)
	return g
}

// ServeHTTP reads the body, waits for a release (or the conn's end) and
// answers with the method, path and body length.
func (g *gate) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	g.mu.Lock()
	g.arrived = append(g.arrived, r.URL.Path)
	g.mu.Unlock()
	g.held.Add(1)
	n, _ := io.Copy(io.Discard, r.Body)
	select {
	case <-g.one:
	case <-g.all:
	case <-r.Context().Done():
		return
	}
	io.WriteString(w, echo(r.Method, r.URL.Path, n))
}

// releaseOne lets one held request answer; it fails the test if none
// takes the release within a wait far beyond a loaded machine's needs.
func (g *gate) releaseOne(t testing.TB) {
	t.Helper()
	select {
	case g.one <- struct{}{}:
	case <-time.After(10 * time.Second):
		t.Fatal("no held request took the release")
	}
}

func (g *gate) releaseAll() { g.once.Do(func() { close(g.all) }) }

// arrivals returns the paths of the requests that entered, in order.
func (g *gate) arrivals() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.arrived)
}

// echo is what the test handlers answer, so a response can be matched to
// its request.
func echo(method, path string, bodyLen int64) string {
	return method + " " + path + " " + strconv.FormatInt(bodyLen, 10)
}

// answer is a handler that answers at once, like gate does after a
// release.
var answer = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	n, _ := io.Copy(io.Discard, r.Body)
	io.WriteString(w, echo(r.Method, r.URL.Path, n))
})

// freezeProxy is a loopback TCP proxy to one address. freeze makes the
// pairs open now swallow every byte both ways while their sockets stay
// open: to the client, a server that has gone silent. Pairs made later
// relay as usual.
type freezeProxy struct {
	Host, URL string
	ln        net.Listener

	mu    sync.Mutex // guards pairs
	pairs map[*proxyPair]struct{}
	wg    sync.WaitGroup
}

type proxyPair struct {
	client, server net.Conn
	frozen         atomic.Bool
}

func newFreezeProxy(t testing.TB, target string) *freezeProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &freezeProxy{Host: ln.Addr().String(), ln: ln, pairs: make(map[*proxyPair]struct{})}
	p.URL = "http://" + p.Host
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			pr := &proxyPair{client: c, server: s}
			p.mu.Lock()
			p.pairs[pr] = struct{}{}
			p.mu.Unlock()
			p.wg.Add(2)
			go p.pipe(pr, s, c)
			go p.pipe(pr, c, s)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		for pr := range p.pairs {
			pr.client.Close()
			pr.server.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

// pipe copies src to dst until either side ends, dropping what it reads
// while the pair is frozen, then closes both sides.
func (p *freezeProxy) pipe(pr *proxyPair, dst, src net.Conn) {
	defer p.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !pr.frozen.Load() {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	pr.client.Close()
	pr.server.Close()
	p.mu.Lock()
	delete(p.pairs, pr)
	p.mu.Unlock()
}

// freeze silences every pair open now and returns how many.
func (p *freezeProxy) freeze() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	for pr := range p.pairs {
		pr.frozen.Store(true)
	}
	return len(p.pairs)
}

// refusingH2Server answers every stream with RST_STREAM(REFUSED_STREAM)
// and counts the streams it refused.
type refusingH2Server struct {
	URL, Host string
	refused   atomic.Int64
}

func newRefusingH2Server(t testing.TB) *refusingH2Server {
	t.Helper()
	s := &refusingH2Server{}
	srv := h2script.NewServer(t, func(c *h2script.Conn) {
		c.Greet(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 100})
		for {
			st := c.WantHeaders()
			s.refused.Add(1)
			c.WriteRSTStream(st.ID, http2.ErrCodeRefusedStream)
		}
	})
	s.URL, s.Host = srv.URL, srv.Addr
	return s
}

// newH2Engine returns an engine running p that trusts ca (if any) and uses
// no proxy, closed when the test ends.
func newH2Engine(t testing.TB, ca *dialertest.CA, p pool.Policy) *pool.Engine {
	t.Helper()
	opts := pool.Options{
		Policies: pool.PolicySet{Default: p},
		Proxy:    func(*url.URL) (*url.URL, error) { return nil, nil },
	}
	if ca != nil {
		opts.Dialer = &dialer.Dialer{TLSConfig: &tls.Config{RootCAs: ca.Pool, MinVersion: tls.VersionTLS12}}
	}
	e, err := pool.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

// testContext ends when the test does, or after a minute: a hang becomes
// a failure rather than a stuck test binary. It is no budget.
func testContext(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// waitFor polls cond until it holds, failing the test after within; the
// optional state says what was seen instead. The bound only turns a hang
// into a failure; the poll interval is no budget.
func waitFor(t testing.TB, within time.Duration, what string, cond func() bool, state ...func() string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			seen := ""
			for _, s := range state {
				seen += "; " + s()
			}
			t.Fatalf("still waiting for %s after %v%s", what, within, seen)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// h2Host returns the stats of the engine's pool for hostport.
func h2Host(t testing.TB, e *pool.Engine, hostport string) pool.HostStats {
	t.Helper()
	h, ok := e.Host(hostport)
	if !ok {
		t.Fatalf("no pool for %s; pools: %+v", hostport, e.Hosts())
	}
	return h
}

// h2Response is what a test keeps of one exchange.
type h2Response struct {
	protoMajor int
	body       string
	err        error
}

// exchange sends req with send (an Engine's RoundTrip or a Client's Do)
// and reads the whole body.
func exchange(send func(*http.Request) (*http.Response, error), req *http.Request) h2Response {
	resp, err := send(req)
	if err != nil {
		return h2Response{err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = errors.New("status " + resp.Status)
	}
	return h2Response{protoMajor: resp.ProtoMajor, body: string(b), err: err}
}
