package pool

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/poold/poold/dialer"
	"github.com/poold/poold/dialer/dialertest"
)

// upstream is a byte-level HTTP/1.1 server on loopback. Each test picks
// how it answers with a verb (respond, closeAfterResponse, stallHeaders,
// ...); the server counts connections so tests can check what the pool
// did on the wire.
type upstream struct {
	t    testing.TB
	ln   net.Listener
	URL  string
	host string // host:port

	handler atomic.Pointer[handler]

	accepted atomic.Int64 // connections accepted
	open     atomic.Int64 // connections open now
	maxOpen  atomic.Int64 // most connections open at once
	requests atomic.Int64
	closed   atomic.Int64 // connections the server has finished with

	done chan struct{} // closed at cleanup: stalled handlers give up
	wg   sync.WaitGroup
	mu   sync.Mutex
	live map[net.Conn]struct{}
}

// handler answers one request on a server-side connection. Returning false
// closes the connection.
type handler func(s *serverConn, r *http.Request) bool

// serverConn is one server-side connection.
type serverConn struct {
	u      *upstream
	conn   net.Conn
	br     *bufio.Reader
	served int // requests read on this conn, this one included
}

func newUpstream(t testing.TB, h handler) *upstream {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return startUpstream(t, ln, "http", h)
}

// newTLSUpstream serves TLS with a leaf of ca; edits adjust the server's
// TLS config.
func newTLSUpstream(t testing.TB, ca *testCA, h handler, edits ...func(*tls.Config)) *upstream {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{ca.leaf}, NextProtos: []string{"http/1.1"}}
	for _, e := range edits {
		e(cfg)
	}
	return startUpstream(t, tls.NewListener(ln, cfg), "https", h)
}

func startUpstream(t testing.TB, ln net.Listener, scheme string, h handler) *upstream {
	u := &upstream{t: t, ln: ln, host: ln.Addr().String(), done: make(chan struct{}), live: make(map[net.Conn]struct{})}
	u.URL = scheme + "://" + u.host
	u.setHandler(h)
	u.wg.Add(1)
	go u.serve()
	t.Cleanup(u.close)
	return u
}

func (u *upstream) setHandler(h handler) { u.handler.Store(&h) }

func (u *upstream) serve() {
	defer u.wg.Done()
	for {
		c, err := u.ln.Accept()
		if err != nil {
			return
		}
		u.accepted.Add(1)
		n := u.open.Add(1)
		for {
			m := u.maxOpen.Load()
			if n <= m || u.maxOpen.CompareAndSwap(m, n) {
				break
			}
		}
		u.mu.Lock()
		u.live[c] = struct{}{}
		u.mu.Unlock()
		u.wg.Add(1)
		go u.handle(c)
	}
}

func (u *upstream) handle(c net.Conn) {
	defer u.wg.Done()
	defer func() {
		c.Close()
		u.mu.Lock()
		delete(u.live, c)
		u.mu.Unlock()
		u.open.Add(-1)
		u.closed.Add(1)
	}()
	s := &serverConn{u: u, conn: c, br: bufio.NewReader(c)}
	for {
		r, err := http.ReadRequest(s.br)
		if err != nil {
			return
		}
		s.served++
		u.requests.Add(1)
		if !(*u.handler.Load())(s, r) {
			return
		}
		if _, err := io.Copy(io.Discard, r.Body); err != nil {
			return
		}
	}
}

func (u *upstream) close() {
	close(u.done)
	u.ln.Close()
	u.mu.Lock()
	for c := range u.live {
		c.Close()
	}
	u.mu.Unlock()
	u.wg.Wait()
}

// resetMaxOpen starts a new measurement of concurrent connections.
func (u *upstream) resetMaxOpen() { u.maxOpen.Store(u.open.Load()) }

// write sends raw bytes; the verbs build on it.
func (s *serverConn) write(raw string) bool {
	_, err := io.WriteString(s.conn, raw)
	return err == nil
}

// reply sends a complete response with a Content-Length.
func (s *serverConn) reply(status int, header, body string) bool {
	return s.write(fmt.Sprintf("HTTP/1.1 %d %s\r\n%sContent-Length: %d\r\n\r\n%s",
		status, http.StatusText(status), header, len(body), body))
}

// respond answers every request with 200 and body, reading the request
// body first, and keeps the connection open.
func respond(body string) handler {
	return func(s *serverConn, r *http.Request) bool {
		io.Copy(io.Discard, r.Body)
		return s.reply(200, "", body)
	}
}

// echoPath answers with the request's method and path, so a test can tell
// which request a response belongs to.
func echoPath() handler {
	return func(s *serverConn, r *http.Request) bool {
		b, _ := io.ReadAll(r.Body)
		return s.reply(200, "", fmt.Sprintf("%s %s %d", r.Method, r.URL.Path, len(b)))
	}
}

// closeAfterResponse answers, then closes the conn without saying so:
// the conn the client pools is dead.
func closeAfterResponse(body string) handler {
	return func(s *serverConn, r *http.Request) bool {
		s.reply(200, "", body)
		return false
	}
}

// closeBeforeSecondResponse serves the first request on each conn and
// drops the conn on reading the second, the keep-alive race made certain.
func closeBeforeSecondResponse(body string) handler {
	return func(s *serverConn, r *http.Request) bool {
		if s.served >= 2 {
			return false
		}
		io.Copy(io.Discard, r.Body)
		return s.reply(200, "", body)
	}
}

// stallHeaders reads the request and sends nothing until release is
// closed (or the server shuts down), then answers with body.
func stallHeaders(release <-chan struct{}, body string) handler {
	return func(s *serverConn, r *http.Request) bool {
		select {
		case <-release:
		case <-s.u.done:
			return false
		}
		return s.reply(200, "", body)
	}
}

// stallPath stalls requests for one path and answers the rest with their
// path.
func stallPath(path string, release <-chan struct{}) handler {
	stall, echo := stallHeaders(release, "released"), echoPath()
	return func(s *serverConn, r *http.Request) bool {
		if r.URL.Path == path {
			return stall(s, r)
		}
		return echo(s, r)
	}
}

// testCA is a certificate authority made for one test, with a leaf for
// 127.0.0.1 and localhost.
type testCA struct {
	pool *x509.CertPool
	leaf tls.Certificate
}

func newTestCA(t testing.TB) *testCA {
	t.Helper()
	ca := dialertest.NewCA(t)
	return &testCA{pool: ca.Pool, leaf: ca.Certificate(t, 2, "localhost", "127.0.0.1", "::1")}
}

func (ca *testCA) dialer() *dialer.Dialer {
	// A resumption cache, as in production, makes TLS 1.3 servers send
	// resumption data after the handshake.
	return &dialer.Dialer{TLSConfig: &tls.Config{RootCAs: ca.pool, MinVersion: tls.VersionTLS12, ClientSessionCache: tls.NewLRUClientSessionCache(16)}}
}

// connectProxy is a loopback forward proxy: CONNECT makes a tunnel, an
// absolute-form request is forwarded on a fresh upstream conn.
type connectProxy struct {
	ln       net.Listener
	URL      *url.URL
	connects atomic.Int64
	forwards atomic.Int64
	lastURI  atomic.Value // string: the request-target of the last forwarded request
	wg       sync.WaitGroup
	mu       sync.Mutex
	live     map[net.Conn]struct{}
}

func newConnectProxy(t testing.TB) *connectProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &connectProxy{ln: ln, URL: &url.URL{Scheme: "http", Host: ln.Addr().String()}, live: make(map[net.Conn]struct{})}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.track(c)
			p.wg.Add(1)
			go p.serve(c)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		for c := range p.live {
			c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

func (p *connectProxy) track(c net.Conn) {
	p.mu.Lock()
	p.live[c] = struct{}{}
	p.mu.Unlock()
}

func (p *connectProxy) serve(c net.Conn) {
	defer p.wg.Done()
	defer c.Close()
	br := bufio.NewReader(c)
	for {
		r, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		if r.Method == http.MethodConnect {
			p.connects.Add(1)
			up, err := net.Dial("tcp", r.Host)
			if err != nil {
				io.WriteString(c, "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
				return
			}
			p.track(up)
			io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n")
			done := make(chan struct{})
			go func() {
				io.Copy(up, br)
				up.Close()
				close(done)
			}()
			io.Copy(c, up)
			c.Close()
			<-done
			return
		}
		p.forwards.Add(1)
		p.lastURI.Store(r.RequestURI)
		if !r.URL.IsAbs() {
			io.WriteString(c, "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
			return
		}
		if err := p.forward(c, r); err != nil {
			return
		}
	}
}

// forward relays one absolute-form request on its own upstream conn.
func (p *connectProxy) forward(c net.Conn, r *http.Request) error {
	up, err := net.Dial("tcp", r.URL.Host)
	if err != nil {
		return err
	}
	defer up.Close()
	r.RequestURI = ""
	r.Close = true
	if err := r.Write(up); err != nil {
		return err
	}
	resp, err := http.ReadResponse(bufio.NewReader(up), r)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	resp.Close = false
	resp.Header.Del("Connection")
	return resp.Write(c)
}

// policy builds a Policy from edits to an empty one.
func policy(edits ...func(*Policy)) Policy {
	var p Policy
	for _, e := range edits {
		e(&p)
	}
	return p
}

func ptr[T any](v T) *T { return &v }

// newTestEngine returns an engine that never consults the environment for
// proxies, closed when the test ends. Its reaper is left to sleep for an
// hour unless opts say otherwise: a test that needs a sweep runs one with
// sweepNow, at a time of its choosing on its own clock, rather than
// waiting for a ticker.
func newTestEngine(t testing.TB, opts Options, edits ...func(*Policy)) *Engine {
	t.Helper()
	if opts.Proxy == nil {
		opts.Proxy = func(*url.URL) (*url.URL, error) { return nil, nil }
	}
	if opts.SweepInterval == 0 {
		opts.SweepInterval = time.Hour
	}
	opts.Policies.Default = opts.Policies.Default.Merge(policy(edits...))
	e, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

// result is what a test needs from one response.
type result struct {
	status int
	body   string
	timing Timing
}

// do sends req and reads the whole body.
func do(e *Engine, req *http.Request) (result, error) {
	resp, err := e.RoundTrip(req)
	if err != nil {
		return result{}, err
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return result{}, err
	}
	tm, _ := TimingFrom(resp)
	return result{status: resp.StatusCode, body: string(b), timing: tm}, nil
}

func newRequest(t testing.TB, ctx context.Context, method, url, body string) *http.Request {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// mustGet sends a GET that must succeed with 200.
func mustGet(t testing.TB, e *Engine, url string) result {
	t.Helper()
	r, err := do(e, newRequest(t, context.Background(), "GET", url, ""))
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	if r.status != 200 {
		t.Fatalf("GET %s: status %d", url, r.status)
	}
	return r
}

// eventually polls cond until it holds. The deadline only turns a hang
// into a failure, so it is far beyond anything a loaded machine needs; the
// poll interval is no budget.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// fakeClock is a clock for Options.Now that moves only when told to.
type fakeClock struct{ now atomic.Int64 } // Unix nanoseconds

func newFakeClock() *fakeClock {
	c := &fakeClock{}
	c.now.Store(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	return c
}

func (c *fakeClock) Now() time.Time { return time.Unix(0, c.now.Load()) }

func (c *fakeClock) Advance(d time.Duration) { c.now.Add(int64(d)) }

// sweepNow runs one sweep of every pool at the engine's time, as the
// reaper does on each tick, and returns when it is done.
func sweepNow(e *Engine) {
	e.sweepOnce(e.now())
}

// hostStats returns the stats of the pool for u.
func hostStats(t testing.TB, e *Engine, u *upstream) HostStats {
	t.Helper()
	h, ok := e.Host(u.host)
	if !ok {
		t.Fatalf("no pool for %s; pools: %+v", u.host, e.Hosts())
	}
	return h
}

// poolError asserts err is an *Error in phase.
func poolError(t testing.TB, err error, phase Phase) *Error {
	t.Helper()
	var pe *Error
	if !errors.As(err, &pe) {
		t.Fatalf("error %v (%T) is not a *pool.Error", err, err)
	}
	if pe.Phase != phase {
		t.Fatalf("error %v: phase %q, want %q", err, pe.Phase, phase)
	}
	return pe
}

var nowForTest = time.Now
