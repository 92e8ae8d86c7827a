package dialer

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
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/poold/poold/dialer/dialertest"
)

// testTimeout bounds every wait in a test so a bug fails fast instead of
// hanging the suite.
const testTimeout = 10 * time.Second

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// fakeResolver answers from a map and records what it was asked.
type fakeResolver struct {
	hosts map[string][]netip.Addr
	err   error // returned for every lookup when set
	block bool  // wait until the context ends

	mu    sync.Mutex
	asked []string
}

func (r *fakeResolver) LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error) {
	r.mu.Lock()
	r.asked = append(r.asked, network+" "+host)
	r.mu.Unlock()
	if r.block {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	if r.err != nil {
		return nil, r.err
	}
	addrs, ok := r.hosts[host]
	if !ok {
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	return addrs, nil
}

func (r *fakeResolver) questions() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.asked...)
}

func addrs(ss ...string) []netip.Addr {
	out := make([]netip.Addr, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParseAddr(s)
	}
	return out
}

// listen opens a loopback listener closed at the end of the test.
func listen(t *testing.T, network, addr string) *net.TCPListener {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		if network == "tcp6" {
			t.Skipf("no IPv6 loopback: %v", err)
		}
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln.(*net.TCPListener)
}

func portOf(a net.Addr) string {
	return strconv.Itoa(a.(*net.TCPAddr).Port)
}

// server accepts on a listener and runs handle for each conn. Cleanup
// closes the listener and every conn and waits for every goroutine.
type server struct {
	wg     sync.WaitGroup
	mu     sync.Mutex
	closed bool
	conns  []net.Conn
}

func serve(t *testing.T, ln net.Listener, handle func(net.Conn)) *server {
	t.Helper()
	s := &server{}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if !s.track(c) {
				c.Close()
				return
			}
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer c.Close()
				handle(c)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		s.mu.Lock()
		s.closed = true
		for _, c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	return s
}

func (s *server) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns = append(s.conns, c)
	return true
}

func echo(c net.Conn) { io.Copy(c, c) }

// closedPort returns a loopback port with nothing listening on it, so a
// connect there is refused.
func closedPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := portOf(ln.Addr())
	ln.Close()
	return port
}

// testPKI is a CA and a leaf for "example.test", 127.0.0.1 and ::1, made
// fresh for a test.
type testPKI struct {
	roots *x509.CertPool
	caPEM []byte
	leaf  tls.Certificate
}

func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	ca := dialertest.NewCA(t)
	return &testPKI{roots: ca.Pool, caPEM: ca.PEM, leaf: ca.Certificate(t, 2, "example.test", "127.0.0.1", "::1")}
}

// blackhole returns a loopback listener whose connects get no answer.
func blackhole(t *testing.T, network, addr string) *net.TCPListener {
	t.Helper()
	return dialertest.Blackhole(t, network, addr)
}

func (p *testPKI) clientConfig() *tls.Config {
	return &tls.Config{RootCAs: p.roots, MinVersion: tls.VersionTLS12}
}

// tlsUpstream is a TLS echo server on 127.0.0.1 that records the SNI of
// every ClientHello.
type tlsUpstream struct {
	port string
	sni  chan string
}

func newTLSUpstream(t *testing.T, pki *testPKI, protos ...string) *tlsUpstream {
	t.Helper()
	u := &tlsUpstream{sni: make(chan string, 16)}
	cfg := &tls.Config{
		Certificates: []tls.Certificate{pki.leaf},
		NextProtos:   protos,
		GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
			select {
			case u.sni <- h.ServerName:
			default:
			}
			return nil, nil
		},
	}
	ln := listen(t, "tcp", "127.0.0.1:0")
	u.port = portOf(ln.Addr())
	serve(t, ln, func(c net.Conn) {
		tc := tls.Server(c, cfg)
		if tc.Handshake() != nil {
			return
		}
		io.Copy(tc, tc)
	})
	return u
}

// roundTrip writes msg and reads it back from an echo server.
func roundTrip(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(testTimeout))
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatalf("write: %v", err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("read: %v", err)
	}
	if string(got) != msg {
		t.Fatalf("echo = %q, want %q", got, msg)
	}
}

// testProxy is an HTTP proxy on 127.0.0.1. It answers CONNECT with reply,
// and a tunnel (reply == 0) goes only to loopback, names mapped by hosts.
// A plain request gets a fixed 200 so a test can see it arrived.
type testProxy struct {
	url      string
	hostport string
	requests chan *http.Request
	srv      *server
}

type proxyReply int

const (
	tunnel  proxyReply = 0
	endless proxyReply = -1 // a 200 whose header never ends
)

func newTestProxy(t *testing.T, reply proxyReply, hosts map[string]string) *testProxy {
	t.Helper()
	ln := listen(t, "tcp", "127.0.0.1:0")
	p := &testProxy{
		hostport: ln.Addr().String(),
		requests: make(chan *http.Request, 16),
	}
	p.url = "http://" + p.hostport
	p.srv = serve(t, ln, func(c net.Conn) {
		br := bufio.NewReader(c)
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		p.requests <- req
		switch {
		case req.Method != http.MethodConnect:
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
		case reply == endless:
			io.WriteString(c, "HTTP/1.1 200 OK\r\n")
			line := "X-Filler: " + strings.Repeat("a", 1000) + "\r\n"
			for {
				if _, err := io.WriteString(c, line); err != nil {
					return
				}
			}
		case reply != tunnel:
			fmt.Fprintf(c, "HTTP/1.1 %d %s\r\nContent-Length: 0\r\n\r\n", reply, http.StatusText(int(reply)))
		default:
			p.tunnel(c, br, req.Host, hosts)
		}
	})
	return p
}

func (p *testProxy) tunnel(c net.Conn, br *bufio.Reader, target string, hosts map[string]string) {
	host, port, err := net.SplitHostPort(target)
	if err != nil {
		return
	}
	if h, ok := hosts[host]; ok {
		host = h
	}
	if ip, err := netip.ParseAddr(host); err != nil || !ip.IsLoopback() {
		io.WriteString(c, "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
		return
	}
	up, err := net.Dial("tcp", net.JoinHostPort(host, port))
	if err != nil {
		io.WriteString(c, "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
		return
	}
	defer up.Close()
	io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n")
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		io.Copy(up, br)
		up.(*net.TCPConn).CloseWrite()
	}()
	io.Copy(c, up)
	c.Close()
	up.Close()
	wg.Wait()
}

// request returns the request the proxy received first.
func (p *testProxy) request(t *testing.T) *http.Request {
	t.Helper()
	select {
	case r := <-p.requests:
		return r
	case <-time.After(testTimeout):
		t.Fatal("the proxy got no request")
		return nil
	}
}

// dialError asserts err is a *Error at step and returns it.
func dialError(t *testing.T, err error, step Step) *Error {
	t.Helper()
	var de *Error
	if !errors.As(err, &de) {
		t.Fatalf("err = %v (%T), want *dialer.Error", err, err)
	}
	if de.Step != step {
		t.Fatalf("step = %q, want %q (err: %v)", de.Step, step, err)
	}
	return de
}
