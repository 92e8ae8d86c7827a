package server

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"github.com/poold/poold/dialer"
	"github.com/poold/poold/dialer/dialertest"
	pooldv1 "github.com/poold/poold/gen/poold/v1"
	"github.com/poold/poold/pool"
)

// This file is the harness of the hardening suites (adversarial_test.go,
// soak_test.go): upstreams that misbehave on purpose, a resolver that
// answers what a test tells it to, an egress guard that makes sure nothing
// but loopback is ever dialed, and a daemon put together the way
// cmd/poold puts it together.

// Timeouts the test daemons run under, short so that the suites are fast.
const (
	advDialTimeout   = 300 * time.Millisecond
	advTLSTimeout    = 300 * time.Millisecond
	advHeaderTimeout = 300 * time.Millisecond
	// advConnLimit bounds every adversary connection, so that a stall
	// never outlives a test that forgot about it.
	advConnLimit = 10 * time.Second
)

// adversary is a raw TCP upstream on 127.0.0.1 that speaks as much HTTP as
// each verb wants. A verb (ok, stallHeaders, resetMidBody, ...) sets what
// it does with every connection it accepts from then on.
type adversary struct {
	lis  net.Listener
	addr string // 127.0.0.1:port

	heads    chan *http.Request // a request head was read; dropped when full
	aborts   chan struct{}      // the client closed a connection this end held open
	progress chan struct{}      // a verb reached its interesting point (say, mid-body)
	done     chan struct{}      // closed when the test ends
	wg       sync.WaitGroup

	mu      sync.Mutex // guards following fields
	serve   func(*advConn)
	tlsConf *tls.Config // when set, connections speak TLS before the verb runs
	conns   map[net.Conn]struct{}
	ids     map[string]int // X-Request-Id → request heads seen
}

// newAdversary listens on 127.0.0.1 and answers every request with 200 ok
// until a verb says otherwise. It stops when the test ends.
func newAdversary(t testing.TB) *adversary {
	t.Helper()
	return newAdversaryOn(t, "127.0.0.1:0")
}

func newAdversaryOn(t testing.TB, addr string) *adversary {
	t.Helper()
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen %s: %v", addr, err)
	}
	a := &adversary{
		lis:      lis,
		addr:     lis.Addr().String(),
		heads:    make(chan *http.Request, 256),
		aborts:   make(chan struct{}, 256),
		progress: make(chan struct{}, 256),
		done:     make(chan struct{}),
		conns:    map[net.Conn]struct{}{},
		ids:      map[string]int{},
	}
	a.serve = func(c *advConn) { c.serveOK() }
	a.wg.Add(1)
	go a.accept()
	t.Cleanup(a.close)
	return a
}

func (a *adversary) accept() {
	defer a.wg.Done()
	for {
		nc, err := a.lis.Accept()
		if err != nil {
			return
		}
		a.mu.Lock()
		select {
		case <-a.done:
			a.mu.Unlock()
			nc.Close()
			return
		default:
		}
		a.conns[nc] = struct{}{}
		serve, conf := a.serve, a.tlsConf
		a.mu.Unlock()
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			defer func() {
				a.mu.Lock()
				delete(a.conns, nc)
				a.mu.Unlock()
				nc.Close()
			}()
			_ = nc.SetDeadline(time.Now().Add(advConnLimit))
			var c net.Conn = nc
			if conf != nil {
				tc := tls.Server(nc, conf)
				if tc.Handshake() != nil {
					return
				}
				c = tc
			}
			serve(&advConn{a: a, nc: c, tcp: nc.(*net.TCPConn), br: bufio.NewReader(c)})
		}()
	}
}

// close stops the listener, cuts every connection and waits for them.
func (a *adversary) close() {
	a.mu.Lock()
	close(a.done)
	a.lis.Close()
	for c := range a.conns {
		c.Close()
	}
	a.mu.Unlock()
	a.wg.Wait()
}

// set makes serve the verb for connections accepted from now on.
func (a *adversary) set(serve func(*advConn)) *adversary {
	a.mu.Lock()
	a.serve = serve
	a.mu.Unlock()
	return a
}

// useTLS makes connections accepted from now on speak TLS with conf.
func (a *adversary) useTLS(conf *tls.Config) *adversary {
	a.mu.Lock()
	a.tlsConf = conf
	a.mu.Unlock()
	return a
}

// seen returns how many request heads carried X-Request-Id id.
func (a *adversary) seen(id string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.ids[id]
}

// seenIDs returns a copy of the X-Request-Id counts.
func (a *adversary) seenIDs() map[string]int {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make(map[string]int, len(a.ids))
	for k, v := range a.ids {
		out[k] = v
	}
	return out
}

// wantHead waits for the next request head.
func (a *adversary) wantHead(t *testing.T) *http.Request {
	t.Helper()
	return receive(t, a.heads, "a request head at "+a.addr)
}

// signal sends on ch without blocking: nobody may be listening.
func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// advConn is one connection an adversary accepted.
type advConn struct {
	a   *adversary
	nc  net.Conn     // a *tls.Conn when the adversary speaks TLS
	tcp *net.TCPConn // the socket, for resets
	br  *bufio.Reader
}

// readHead reads a request head, leaving the body unread, and records it.
func (c *advConn) readHead() (*http.Request, bool) {
	req, err := http.ReadRequest(c.br)
	if err != nil {
		return nil, false
	}
	c.a.mu.Lock()
	c.a.ids[req.Header.Get("X-Request-Id")]++
	c.a.mu.Unlock()
	select {
	case c.a.heads <- req:
	default:
	}
	return req, true
}

// readRequest reads a whole request, body included.
func (c *advConn) readRequest() (*http.Request, bool) {
	req, ok := c.readHead()
	if !ok {
		return nil, false
	}
	if _, err := io.Copy(io.Discard, req.Body); err != nil {
		return nil, false
	}
	return req, true
}

// write sends raw bytes, reporting whether they went out.
func (c *advConn) write(raw string) bool {
	_, err := io.WriteString(c.nc, raw)
	return err == nil
}

// trickle sends raw one byte per gap, giving up when the client leaves.
func (c *advConn) trickle(raw string, gap time.Duration) {
	t := time.NewTicker(gap)
	defer t.Stop()
	for i := 0; i < len(raw); i++ {
		if !c.write(raw[i : i+1]) {
			return
		}
		select {
		case <-t.C:
		case <-c.a.done:
			return
		}
	}
}

// stall holds the connection open, reading and dropping whatever comes,
// until the client closes it (signalled on aborts), the adversary stops
// or advConnLimit passes.
func (c *advConn) stall() {
	_, err := io.Copy(io.Discard, c.br)
	if err == nil || errors.Is(err, syscall.ECONNRESET) {
		select {
		case <-c.a.done:
		default:
			signal(c.a.aborts)
		}
	}
}

// reset aborts the connection with a TCP RST instead of a FIN.
func (c *advConn) reset() {
	_ = c.tcp.SetLinger(0)
	c.tcp.Close()
}

// serveOK answers every request on the connection with 200 "ok".
func (c *advConn) serveOK() {
	for {
		if _, ok := c.readRequest(); !ok {
			return
		}
		if !c.write("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok") {
			return
		}
	}
}

// The verbs. Each reads the request (unless it says otherwise) and then
// misbehaves in one way.

// ok answers every request with 200 "ok", keeping connections alive.
func (a *adversary) ok() *adversary { return a.set(func(c *advConn) { c.serveOK() }) }

// reply answers the first request with raw and closes, like a server that
// sends a broken response and gives up.
func (a *adversary) reply(raw string) *adversary {
	return a.set(func(c *advConn) {
		if _, ok := c.readRequest(); ok {
			c.write(raw)
		}
	})
}

// replyAndStall answers with raw and keeps the connection open.
func (a *adversary) replyAndStall(raw string) *adversary {
	return a.set(func(c *advConn) {
		if _, ok := c.readRequest(); ok && c.write(raw) {
			signal(c.a.progress)
			c.stall()
		}
	})
}

// closeImmediately closes each connection as soon as it is accepted.
func (a *adversary) closeImmediately() *adversary { return a.set(func(c *advConn) {}) }

// resetBeforeResponse reads the request and resets the connection.
func (a *adversary) resetBeforeResponse() *adversary {
	return a.set(func(c *advConn) {
		if _, ok := c.readRequest(); ok {
			c.reset()
		}
	})
}

// closeAfterHeaders promises a body and closes before sending any of it.
func (a *adversary) closeAfterHeaders() *adversary {
	return a.reply("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
}

// truncatedBody sends 10 of the 100 bytes it promised and closes.
func (a *adversary) truncatedBody() *adversary {
	return a.reply("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
}

// truncatedChunked closes a chunked body before its last chunk.
func (a *adversary) truncatedChunked() *adversary {
	return a.reply("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
}

// resetMidBody sends part of the body and resets the connection.
func (a *adversary) resetMidBody() *adversary {
	return a.set(func(c *advConn) {
		if _, ok := c.readRequest(); ok && c.write("HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial") {
			c.reset()
		}
	})
}

// stallHeaders reads the request and never answers.
func (a *adversary) stallHeaders() *adversary {
	return a.set(func(c *advConn) {
		if _, ok := c.readRequest(); ok {
			c.stall()
		}
	})
}

// stallAfterHead reads only the request head, then holds the connection,
// draining whatever body comes, and never answers.
func (a *adversary) stallAfterHead() *adversary {
	return a.set(func(c *advConn) {
		if _, ok := c.readHead(); ok {
			c.stall()
		}
	})
}

// stallBody sends the head and part of the body, then goes quiet.
func (a *adversary) stallBody() *adversary {
	return a.replyAndStall("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
}

// slowLorisHeaders trickles the response head a byte at a time.
func (a *adversary) slowLorisHeaders() *adversary {
	return a.set(func(c *advConn) {
		if _, ok := c.readRequest(); ok {
			c.trickle("HTTP/1.1 200 OK\r\nX-Slow: "+strings.Repeat("s", 400)+"\r\n\r\n", 20*time.Millisecond)
		}
	})
}

// slowLorisBody sends the head at once and trickles a chunked body, one
// byte per chunk.
func (a *adversary) slowLorisBody() *adversary {
	return a.set(func(c *advConn) {
		if _, ok := c.readRequest(); !ok || !c.write("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n") {
			return
		}
		signal(c.a.progress)
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for range 400 {
			if !c.write("1\r\nx\r\n") {
				return
			}
			select {
			case <-t.C:
			case <-c.a.done:
				return
			}
		}
	})
}

// sendGarbage answers with bytes that are not HTTP.
func (a *adversary) sendGarbage() *adversary {
	return a.reply("this is not HTTP at all\r\n\r\n")
}

// badStatusLine answers with a status code that is not a number.
func (a *adversary) badStatusLine() *adversary {
	return a.reply("HTTP/1.1 2OO OK\r\nContent-Length: 0\r\n\r\n")
}

// hugeHeaders answers with one header field of n bytes.
func (a *adversary) hugeHeaders(n int) *adversary {
	return a.reply("HTTP/1.1 200 OK\r\nX-Huge: " + strings.Repeat("h", n) + "\r\nContent-Length: 2\r\n\r\nok")
}

// badChunked sends a chunk size that is not hexadecimal.
func (a *adversary) badChunked() *adversary {
	return a.reply("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n")
}

// chunkExtensionFlood sends one data byte per chunk with a kilobyte of
// chunk extension each: almost all framing, no data.
func (a *adversary) chunkExtensionFlood() *adversary {
	return a.set(func(c *advConn) {
		if _, ok := c.readRequest(); !ok || !c.write("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n") {
			return
		}
		chunk := "1;ext=" + strings.Repeat("e", 1000) + "\r\nx\r\n"
		for range 1000 {
			if !c.write(chunk) {
				return
			}
		}
	})
}

// chunkLineTooLong sends a chunk-size line longer than any reader takes.
func (a *adversary) chunkLineTooLong() *adversary {
	return a.reply("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;" + strings.Repeat("e", 8000) + "\r\nx\r\n0\r\n\r\n")
}

// duplicateContentLength repeats an identical Content-Length.
func (a *adversary) duplicateContentLength() *adversary {
	return a.set(func(c *advConn) {
		for {
			if _, ok := c.readRequest(); !ok || !c.write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok") {
				return
			}
		}
	})
}

// conflictingContentLength sends two different Content-Lengths, the
// classic request-smuggling shape.
func (a *adversary) conflictingContentLength() *adversary {
	return a.reply("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 7\r\n\r\nok-more")
}

// invalidContentLength sends a Content-Length that is not a decimal number.
func (a *adversary) invalidContentLength() *adversary {
	return a.reply("HTTP/1.1 200 OK\r\nContent-Length: 0x10\r\n\r\n0123456789abcdef")
}

// contentLengthWithChunked sends both framings; chunked must win.
func (a *adversary) contentLengthWithChunked() *adversary {
	return a.reply("HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
}

// unknownTransferEncoding frames the body with a coding nobody knows.
func (a *adversary) unknownTransferEncoding() *adversary {
	return a.reply("HTTP/1.1 200 OK\r\nTransfer-Encoding: rot13\r\n\r\nbx")
}

// invalidHeaderLine sends a header field name with a character no token
// may hold. (A space is not enough: Go accepts "Bad Name: x", see
// go.dev/issue/34540.)
func (a *adversary) invalidHeaderLine() *adversary {
	return a.reply("HTTP/1.1 200 OK\r\nBad(Header): x\r\nContent-Length: 2\r\n\r\nok")
}

// bytesAfterResponse sends more than Content-Length promised.
func (a *adversary) bytesAfterResponse() *adversary {
	return a.replyAndStall("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled")
}

// http10UntilClose answers in HTTP/1.0 with a body that runs until close.
func (a *adversary) http10UntilClose() *adversary {
	return a.reply("HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close")
}

// unsolicitedUpgrade switches protocols nobody asked for and goes quiet.
func (a *adversary) unsolicitedUpgrade() *adversary {
	return a.replyAndStall("HTTP/1.1 101 Switching Protocols\r\nUpgrade: evil\r\nConnection: Upgrade\r\n\r\n")
}

// infinite1xx sends informational responses and never a final one.
func (a *adversary) infinite1xx(code int) *adversary {
	return a.set(func(c *advConn) {
		if _, ok := c.readRequest(); !ok {
			return
		}
		head := fmt.Sprintf("HTTP/1.1 %d %s\r\nLink: </style.css>; rel=preload\r\n\r\n", code, http.StatusText(code))
		for range 1000 {
			if !c.write(head) {
				return
			}
		}
		c.stall()
	})
}

// some1xxThenOK sends n 103 Early Hints before a 200.
func (a *adversary) some1xxThenOK(n int) *adversary {
	return a.reply(strings.Repeat("HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n", n) +
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
}

// infiniteBody sends a chunked body that never ends (up to 64 MiB).
func (a *adversary) infiniteBody() *adversary {
	return a.set(func(c *advConn) {
		if _, ok := c.readRequest(); !ok || !c.write("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n") {
			return
		}
		chunk := fmt.Sprintf("%x\r\n%s\r\n", 32<<10, strings.Repeat("b", 32<<10))
		for range 2048 {
			if !c.write(chunk) {
				return
			}
		}
	})
}

// earlyResponseDuringUpload answers 413 after the request head, without
// reading the body, then reads and drops the body as it comes (the
// lingering close real servers do) so the client hears the answer.
func (a *adversary) earlyResponseDuringUpload() *adversary {
	return a.set(func(c *advConn) {
		if _, ok := c.readHead(); !ok {
			return
		}
		if !c.write("HTTP/1.1 413 Content Too Large\r\nConnection: close\r\nContent-Length: 8\r\n\r\ntoo much") {
			return
		}
		_ = c.tcp.CloseWrite()
		c.stall()
	})
}

// continueThenOK answers Expect: 100-continue with 100 Continue, reads the
// body and answers 200 "ok".
func (a *adversary) continueThenOK() *adversary {
	return a.set(func(c *advConn) {
		req, ok := c.readHead()
		if !ok || !c.write("HTTP/1.1 100 Continue\r\n\r\n") {
			return
		}
		if _, err := io.Copy(io.Discard, req.Body); err == nil {
			c.write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
	})
}

// closeOnSecondRequest serves the first request of each connection and
// closes the connection when the second arrives, without answering: the
// keep-alive race, where a server times out an idle connection just as a
// client reuses it.
func (a *adversary) closeOnSecondRequest() *adversary {
	return a.set(func(c *advConn) {
		if _, ok := c.readRequest(); !ok || !c.write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok") {
			return
		}
		c.readRequest()
	})
}

// redirectTo answers every request with 302 to location.
func (a *adversary) redirectTo(location string) *adversary {
	return a.set(func(c *advConn) {
		for {
			if _, ok := c.readRequest(); !ok {
				return
			}
			if !c.write("HTTP/1.1 302 Found\r\nLocation: " + location + "\r\nContent-Length: 0\r\n\r\n") {
				return
			}
		}
	})
}

// TLS verbs. A TLS adversary answers with ok over TLS (useTLS); these
// misbehave before or during the handshake.

// tlsStall accepts TCP and never takes part in a handshake.
func (a *adversary) tlsStall() *adversary {
	return a.set(func(c *advConn) {
		signal(c.a.progress)
		c.stall()
	})
}

// tlsGarbage answers the ClientHello with plain text.
func (a *adversary) tlsGarbage() *adversary {
	return a.set(func(c *advConn) {
		buf := make([]byte, 1)
		if _, err := c.br.Read(buf); err == nil {
			c.write("HTTP/1.1 400 Bad Request\r\n\r\nnot TLS")
		}
	})
}

// Proxy verbs: the adversary plays a forward proxy and answers CONNECT.

// connect407 answers CONNECT with 407.
func (a *adversary) connect407() *adversary {
	return a.reply("HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"x\"\r\nContent-Length: 0\r\n\r\n")
}

// connectClose closes the connection on CONNECT.
func (a *adversary) connectClose() *adversary {
	return a.set(func(c *advConn) { c.readHead() })
}

// connectGarbage answers CONNECT with bytes that are not HTTP.
func (a *adversary) connectGarbage() *adversary {
	return a.reply("SSH-2.0-OpenSSH_9.6\r\n\r\n")
}

// connectHugeHeaders answers CONNECT with 200 and an endless head.
func (a *adversary) connectHugeHeaders() *adversary {
	return a.set(func(c *advConn) {
		if _, ok := c.readHead(); !ok || !c.write("HTTP/1.1 200 Connection Established\r\n") {
			return
		}
		line := "X-Pad: " + strings.Repeat("p", 1000) + "\r\n"
		for range 1000 {
			if !c.write(line) {
				return
			}
		}
	})
}

// connectStall reads CONNECT and never answers.
func (a *adversary) connectStall() *adversary {
	return a.set(func(c *advConn) {
		if _, ok := c.readHead(); ok {
			c.stall()
		}
	})
}

// connectTunnel is a working proxy that tunnels to the requested port on
// 127.0.0.1, whatever host was asked for: it never leaves loopback.
func (a *adversary) connectTunnel() *adversary {
	return a.set(func(c *advConn) {
		req, ok := c.readHead()
		if !ok {
			return
		}
		_, port, err := net.SplitHostPort(req.Host)
		if req.Method != http.MethodConnect || err != nil {
			c.write("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
			return
		}
		up, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", port), time.Second)
		if err != nil {
			c.write("HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
			return
		}
		defer up.Close()
		_ = up.SetDeadline(time.Now().Add(advConnLimit))
		if !c.write("HTTP/1.1 200 Connection Established\r\n\r\n") {
			return
		}
		copied := make(chan struct{})
		go func() {
			defer close(copied)
			_, _ = io.Copy(c.nc, up)
			c.nc.Close()
		}()
		_, _ = io.Copy(up, c.br)
		up.Close()
		<-copied
	})
}

// fakeResolver answers lookups from a table the test fills; every other
// name does not exist. It never asks real DNS.
type fakeResolver struct {
	mu      sync.Mutex // guards following fields
	answers map[string][][]netip.Addr
	lookups map[string]int
	hold    map[string]chan struct{} // names whose lookups block until the dial gives up
}

// newFakeResolver knows the spellings of 127.0.0.1 and 169.254.169.254
// that a C resolver (inet_aton) accepts and Go's IP parser does not, so
// that they reach the dialer as names and resolve as a libc resolver would
// resolve them: the worst case for an egress check.
func newFakeResolver() *fakeResolver {
	r := &fakeResolver{answers: map[string][][]netip.Addr{}, lookups: map[string]int{}, hold: map[string]chan struct{}{}}
	for _, name := range []string{"2130706433", "0x7f000001", "0177.0.0.1", "127.1", "0x7f.1", "017700000001", "loopback.test"} {
		r.set(name, netip.MustParseAddr("127.0.0.1"))
	}
	for _, name := range []string{"2852039166", "0xa9fea9fe", "0251.0376.0251.0376", "metadata.test"} {
		r.set(name, netip.MustParseAddr("169.254.169.254"))
	}
	r.set("mapped-metadata.test", netip.MustParseAddr("::ffff:169.254.169.254"))
	r.set("all-denied.test", netip.MustParseAddr("169.254.169.254"), netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("fd00:ec2::254"))
	return r
}

// set makes name resolve to addrs.
func (r *fakeResolver) set(name string, addrs ...netip.Addr) {
	r.sequence(name, addrs)
}

// sequence makes successive lookups of name get successive answers; the
// last answer repeats.
func (r *fakeResolver) sequence(name string, answers ...[]netip.Addr) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.answers[name] = answers
	r.lookups[name] = 0
}

// holdLookups makes lookups of name block until the dial gives up; the
// returned channel receives one value per lookup that started.
func (r *fakeResolver) holdLookups(name string) <-chan struct{} {
	ch := make(chan struct{}, 64)
	r.mu.Lock()
	r.hold[name] = ch
	r.mu.Unlock()
	return ch
}

func (r *fakeResolver) LookupNetIP(ctx context.Context, _, host string) ([]netip.Addr, error) {
	r.mu.Lock()
	if ch, ok := r.hold[host]; ok {
		r.mu.Unlock()
		signal(ch)
		<-ctx.Done()
		return nil, ctx.Err()
	}
	answers := r.answers[host]
	n := r.lookups[host]
	r.lookups[host]++
	r.mu.Unlock()
	if len(answers) == 0 {
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	return answers[min(n, len(answers)-1)], nil
}

// egressGuard wraps the daemon's egress rules. It refuses every
// non-loopback address the rules let through and remembers it, failing
// the test: whatever a case does, nothing but loopback is ever dialed.
type egressGuard struct {
	rules dialer.EgressChecker

	mu      sync.Mutex     // guards following fields
	allowed map[string]int // host as dialed → addresses allowed
	escaped []string
}

func (g *egressGuard) CheckEgress(host string, addr netip.AddrPort) error {
	err := g.rules.CheckEgress(host, addr)
	g.mu.Lock()
	defer g.mu.Unlock()
	if err != nil {
		return err
	}
	if !addr.Addr().Unmap().IsLoopback() {
		g.escaped = append(g.escaped, fmt.Sprintf("%s (%s)", addr, host))
		return fmt.Errorf("%w: the test guard refuses %s, which the rules allowed", dialer.ErrEgressDenied, addr)
	}
	g.allowed[strings.Trim(host, "[]")]++
	return nil
}

// allowedFor says how many addresses of host the rules have allowed.
func (g *egressGuard) allowedFor(host string) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.allowed[strings.Trim(host, "[]")]
}

// advOptions configure a test daemon.
type advOptions struct {
	// allow is the egress allow list; the built-in denies apply as in
	// the daemon.
	allow          []string
	maxInFlight    int
	maxRecvMsgSize int
	maxBodySize    int64
	// healthyHost is where the well-behaved upstream listens: 127.0.0.1
	// or ::1. It must be allowed by allow.
	healthyHost string
}

// advDaemon is poold put together as cmd/poold does it (engine, dialer
// with resolver and egress rules that deny the daemon's own listener,
// policy store, server.New), serving gRPC on 127.0.0.1, with clients.
type advDaemon struct {
	engine   *pool.Engine
	direct   *HTTPServer // the HTTPService server.New registers, called in-process
	http     pooldv1.HTTPServiceClient
	pools    pooldv1.PoolServiceClient
	policies pooldv1.PolicyServiceClient
	resolver *fakeResolver
	guard    *egressGuard
	roots    *dialertest.CA // upstream certificates signed by it are trusted
	self     string         // the gRPC listener, host:port
	healthy  string         // URL of a well-behaved upstream; "" when it could not listen
}

// startAdvDaemon starts a daemon whose default policy has short timeouts
// and no proxy. Everything stops when the test ends, engine last.
func startAdvDaemon(t *testing.T, opts advOptions) *advDaemon {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rules, err := dialer.NewEgressRules(dialer.EgressConfig{
		Allow:     opts.allow,
		SelfAddrs: []netip.AddrPort{lis.Addr().(*net.TCPAddr).AddrPort()},
	})
	if err != nil {
		t.Fatal(err)
	}
	d := &advDaemon{
		resolver: newFakeResolver(),
		guard:    &egressGuard{rules: rules, allowed: map[string]int{}},
		roots:    dialertest.NewCA(t),
		self:     lis.Addr().String(),
	}
	t.Cleanup(func() {
		d.guard.mu.Lock()
		defer d.guard.mu.Unlock()
		if len(d.guard.escaped) > 0 {
			t.Errorf("egress rules allowed non-loopback addresses (the guard refused them): %v", d.guard.escaped)
		}
	})
	roots := x509.NewCertPool()
	roots.AddCert(d.roots.Cert)
	engine, err := pool.New(pool.Options{
		Dialer: &dialer.Dialer{
			Resolver:  d.resolver,
			Egress:    d.guard,
			TLSConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
		},
		// Never a proxy from the environment.
		Proxy: func(*url.URL) (*url.URL, error) { return nil, nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	d.engine = engine
	store, err := OpenPolicyStore("", engine.SetPolicies, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := New(Config{
		Engine:         engine,
		Policies:       store,
		MaxBodySize:    opts.maxBodySize,
		Logger:         slog.New(slog.DiscardHandler),
		MaxRecvMsgSize: opts.maxRecvMsgSize,
		MaxInFlight:    opts.maxInFlight,
	})
	if err != nil {
		t.Fatal(err)
	}
	d.direct = NewHTTPServer(engine, HTTPOptions{MaxBodySize: opts.maxBodySize})
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.GRPC.Serve(lis)
	}()
	srv.SetServing()
	t.Cleanup(func() {
		// As the daemon does it: RPCs first, then the engine.
		srv.Stop(time.Second)
		<-served
		_ = engine.Close()
	})
	cc, err := grpc.NewClient("passthrough:///"+d.self, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	d.http = pooldv1.NewHTTPServiceClient(cc)
	d.pools = pooldv1.NewPoolServiceClient(cc)
	d.policies = pooldv1.NewPolicyServiceClient(cc)

	d.setPolicy(t, &pooldv1.Policy{
		Name:                  "policies/default",
		DialTimeout:           durationpb.New(advDialTimeout),
		TlsHandshakeTimeout:   durationpb.New(advTLSTimeout),
		ResponseHeaderTimeout: durationpb.New(advHeaderTimeout),
		ProxyUrl:              ptr("direct"),
	}, "dial_timeout", "tls_handshake_timeout", "response_header_timeout", "proxy_url")

	host := opts.healthyHost
	if host == "" {
		host = "127.0.0.1"
	}
	if lis, err := net.Listen("tcp", net.JoinHostPort(host, "0")); err == nil {
		lis.Close()
		d.healthy = "http://" + newAdversaryOn(t, net.JoinHostPort(host, "0")).addr + "/healthy"
	} else {
		t.Logf("no healthy upstream on %s (%v): follow-up requests are not checked", host, err)
	}
	return d
}

// setPolicy updates (or creates) a policy, failing the test on error.
func (d *advDaemon) setPolicy(t *testing.T, p *pooldv1.Policy, paths ...string) {
	t.Helper()
	_, err := d.policies.UpdatePolicy(testContext(t), &pooldv1.UpdatePolicyRequest{
		Policy:       p,
		UpdateMask:   &fieldmaskpb.FieldMask{Paths: paths},
		AllowMissing: true,
	})
	if err != nil {
		t.Fatalf("UpdatePolicy %s %v: %v", p.GetName(), paths, err)
	}
}

// settled waits until the pool of hostport has no active or dialing
// connection and no waiting request, and no connection of it is listed
// active: whatever broke, nothing leaked.
func (d *advDaemon) settled(t *testing.T, hostport string) {
	t.Helper()
	ctx := testContext(t)
	var last string
	ok := poll(5*time.Second, func() bool {
		h, err := d.pools.GetHost(ctx, &pooldv1.GetHostRequest{Key: hostport})
		if status.Code(err) == codes.NotFound {
			return true
		}
		if err != nil {
			last = err.Error()
			return false
		}
		conns, err := d.pools.ListConnections(ctx, &pooldv1.ListConnectionsRequest{Host: hostport, State: pooldv1.ConnectionState_CONNECTION_STATE_ACTIVE})
		if err != nil {
			last = err.Error()
			return false
		}
		last = fmt.Sprintf("active %d, dialing %d, pending %d, %d connections listed active",
			h.GetActive(), h.GetDialing(), h.GetPending(), len(conns.GetConnections()))
		return h.GetActive() == 0 && h.GetDialing() == 0 && h.GetPending() == 0 && len(conns.GetConnections()) == 0
	})
	if !ok {
		t.Fatalf("pool %s did not settle: %s", hostport, last)
	}
}

// serving checks that a request to the healthy upstream still succeeds.
func (d *advDaemon) serving(t *testing.T) {
	t.Helper()
	if d.healthy == "" {
		return
	}
	resp, err := d.http.Do(testContext(t), &pooldv1.DoRequest{Url: d.healthy})
	if err != nil {
		t.Fatalf("follow-up request to the healthy upstream: %v", err)
	}
	if resp.GetStatusCode() != 200 || string(resp.GetBody()) != "ok" {
		t.Fatalf("follow-up request to the healthy upstream = %d %q, want 200 ok", resp.GetStatusCode(), resp.GetBody())
	}
}

// poll asks cond until it holds or within passes.
func poll(within time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(within)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		<-tick.C
	}
	return true
}

// errorInfo returns the ErrorInfo of a gRPC error, or nil.
func errorInfo(err error) *errdetails.ErrorInfo {
	for _, d := range status.Convert(err).Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			return info
		}
	}
	return nil
}

// directStream is an HTTPService_StreamServer fed by channels, for calling
// Stream in-process and seeing the status it returns: a caller that
// cancels over gRPC never hears the server's answer.
type directStream struct {
	grpc.ServerStream // not used by Stream beyond the methods below
	ctx               context.Context
	in                chan *pooldv1.StreamRequest // closed = half-close
	out               chan *pooldv1.StreamResponse
}

func newDirectStream(ctx context.Context) *directStream {
	return &directStream{ctx: ctx, in: make(chan *pooldv1.StreamRequest, 16), out: make(chan *pooldv1.StreamResponse, 1024)}
}

func (s *directStream) Context() context.Context { return s.ctx }

func (s *directStream) Recv() (*pooldv1.StreamRequest, error) {
	select {
	case m, ok := <-s.in:
		if !ok {
			return nil, io.EOF
		}
		return m, nil
	case <-s.ctx.Done():
		return nil, status.FromContextError(s.ctx.Err()).Err()
	}
}

func (s *directStream) Send(m *pooldv1.StreamResponse) error {
	select {
	case s.out <- m:
		return nil
	case <-s.ctx.Done():
		return status.FromContextError(s.ctx.Err()).Err()
	}
}

// tlsConfig returns a server config with a certificate for 127.0.0.1
// signed by ca.
func tlsConfig(t *testing.T, ca *dialertest.CA) *tls.Config {
	t.Helper()
	cert := ca.Certificate(t, time.Now().UnixNano(), "127.0.0.1")
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
}
