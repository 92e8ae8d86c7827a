package server

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/poold/poold/dialer"
	"github.com/poold/poold/dialer/dialertest"
	pooldv1 "github.com/poold/poold/gen/poold/v1"
	"github.com/poold/poold/pool"
)

// requestIDs numbers the X-Request-Id of every request the suites send,
// so that an upstream can count how often each one reached it.
var requestIDs atomic.Uint64

func nextRequestID() string { return fmt.Sprintf("req-%d", requestIDs.Add(1)) }

// withRequestID returns a copy of req carrying a fresh X-Request-Id.
func withRequestID(req *pooldv1.DoRequest) (*pooldv1.DoRequest, string) {
	id := nextRequestID()
	out := proto.Clone(req).(*pooldv1.DoRequest)
	out.Headers = append(out.Headers, hdr("X-Request-Id", id))
	return out, id
}

// mainDaemon is the daemon most cases run against: loopback 127.0.0.1 is
// allowed, as with --egress-allow=127.0.0.1/32.
func mainDaemon(t *testing.T, opts advOptions) *advDaemon {
	opts.allow = []string{"127.0.0.1/32"}
	if opts.maxRecvMsgSize == 0 {
		opts.maxRecvMsgSize = 1 << 20
	}
	if opts.maxBodySize == 0 {
		opts.maxBodySize = 256 << 10
	}
	return startAdvDaemon(t, opts)
}

// call runs req with Do, or with Stream (head, half-close, then the whole
// response) when stream is set, and returns the response as Do would.
func (d *advDaemon) call(ctx context.Context, req *pooldv1.DoRequest, stream bool) (*pooldv1.DoResponse, error) {
	if !stream {
		return d.http.Do(ctx, req)
	}
	st, err := d.http.Stream(ctx)
	if err != nil {
		return nil, err
	}
	body := req.GetBody()
	head := proto.Clone(req).(*pooldv1.DoRequest)
	head.Body = nil
	sent := make(chan error, 1)
	go func() {
		var r io.Reader
		if len(body) > 0 {
			r = strings.NewReader(string(body))
		}
		sent <- sendStream(st, head, r, 16<<10)
	}()
	res, err := recvStream(st, true)
	<-sent
	if err != nil {
		return nil, err
	}
	out := proto.Clone(res.head).(*pooldv1.DoResponse)
	out.Body = res.body.Bytes()
	out.Trailers = res.end.GetTrailers()
	out.Timing = res.end.GetTiming()
	return out, nil
}

// tlsMode says how a case's upstream speaks TLS.
type tlsMode int

const (
	plainHTTP    tlsMode = iota
	tlsTrusted           // https, certificate signed by the daemon's trusted CA
	tlsUntrusted         // https, certificate signed by a CA the daemon does not know
	tlsByVerb            // https URL; the verb plays (or refuses) the handshake itself
)

// upstreamCase is one misbehaving upstream and what the caller must see.
type upstreamCase struct {
	name   string
	verb   func(*adversary) *adversary
	tls    tlsMode
	stream bool // call Stream rather than Do
	// warm sends one GET first, so that the case's request reuses a
	// pooled connection.
	warm bool
	// req sets method, headers, body and timeout; the URL is filled in.
	req *pooldv1.DoRequest
	// policy sets fields of a policy for the upstream's host:port.
	policy *pooldv1.Policy
	paths  []string

	code   codes.Code // codes.OK: the call succeeds
	reason string
	// With codes.OK:
	status   int32
	body     string
	attempts uint32 // when not 0
	// reached, when not 0, is how many times the request reached the
	// upstream.
	reached int
	// header and trailer, when set, are a name and the one value the
	// response must carry for it.
	header, trailer [2]string
	// closedAs, when set, is the reason the pool must have counted for
	// closing the upstream's connection: it was not kept for reuse.
	closedAs string
}

func TestMisbehavingUpstreamsFailWithTheirReasonAndLeaveThePoolHealthy(t *testing.T) {
	d := mainDaemon(t, advOptions{})
	post := &pooldv1.DoRequest{Method: "POST", Body: []byte("pay once")}
	idempotentPost := &pooldv1.DoRequest{Method: "POST", Body: []byte("pay once"), Headers: []*pooldv1.Header{hdr("Idempotency-Key", "k1")}}
	timeout300ms := &pooldv1.DoRequest{Timeout: pdur(300 * time.Millisecond)}
	const (
		aborted   = codes.Aborted // for a request that was sent, then failed
		reset     = ReasonUpstreamReset
		malformed = ReasonUpstreamProtocolError
	)
	tests := []upstreamCase{
		// The upstream closes.
		{name: "closed before reading the request", verb: (*adversary).closeImmediately, code: aborted, reason: reset},
		{name: "closed after the response head", verb: (*adversary).closeAfterHeaders, code: aborted, reason: reset},
		{name: "closed 10 bytes into a 100-byte body", verb: (*adversary).truncatedBody, code: aborted, reason: reset, closedAs: "error"},
		{name: "closed before the last chunk", verb: (*adversary).truncatedChunked, code: aborted, reason: reset},
		{name: "closed 10 bytes into the body of a Stream", verb: (*adversary).truncatedBody, stream: true, code: aborted, reason: reset},
		{name: "keep-alive race: a GET is retried on a fresh connection", verb: (*adversary).closeOnSecondRequest, warm: true, status: 200, body: "ok", attempts: 2, reached: 2, closedAs: "server_closed"},
		{name: "keep-alive race: a POST is not retried", verb: (*adversary).closeOnSecondRequest, warm: true, req: post, code: aborted, reason: reset, reached: 1},
		{name: "keep-alive race: a POST with an Idempotency-Key is retried", verb: (*adversary).closeOnSecondRequest, warm: true, req: idempotentPost, status: 200, body: "ok", attempts: 2, reached: 2},
		{name: "nothing listens", verb: func(a *adversary) *adversary { a.lis.Close(); return a }, code: codes.Unavailable, reason: ReasonConnectionRefused},

		// The upstream resets.
		{name: "reset before the response", verb: (*adversary).resetBeforeResponse, code: aborted, reason: reset},
		{name: "reset mid-body", verb: (*adversary).resetMidBody, code: aborted, reason: reset, closedAs: "error"},
		{name: "reset mid-body of a Stream", verb: (*adversary).resetMidBody, stream: true, code: aborted, reason: reset},

		// Malformed framing.
		{name: "garbage instead of a response", verb: (*adversary).sendGarbage, code: aborted, reason: malformed},
		{name: "status code that is not a number", verb: (*adversary).badStatusLine, code: aborted, reason: malformed},
		{name: "identical duplicate Content-Length is one length (RFC 9112 6.3)", verb: (*adversary).duplicateContentLength, status: 200, body: "ok"},
		{name: "conflicting Content-Length", verb: (*adversary).conflictingContentLength, code: aborted, reason: malformed},
		{name: "Content-Length that is not decimal", verb: (*adversary).invalidContentLength, code: aborted, reason: malformed},
		{name: "chunked framing wins over Content-Length", verb: (*adversary).contentLengthWithChunked, status: 200, body: "ok"},
		{name: "unknown transfer coding", verb: (*adversary).unknownTransferEncoding, code: aborted, reason: malformed},
		{name: "chunk size that is not hexadecimal", verb: (*adversary).badChunked, code: aborted, reason: malformed},
		{name: "chunk size that is not hexadecimal, in a Stream", verb: (*adversary).badChunked, stream: true, code: aborted, reason: malformed},
		{name: "chunk extension flood", verb: (*adversary).chunkExtensionFlood, code: aborted, reason: malformed},
		{name: "chunk line longer than any reader takes", verb: (*adversary).chunkLineTooLong, code: aborted, reason: malformed},
		{name: "header line with a space in the name", verb: (*adversary).invalidHeaderLine, code: aborted, reason: malformed},
		{name: "bytes after the response are not served to anyone", verb: (*adversary).bytesAfterResponse, status: 200, body: "ok", closedAs: "unusable"},
		{name: "header value in ISO-8859-1 (obs-text)", verb: func(a *adversary) *adversary {
			return a.reply("HTTP/1.1 200 OK\r\nX-Name: caf\xe9\r\nContent-Length: 2\r\n\r\nok")
		}, status: 200, body: "ok", header: [2]string{"X-Name", "café"}},
		{name: "trailer value in ISO-8859-1 (obs-text), in a Stream", stream: true, verb: func(a *adversary) *adversary {
			return a.reply("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Name\r\n\r\n2\r\nok\r\n0\r\nX-Name: caf\xe9\r\n\r\n")
		}, status: 200, body: "ok", trailer: [2]string{"X-Name", "café"}},
		{name: "header value with NUL", verb: func(a *adversary) *adversary {
			return a.reply("HTTP/1.1 200 OK\r\nX-Name: a\x00b\r\nContent-Length: 2\r\n\r\nok")
		}, code: aborted, reason: malformed},
		{name: "header line with bytes that are not UTF-8", verb: func(a *adversary) *adversary {
			return a.reply("HTTP/1.1 200 OK\r\nBad\xffName: \xfe\r\nContent-Length: 2\r\n\r\nok")
		}, code: aborted, reason: malformed},
		{name: "folded first header line", verb: func(a *adversary) *adversary {
			return a.reply("HTTP/1.1 200 OK\r\n folded: x\r\nContent-Length: 2\r\n\r\nok")
		}, code: aborted, reason: malformed},
		{name: "HTTP/1.0 body until close", verb: (*adversary).http10UntilClose, status: 200, body: "until close", closedAs: "server_closed"},
		{name: "101 Switching Protocols nobody asked for", verb: (*adversary).unsolicitedUpgrade, req: timeout300ms, code: aborted, reason: malformed, closedAs: "error"},

		// Slow upstreams.
		{name: "no response head", verb: (*adversary).stallHeaders, code: codes.DeadlineExceeded, reason: ReasonResponseHeaderTimeout, closedAs: "error"},
		{name: "slow loris response head", verb: (*adversary).slowLorisHeaders, code: codes.DeadlineExceeded, reason: ReasonResponseHeaderTimeout},
		{name: "body stalls past DoRequest.timeout", verb: (*adversary).stallBody, req: timeout300ms, code: codes.DeadlineExceeded, reason: ReasonRequestTimeout},
		{name: "body stalls past the policy's request_timeout", verb: (*adversary).stallBody,
			policy: &pooldv1.Policy{RequestTimeout: pdur(300 * time.Millisecond)}, paths: []string{"request_timeout"},
			code: codes.DeadlineExceeded, reason: ReasonRequestTimeout},
		{name: "slow loris body", verb: (*adversary).slowLorisBody, req: timeout300ms, code: codes.DeadlineExceeded, reason: ReasonRequestTimeout},
		{name: "slow loris body of a Stream", verb: (*adversary).slowLorisBody, stream: true, req: timeout300ms, code: codes.DeadlineExceeded, reason: ReasonRequestTimeout},

		// TLS.
		{name: "TLS upstream that answers", verb: (*adversary).ok, tls: tlsTrusted, status: 200, body: "ok"},
		{name: "TCP accepted, handshake never answered", verb: (*adversary).tlsStall, tls: tlsByVerb, code: codes.DeadlineExceeded, reason: ReasonTLSHandshakeTimeout},
		{name: "plain text in answer to the ClientHello", verb: (*adversary).tlsGarbage, tls: tlsByVerb, code: codes.Unavailable, reason: ReasonTLSError},
		{name: "closed during the handshake", verb: (*adversary).closeImmediately, tls: tlsByVerb, code: codes.Unavailable, reason: ReasonTLSError},
		{name: "untrusted certificate", verb: (*adversary).ok, tls: tlsUntrusted, code: codes.Unavailable, reason: ReasonTLSError},
		{name: "garbage inside a good TLS session", verb: (*adversary).sendGarbage, tls: tlsTrusted, code: aborted, reason: malformed},

		// 1xx abuse is bounded.
		{name: "endless 103 Early Hints", verb: func(a *adversary) *adversary { return a.infinite1xx(103) }, code: aborted, reason: malformed},
		{name: "endless 100 Continue", verb: func(a *adversary) *adversary { return a.infinite1xx(100) }, code: aborted, reason: malformed},
		{name: "a few 103 before the response are fine", verb: func(a *adversary) *adversary { return a.some1xxThenOK(5) }, status: 200, body: "ok"},

		// Huge heads and bodies.
		{name: "head over the policy's max_response_header_bytes", verb: func(a *adversary) *adversary { return a.hugeHeaders(8 << 10) },
			policy: &pooldv1.Policy{MaxResponseHeaderBytes: pu32(4 << 10)}, paths: []string{"max_response_header_bytes"},
			code: aborted, reason: malformed, closedAs: "error"},
		{name: "head within the policy's max_response_header_bytes", verb: func(a *adversary) *adversary { return a.hugeHeaders(3 << 10) },
			policy: &pooldv1.Policy{MaxResponseHeaderBytes: pu32(4 << 10)}, paths: []string{"max_response_header_bytes"},
			status: 200, body: "ok"},
		{name: "head over the built-in 1 MiB", verb: func(a *adversary) *adversary { return a.hugeHeaders(2 << 20) }, code: aborted, reason: malformed},
		{name: "endless body over the Do body limit", verb: (*adversary).infiniteBody, code: codes.ResourceExhausted, reason: ReasonBodyTooLarge},
		{name: "100 Continue to Expect: 100-continue, then the response", verb: (*adversary).continueThenOK,
			req: &pooldv1.DoRequest{Method: "POST", Body: []byte("payload"), Headers: []*pooldv1.Header{hdr("Expect", "100-continue")}}, status: 200, body: "ok", reached: 1},
		{name: "413 instead of 100 Continue: the body is never sent", verb: (*adversary).earlyResponseDuringUpload,
			req: &pooldv1.DoRequest{Method: "PUT", Body: make([]byte, 768<<10), Headers: []*pooldv1.Header{hdr("Expect", "100-continue")}}, status: 413, body: "too much", reached: 1},
		{name: "413 while the request body is still uploading", verb: (*adversary).earlyResponseDuringUpload,
			req: &pooldv1.DoRequest{Method: "PUT", Body: make([]byte, 768<<10)}, status: 413, body: "too much", reached: 1, closedAs: "server_closed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { d.runUpstreamCase(t, tt) })
	}
}

func (d *advDaemon) runUpstreamCase(t *testing.T, tt upstreamCase) {
	a := tt.verb(newAdversary(t))
	scheme := "https"
	switch tt.tls {
	case plainHTTP:
		scheme = "http"
	case tlsTrusted:
		a.useTLS(tlsConfig(t, d.roots))
	case tlsUntrusted:
		a.useTLS(tlsConfig(t, dialertest.NewCA(t)))
	}
	if tt.policy != nil {
		p := proto.Clone(tt.policy).(*pooldv1.Policy)
		p.Name = "policies/" + a.addr
		d.setPolicy(t, p, tt.paths...)
	}
	base := tt.req
	if base == nil {
		base = &pooldv1.DoRequest{}
	}
	req, id := withRequestID(base)
	req.Url = scheme + "://" + a.addr + "/case"
	ctx := testContext(t)
	if tt.warm {
		warm, _ := withRequestID(&pooldv1.DoRequest{Url: req.Url})
		if _, err := d.http.Do(ctx, warm); err != nil {
			t.Fatalf("warming a connection: %v", err)
		}
	}

	resp, err := d.call(ctx, req, tt.stream)
	if tt.code == codes.OK {
		if err != nil {
			t.Fatalf("call failed: %v; want HTTP %d", err, tt.status)
		}
		if resp.GetStatusCode() != tt.status || string(resp.GetBody()) != tt.body {
			t.Errorf("response = %d %q, want %d %q", resp.GetStatusCode(), resp.GetBody(), tt.status, tt.body)
		}
		if name := tt.header[0]; name != "" {
			if got := headerValues(resp.GetHeaders(), name); len(got) != 1 || got[0] != tt.header[1] {
				t.Errorf("header %s = %q, want %q", name, got, tt.header[1])
			}
		}
		if name := tt.trailer[0]; name != "" {
			if got := headerValues(resp.GetTrailers(), name); len(got) != 1 || got[0] != tt.trailer[1] {
				t.Errorf("trailer %s = %q, want %q", name, got, tt.trailer[1])
			}
		}
		if tt.attempts != 0 && resp.GetTiming().GetAttempts() != tt.attempts {
			t.Errorf("attempts = %d, want %d", resp.GetTiming().GetAttempts(), tt.attempts)
		}
	} else {
		wantStatus(t, err, tt.code, tt.reason)
		if _, bad := classifyOutcome(err, false); bad != "" {
			t.Error(bad)
		}
	}
	if tt.reached != 0 {
		if got := a.seen(id); got != tt.reached {
			t.Errorf("the request reached the upstream %d times, want %d", got, tt.reached)
		}
	}
	d.settled(t, a.addr)
	if tt.closedAs != "" {
		d.wantClosed(t, a.addr, tt.closedAs)
	}
	d.serving(t)
}

// wantClosed checks that the pool of hostport has closed a connection for
// reason.
func (d *advDaemon) wantClosed(t *testing.T, hostport, reason string) {
	t.Helper()
	h, err := d.pools.GetHost(testContext(t), &pooldv1.GetHostRequest{Key: hostport})
	if err != nil {
		t.Fatalf("GetHost(%s): %v", hostport, err)
	}
	if h.GetCounters().GetClosed()[reason] == 0 {
		t.Errorf("pool %s closed connections for %v, want one for %s", hostport, h.GetCounters().GetClosed(), reason)
	}
}

func TestFailingProxiesFailTheDialWithProxyError(t *testing.T) {
	d := mainDaemon(t, advOptions{})
	tests := []struct {
		name  string
		proxy func(*adversary) *adversary
		// origin is what the proxy would reach: by default a TLS upstream
		// that answers, so that only the proxy can be at fault.
		origin func(*adversary) *adversary
		plain  bool // the origin URL is http: the proxy gets absolute-form requests, not CONNECT
		code   codes.Code
		reason string
	}{
		{name: "407 Proxy Authentication Required", proxy: (*adversary).connect407, code: codes.Unavailable, reason: ReasonProxyError},
		{name: "closes on CONNECT", proxy: (*adversary).connectClose, code: codes.Unavailable, reason: ReasonProxyError},
		{name: "garbage in answer to CONNECT", proxy: (*adversary).connectGarbage, code: codes.Unavailable, reason: ReasonProxyError},
		{name: "endless CONNECT response head", proxy: (*adversary).connectHugeHeaders, code: codes.Unavailable, reason: ReasonProxyError},
		{name: "never answers CONNECT", proxy: (*adversary).connectStall, code: codes.DeadlineExceeded, reason: ReasonDialTimeout},
		{name: "nothing listens at the proxy", proxy: func(a *adversary) *adversary { a.lis.Close(); return a }, code: codes.Unavailable, reason: ReasonProxyError},
		{name: "a working tunnel reaches the origin", proxy: (*adversary).connectTunnel, code: codes.OK},
		{name: "a working tunnel to an origin that stalls the handshake", proxy: (*adversary).connectTunnel, origin: (*adversary).tlsStall,
			code: codes.DeadlineExceeded, reason: ReasonTLSHandshakeTimeout},
		{name: "garbage from a proxy for a plain-http origin", proxy: (*adversary).sendGarbage, plain: true, code: codes.Aborted, reason: ReasonUpstreamProtocolError},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			proxy := tt.proxy(newAdversary(t))
			origin, scheme := newAdversary(t), "http"
			switch {
			case tt.origin != nil:
				origin, scheme = tt.origin(origin), "https"
			case !tt.plain:
				origin, scheme = origin.useTLS(tlsConfig(t, d.roots)), "https"
			}
			// Each case has an origin of its own, so that its proxy
			// policy is no other case's.
			d.setPolicy(t, &pooldv1.Policy{Name: "policies/" + origin.addr, ProxyUrl: pstr("http://" + proxy.addr)}, "proxy_url")

			req, _ := withRequestID(&pooldv1.DoRequest{Url: scheme + "://" + origin.addr + "/via-proxy"})
			resp, err := d.http.Do(testContext(t), req)
			if tt.code == codes.OK {
				if err != nil || resp.GetStatusCode() != 200 {
					t.Fatalf("Do through the proxy = %v, %v; want 200", resp, err)
				}
			} else {
				wantStatus(t, err, tt.code, tt.reason)
			}
			d.settled(t, origin.addr)
			d.serving(t)
		})
	}
}

func TestOverloadFailsAtOnceWithQueueFullOrOverloaded(t *testing.T) {
	// hold starts n requests that an upstream holds until the test
	// releases them, and waits until the upstream has them all.
	hold := func(t *testing.T, d *advDaemon, url string, n int, a *adversary) (release func()) {
		ctx, cancel := context.WithCancel(testContext(t))
		done := make(chan error, n)
		for range n {
			go func() {
				_, err := d.http.Do(ctx, &pooldv1.DoRequest{Url: url})
				done <- err
			}()
		}
		for range n {
			a.wantHead(t)
		}
		return func() {
			cancel()
			for range n {
				if err := receive(t, done, "a held request to end"); status.Code(err) != codes.Canceled {
					t.Errorf("held request ended with %v, want CANCELLED", err)
				}
			}
		}
	}
	// noHeaderTimeout keeps held requests waiting for as long as the test
	// needs.
	noHeaderTimeout := func(t *testing.T, d *advDaemon, hostport string, conns, pending uint32) {
		d.setPolicy(t, &pooldv1.Policy{
			Name: "policies/" + hostport, ResponseHeaderTimeout: pdur(0),
			MaxConnsPerHost: pu32(conns), MaxPendingRequests: pu32(pending),
		}, "response_header_timeout", "max_conns_per_host", "max_pending_requests")
	}

	t.Run("queue full when the host has no room and no request may wait", func(t *testing.T) {
		d := mainDaemon(t, advOptions{})
		a := newAdversary(t).stallHeaders()
		noHeaderTimeout(t, d, a.addr, 1, 0)
		release := hold(t, d, "http://"+a.addr+"/", 1, a)
		_, err := d.http.Do(testContext(t), &pooldv1.DoRequest{Url: "http://" + a.addr + "/"})
		wantStatus(t, err, codes.ResourceExhausted, ReasonQueueFull)
		h, err := d.pools.GetHost(testContext(t), &pooldv1.GetHostRequest{Key: a.addr})
		if err != nil || h.GetCounters().GetQueueOverflows() != 1 {
			t.Errorf("GetHost = %v, %v; want 1 queue overflow", h, err)
		}
		release()
		d.settled(t, a.addr)
		d.serving(t)
	})

	t.Run("queue full behind the one request allowed to wait", func(t *testing.T) {
		d := mainDaemon(t, advOptions{})
		a := newAdversary(t).stallHeaders()
		noHeaderTimeout(t, d, a.addr, 1, 1)
		url := "http://" + a.addr + "/"
		release := hold(t, d, url, 1, a)
		waitCtx, cancelWait := context.WithCancel(testContext(t))
		waited := make(chan error, 1)
		go func() {
			_, err := d.http.Do(waitCtx, &pooldv1.DoRequest{Url: url})
			waited <- err
		}()
		if !poll(5*time.Second, func() bool {
			h, err := d.pools.GetHost(testContext(t), &pooldv1.GetHostRequest{Key: a.addr})
			return err == nil && h.GetPending() == 1
		}) {
			t.Fatal("the second request never queued")
		}
		_, err := d.http.Do(testContext(t), &pooldv1.DoRequest{Url: url})
		wantStatus(t, err, codes.ResourceExhausted, ReasonQueueFull)
		cancelWait()
		if err := <-waited; status.Code(err) != codes.Canceled {
			t.Errorf("queued request ended with %v, want CANCELLED", err)
		}
		release()
		d.settled(t, a.addr)
		d.serving(t)
	})

	t.Run("overloaded past max in flight, and operators still get through", func(t *testing.T) {
		d := mainDaemon(t, advOptions{maxInFlight: 2})
		a := newAdversary(t).stallHeaders()
		noHeaderTimeout(t, d, a.addr, 0, 1024)
		release := hold(t, d, "http://"+a.addr+"/", 2, a)

		_, err := d.http.Do(testContext(t), &pooldv1.DoRequest{Url: d.healthy})
		wantStatus(t, err, codes.ResourceExhausted, ReasonOverloaded)
		st, err := d.http.Stream(testContext(t))
		if err == nil {
			_ = st.Send(&pooldv1.StreamRequest{Msg: &pooldv1.StreamRequest_Head{Head: &pooldv1.DoRequest{Url: d.healthy}}})
			_, err = st.Recv()
		}
		wantStatus(t, err, codes.ResourceExhausted, ReasonOverloaded)
		if h, err := d.pools.GetHost(testContext(t), &pooldv1.GetHostRequest{Key: a.addr}); err != nil || h.GetActive() != 2 {
			t.Errorf("GetHost while saturated = %v, %v; want 2 active", h, err)
		}
		if _, err := d.policies.GetEffectivePolicy(testContext(t), &pooldv1.GetEffectivePolicyRequest{Host: a.addr}); err != nil {
			t.Errorf("GetEffectivePolicy while saturated: %v", err)
		}
		release()
		d.settled(t, a.addr)
		d.serving(t)
	})
}

// inPhase is a request brought to one phase of its life by an upstream
// that keeps it there.
type inPhase struct {
	req      *pooldv1.DoRequest
	reached  func()          // returns once the request is in the phase
	hostport string          // the pool the request uses
	aborts   <-chan struct{} // when not nil, receives once poold closes the upstream connection
	release  func()          // when not nil, ends whatever else the setup holds
	closedAs string          // when set, the close reason the pool must count
}

func TestCancellingAtEveryPhaseEndsTheCallAndLeavesNothingBehind(t *testing.T) {
	d := mainDaemon(t, advOptions{})
	phases := []struct {
		name   string
		stream bool // a Stream whose body is still being sent
		start  func(t *testing.T) inPhase
	}{
		{name: "queued behind a busy connection", start: func(t *testing.T) inPhase {
			a := newAdversary(t).stallHeaders()
			d.setPolicy(t, &pooldv1.Policy{Name: "policies/" + a.addr, ResponseHeaderTimeout: pdur(0), MaxConnsPerHost: pu32(1)},
				"response_header_timeout", "max_conns_per_host")
			holdCtx, cancel := context.WithCancel(testContext(t))
			held := make(chan struct{})
			go func() {
				defer close(held)
				_, _ = d.http.Do(holdCtx, &pooldv1.DoRequest{Url: "http://" + a.addr + "/held"})
			}()
			a.wantHead(t)
			return inPhase{
				req: &pooldv1.DoRequest{Url: "http://" + a.addr + "/queued"},
				reached: func() {
					if !poll(5*time.Second, func() bool {
						h, err := d.pools.GetHost(testContext(t), &pooldv1.GetHostRequest{Key: a.addr})
						return err == nil && h.GetPending() == 1
					}) {
						t.Fatal("the request never queued")
					}
				},
				hostport: a.addr,
				release:  func() { cancel(); <-held },
			}
		}},
		{name: "resolving the host name", start: func(t *testing.T) inPhase {
			name := fmt.Sprintf("slow-dns-%d.test", requestIDs.Add(1))
			lookups := d.resolver.holdLookups(name)
			return inPhase{
				req:      &pooldv1.DoRequest{Url: "http://" + name + "/"},
				reached:  func() { receive(t, lookups, "the lookup") },
				hostport: name + ":80",
			}
		}},
		{name: "in the TLS handshake", start: func(t *testing.T) inPhase {
			a := newAdversary(t).tlsStall()
			return inPhase{
				req:      &pooldv1.DoRequest{Url: "https://" + a.addr + "/"},
				reached:  func() { receive(t, a.progress, "the handshake to start") },
				hostport: a.addr,
				aborts:   a.aborts,
			}
		}},
		{name: "sending the request body", stream: true, start: func(t *testing.T) inPhase {
			a := newAdversary(t).stallAfterHead()
			return inPhase{
				req:      &pooldv1.DoRequest{Method: "POST", Url: "http://" + a.addr + "/upload"},
				reached:  func() { a.wantHead(t) },
				hostport: a.addr,
				aborts:   a.aborts,
				closedAs: "canceled",
			}
		}},
		{name: "waiting for the response head", start: func(t *testing.T) inPhase {
			a := newAdversary(t).stallHeaders()
			d.setPolicy(t, &pooldv1.Policy{Name: "policies/" + a.addr, ResponseHeaderTimeout: pdur(0)}, "response_header_timeout")
			return inPhase{
				req:      &pooldv1.DoRequest{Url: "http://" + a.addr + "/"},
				reached:  func() { a.wantHead(t) },
				hostport: a.addr,
				aborts:   a.aborts,
				closedAs: "canceled",
			}
		}},
		{name: "reading the response body", start: func(t *testing.T) inPhase {
			a := newAdversary(t).stallBody()
			return inPhase{
				req:      &pooldv1.DoRequest{Url: "http://" + a.addr + "/"},
				reached:  func() { receive(t, a.progress, "the body to start") },
				hostport: a.addr,
				aborts:   a.aborts,
				closedAs: "canceled",
			}
		}},
	}
	// finish checks what a cancelled call leaves behind.
	finish := func(t *testing.T, p inPhase) {
		if p.aborts != nil {
			receive(t, p.aborts, "the upstream connection to be closed")
		}
		if p.release != nil {
			p.release()
		}
		d.settled(t, p.hostport)
		if p.closedAs != "" {
			d.wantClosed(t, p.hostport, p.closedAs)
		}
		d.serving(t)
	}
	for _, ph := range phases {
		t.Run(ph.name+", over gRPC", func(t *testing.T) {
			p := ph.start(t)
			ctx, cancel := context.WithCancel(testContext(t))
			defer cancel()
			errc := make(chan error, 1)
			if ph.stream {
				st, err := d.http.Stream(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if err := st.Send(&pooldv1.StreamRequest{Msg: &pooldv1.StreamRequest_Head{Head: p.req}}); err != nil {
					t.Fatal(err)
				}
				if err := st.Send(&pooldv1.StreamRequest{Msg: &pooldv1.StreamRequest_Body{Body: []byte("first chunk")}}); err != nil {
					t.Fatal(err)
				}
				go func() {
					_, err := st.Recv()
					errc <- err
				}()
			} else {
				go func() {
					_, err := d.http.Do(ctx, p.req)
					errc <- err
				}()
			}
			p.reached()
			cancel()
			if err := receive(t, errc, "the call to end"); status.Code(err) != codes.Canceled {
				t.Fatalf("call ended with %v, want CANCELLED", err)
			}
			finish(t, p)
		})
		t.Run(ph.name+", in-process", func(t *testing.T) {
			// Over gRPC a caller that cancels never hears the answer; the
			// handler's own result is the status poold logs and counts.
			p := ph.start(t)
			ctx, cancel := context.WithCancel(testContext(t))
			defer cancel()
			errc := make(chan error, 1)
			if ph.stream {
				ds := newDirectStream(ctx)
				ds.in <- &pooldv1.StreamRequest{Msg: &pooldv1.StreamRequest_Head{Head: p.req}}
				ds.in <- &pooldv1.StreamRequest{Msg: &pooldv1.StreamRequest_Body{Body: []byte("first chunk")}}
				go func() { errc <- d.direct.Stream(ds) }()
			} else {
				go func() {
					_, err := d.direct.Do(ctx, p.req)
					errc <- err
				}()
			}
			p.reached()
			cancel()
			wantStatus(t, receive(t, errc, "the call to end"), codes.Canceled, ReasonCanceled)
			finish(t, p)
		})
	}
}

// netipLoopback is 127.0.0.1 for the fake resolver.
var netipLoopback = netip.MustParseAddr("127.0.0.1")

// urlHost returns the host:port part of an absolute URL.
func urlHost(raw string) string {
	return strings.SplitN(raw, "/", 4)[2]
}

func TestSSRFSpellingsAndRebindingAreDeniedBeforeAnyConnect(t *testing.T) {
	// Built-in egress rules: loopback, link-local and the metadata
	// addresses are denied. The one hole is ::1, where the healthy
	// upstream listens, so that follow-up requests have somewhere to go.
	d := startAdvDaemon(t, advOptions{allow: []string{"::1/128"}, healthyHost: "::1"})
	hosts := []string{
		// 127.0.0.1 as inet_aton spells it: names to Go, resolved (by the
		// fake resolver, as libc would) to loopback.
		"2130706433", "0x7f000001", "0177.0.0.1", "127.1", "0x7f.1", "017700000001",
		"127.0.0.1", "0.0.0.0", "[::]", "[::ffff:127.0.0.1]", "[::127.0.0.1]",
		// The cloud metadata service, spelled every way.
		"169.254.169.254", "2852039166", "0xa9fea9fe", "0251.0376.0251.0376", "[::ffff:a9fe:a9fe]",
		"metadata.test", "mapped-metadata.test", "[fd00:ec2::254]",
		// Embedded IPv4 in IPv6 transition forms.
		"[64:ff9b::a9fe:a9fe]", "[2002:7f00:1::]", "[2001:0:4136:e378:8000:63bf:80ff:fffe]",
		// Link-local, multicast, broadcast.
		"[fe80::1]", "[ff02::1]", "224.0.0.1", "255.255.255.255",
		// A name whose every answer is denied.
		"all-denied.test",
	}
	for _, host := range hosts {
		t.Run(host, func(t *testing.T) {
			req, _ := withRequestID(&pooldv1.DoRequest{Url: "http://" + host + "/latest/meta-data/"})
			_, err := d.http.Do(testContext(t), req)
			wantStatus(t, err, codes.PermissionDenied, ReasonEgressDenied)
			if step := errorInfo(err).GetMetadata()["dial_step"]; step != "egress" {
				t.Errorf("dial_step = %q, want egress", step)
			}
			if n := d.guard.allowedFor(strings.Trim(host, "[]")); n != 0 {
				t.Errorf("egress allowed %d addresses of %s", n, host)
			}
			d.settled(t, net.JoinHostPort(strings.Trim(host, "[]"), "80"))
			d.serving(t)
		})
	}

	t.Run("a name that rebinds from ::1 to 127.0.0.1", func(t *testing.T) {
		if d.healthy == "" {
			t.Skip("no IPv6 loopback")
		}
		port := d.healthy[strings.LastIndex(d.healthy, ":")+1 : strings.LastIndex(d.healthy, "/")]
		d.resolver.sequence("rebind6.test", []netip.Addr{netip.MustParseAddr("::1")}, []netip.Addr{netip.MustParseAddr("127.0.0.1")})
		url := "http://rebind6.test:" + port + "/healthy"
		if _, err := d.http.Do(testContext(t), &pooldv1.DoRequest{Url: url}); err != nil {
			t.Fatalf("first request, resolved to ::1: %v", err)
		}
		if _, err := d.pools.CloseIdleConnections(testContext(t), &pooldv1.CloseIdleConnectionsRequest{Host: "rebind6.test:" + port}); err != nil {
			t.Fatal(err)
		}
		_, err := d.http.Do(testContext(t), &pooldv1.DoRequest{Url: url})
		wantStatus(t, err, codes.PermissionDenied, ReasonEgressDenied)
		d.settled(t, "rebind6.test:"+port)
		d.serving(t)
	})
}

func TestRebindingRedirectsAndSelfCallsAreDeniedEvenWithLoopbackAllowed(t *testing.T) {
	d := mainDaemon(t, advOptions{})
	_, selfPort, _ := net.SplitHostPort(d.self)

	t.Run("a name that rebinds from 127.0.0.1 to the metadata address", func(t *testing.T) {
		healthy := newAdversary(t)
		_, port, _ := net.SplitHostPort(healthy.addr)
		d.resolver.sequence("rebind.test", []netip.Addr{netipLoopback}, []netip.Addr{netip.MustParseAddr("169.254.169.254")})
		url := "http://rebind.test:" + port + "/"
		if _, err := d.http.Do(testContext(t), &pooldv1.DoRequest{Url: url}); err != nil {
			t.Fatalf("first request, resolved to 127.0.0.1: %v", err)
		}
		// The warm connection would serve the next request without a
		// lookup; a new dial looks the name up again.
		if _, err := d.pools.CloseIdleConnections(testContext(t), &pooldv1.CloseIdleConnectionsRequest{Host: "rebind.test:" + port}); err != nil {
			t.Fatal(err)
		}
		_, err := d.http.Do(testContext(t), &pooldv1.DoRequest{Url: url})
		wantStatus(t, err, codes.PermissionDenied, ReasonEgressDenied)
		d.settled(t, "rebind.test:"+port)
		d.serving(t)
	})

	for _, tt := range []struct{ name, url string }{
		{"poold's own listener", "http://" + d.self + "/"},
		{"poold's own listener, spelled as a number", "http://2130706433:" + selfPort + "/"},
		{"::1, which allowing 127.0.0.1 does not open", "http://[::1]:" + selfPort + "/"},
		{"the metadata name", "http://metadata.test/latest/meta-data/"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := d.http.Do(testContext(t), &pooldv1.DoRequest{Url: tt.url})
			wantStatus(t, err, codes.PermissionDenied, ReasonEgressDenied)
			d.settled(t, urlHost(tt.url))
			d.serving(t)
		})
	}

	redirects := []struct {
		name     string
		location string
	}{
		{"to the metadata address", "http://169.254.169.254/latest/meta-data/"},
		{"to the metadata address as IPv4-mapped IPv6", "http://[::ffff:a9fe:a9fe]/latest/meta-data/"},
		{"to the metadata address as a number", "http://2852039166/latest/meta-data/"},
		{"to a name for the metadata address", "http://metadata.test/latest/meta-data/"},
		{"to poold's own listener", "http://127.0.0.1:" + selfPort + "/"},
	}
	for _, tt := range redirects {
		t.Run("redirect "+tt.name, func(t *testing.T) {
			a := newAdversary(t).redirectTo(tt.location)
			req, id := withRequestID(&pooldv1.DoRequest{Url: "http://" + a.addr + "/start", MaxRedirects: 3})
			_, err := d.http.Do(testContext(t), req)
			wantStatus(t, err, codes.PermissionDenied, ReasonEgressDenied)
			if n := a.seen(id); n != 1 {
				t.Errorf("the redirecting upstream saw the request %d times, want 1", n)
			}
			d.settled(t, a.addr)
			d.settled(t, urlHost(tt.location))
			d.serving(t)
		})
	}
	t.Run("redirect to the metadata address is returned as is without max_redirects", func(t *testing.T) {
		a := newAdversary(t).redirectTo("http://169.254.169.254/")
		resp, err := d.http.Do(testContext(t), &pooldv1.DoRequest{Url: "http://" + a.addr + "/start"})
		if err != nil || resp.GetStatusCode() != 302 {
			t.Fatalf("Do = %v, %v; want the 302 itself", resp, err)
		}
		d.settled(t, a.addr)
	})
}

func TestBadInputIsRefusedBeforeAnythingIsDialed(t *testing.T) {
	d := mainDaemon(t, advOptions{})
	a := newAdversary(t)
	good := "http://" + a.addr + "/"
	tests := []struct {
		name  string
		req   *pooldv1.DoRequest
		field string
	}{
		{"no URL", &pooldv1.DoRequest{}, "url"},
		{"ftp URL", &pooldv1.DoRequest{Url: "ftp://" + a.addr + "/"}, "url"},
		{"relative URL", &pooldv1.DoRequest{Url: "/relative"}, "url"},
		{"URL without a host", &pooldv1.DoRequest{Url: "http:///path"}, "url"},
		{"URL with user info", &pooldv1.DoRequest{Url: "http://user:secret@" + a.addr + "/"}, "url"},
		{"URL with port 0", &pooldv1.DoRequest{Url: "http://127.0.0.1:0/"}, "url"},
		{"URL with a port past 65535", &pooldv1.DoRequest{Url: "http://127.0.0.1:65536/"}, "url"},
		{"method with a space", &pooldv1.DoRequest{Method: "GE T", Url: good}, "method"},
		{"CONNECT", &pooldv1.DoRequest{Method: "CONNECT", Url: good}, "method"},
		{"header name with a space", &pooldv1.DoRequest{Url: good, Headers: []*pooldv1.Header{hdr("Bad Name", "x")}}, "headers[0].name"},
		{"header value smuggling a second header", &pooldv1.DoRequest{Url: good, Headers: []*pooldv1.Header{hdr("X-A", "a\r\nX-Injected: 1")}}, "headers[0].value"},
		{"header value with NUL", &pooldv1.DoRequest{Url: good, Headers: []*pooldv1.Header{hdr("X-A", "a\x00b")}}, "headers[0].value"},
		{"hop-by-hop Transfer-Encoding", &pooldv1.DoRequest{Url: good, Headers: []*pooldv1.Header{hdr("Transfer-Encoding", "chunked")}}, "headers[0].name"},
		{"Host twice", &pooldv1.DoRequest{Url: good, Headers: []*pooldv1.Header{hdr("Host", "a.test"), hdr("Host", "b.test")}}, "headers[1].name"},
		{"Content-Length that does not match the body", &pooldv1.DoRequest{Method: "POST", Url: good, Body: []byte("abc"), Headers: []*pooldv1.Header{hdr("Content-Length", "10")}}, "headers[0].value"},
		{"negative timeout", &pooldv1.DoRequest{Url: good, Timeout: pdur(-time.Second)}, "timeout"},
		{"too many redirects", &pooldv1.DoRequest{Url: good, MaxRedirects: 21}, "max_redirects"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, id := withRequestID(tt.req)
			_, err := d.http.Do(testContext(t), req)
			wantFieldViolation(t, err, tt.field)
			if n := a.seen(id); n != 0 {
				t.Errorf("the upstream saw the request %d times", n)
			}
			d.settled(t, a.addr)
			d.serving(t)
		})
	}
	t.Run("Stream whose first message is a body chunk", func(t *testing.T) {
		st, err := d.http.Stream(testContext(t))
		if err != nil {
			t.Fatal(err)
		}
		_ = st.Send(&pooldv1.StreamRequest{Msg: &pooldv1.StreamRequest_Body{Body: []byte("x")}})
		_, err = st.Recv()
		wantFieldViolation(t, err, "head")
		d.serving(t)
	})
	// grpc-go refuses a message over MaxRecvMsgSize before any poold code
	// runs, so the status carries no ErrorInfo: the code is the contract.
	t.Run("Do message over the receive limit", func(t *testing.T) {
		req, id := withRequestID(&pooldv1.DoRequest{Method: "POST", Url: good, Body: make([]byte, 3<<19)})
		_, err := d.http.Do(testContext(t), req)
		wantStatus(t, err, codes.ResourceExhausted, "")
		if n := a.seen(id); n != 0 {
			t.Errorf("the upstream saw the request %d times", n)
		}
		d.serving(t)
	})
	t.Run("Stream chunk over the receive limit", func(t *testing.T) {
		st, err := d.http.Stream(testContext(t))
		if err != nil {
			t.Fatal(err)
		}
		_ = st.Send(&pooldv1.StreamRequest{Msg: &pooldv1.StreamRequest_Head{Head: &pooldv1.DoRequest{Method: "POST", Url: good}}})
		_ = st.Send(&pooldv1.StreamRequest{Msg: &pooldv1.StreamRequest_Body{Body: make([]byte, 3<<19)}})
		var rerr error
		for rerr == nil {
			_, rerr = st.Recv()
		}
		wantStatus(t, rerr, codes.ResourceExhausted, "")
		d.settled(t, a.addr)
		d.serving(t)
	})
}

// FuzzUpstreamResponse answers a request with arbitrary bytes and checks
// that Do ends in time with a response or a status from the README's
// table, and that the pool is left with nothing active.
func FuzzUpstreamResponse(f *testing.F) {
	for _, raw := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
		"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 7\r\n\r\nok-more",
		"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: rot13\r\n\r\nbx",
		"HTTP/1.1 2OO OK\r\n\r\n",
		"HTTP/1.0 200 OK\r\n\r\nuntil close",
		"HTTP/1.1 101 Switching Protocols\r\nUpgrade: evil\r\nConnection: Upgrade\r\n\r\n",
		"HTTP/1.1 103 Early Hints\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
		"HTTP/1.1 302 Found\r\nLocation: http://169.254.169.254/\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nBad(Header): x\r\n\r\n",
		"this is not HTTP at all\r\n\r\n",
		"HTTP/1.1 200 OK\r\nX-Name: caf\xe9\r\nContent-Length: 2\r\n\r\nok",
		"",
	} {
		f.Add([]byte(raw))
	}
	// One upstream for every input: a listener per input would run the
	// machine out of ports long before the fuzzer runs out of ideas.
	a := newAdversary(f)
	port, _ := strconv.ParseUint(a.addr[strings.LastIndex(a.addr, ":")+1:], 10, 16)
	// Redirects may go anywhere the input says; only the upstream itself
	// may be reached.
	rules, err := dialer.NewEgressRules(dialer.EgressConfig{
		Allow: []string{"127.0.0.1/32"}, DefaultDeny: true, AllowedPorts: []uint16{uint16(port)},
	})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		a.reply(string(raw))
		engine, err := pool.New(pool.Options{
			Dialer: &dialer.Dialer{Resolver: newFakeResolver(), Egress: &egressGuard{rules: rules, allowed: map[string]int{}}},
			Proxy:  func(*url.URL) (*url.URL, error) { return nil, nil },
			Policies: pool.PolicySet{Default: pool.Policy{
				DialTimeout:           ptr(advDialTimeout),
				ResponseHeaderTimeout: ptr(advHeaderTimeout),
			}},
		})
		if err != nil {
			t.Fatal(err)
		}
		defer engine.Close()
		srv := NewHTTPServer(engine, HTTPOptions{MaxBodySize: 64 << 10})
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		resp, err := srv.Do(ctx, &pooldv1.DoRequest{Url: "http://" + a.addr + "/", Timeout: pdur(time.Second), MaxRedirects: 2})
		if ctx.Err() != nil {
			t.Fatalf("Do did not end within its timeout: %v", err)
		}
		outcome, bad := classifyOutcome(err, false)
		if bad != "" {
			t.Fatalf("Do ended with %s, outside the README table: %s", outcome, bad)
		}
		if err == nil {
			// What gRPC would have to send: a response that does not
			// marshal fails the call with INTERNAL.
			if _, err := proto.Marshal(resp); err != nil {
				t.Fatalf("the response does not marshal: %v", err)
			}
		}
		t.Logf("%q: %s", raw[:min(len(raw), 80)], outcome)
		if !poll(5*time.Second, func() bool {
			for _, h := range engine.Hosts() {
				if h.Active != 0 || h.Dialing != 0 || h.Pending != 0 {
					return false
				}
			}
			return true
		}) {
			t.Fatalf("the pool did not settle: %+v", engine.Hosts())
		}
	})
}
