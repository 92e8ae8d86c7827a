package dialer

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"time"
)

// defaultMaxConnectResponseBytes bounds a proxy's CONNECT response head when
// Options leave it unset: far more than any real proxy sends, little enough
// that a broken or hostile one cannot make poold buffer without end.
const defaultMaxConnectResponseBytes = 64 << 10

// dialProxy reaches t through t.Proxy. For a TLS target it opens a CONNECT
// tunnel to the origin; for a plain target the caller speaks absolute-form
// HTTP to the proxy, so the connection to the proxy is the result.
//
// Egress is checked for the origin as the EgressChecker doc describes. A
// name that resolves differently at the proxy is beyond what a local check
// can catch.
func (d *Dialer) dialProxy(ctx context.Context, t Target, o Options, c *Conn, target string, port uint16) (net.Conn, error) {
	if err := d.checkProxiedTarget(ctx, t, c, target, port); err != nil {
		return nil, err
	}

	proxyAddr, useTLS, err := proxyHostPort(t.Proxy)
	if err != nil {
		return nil, newError(StepProxy, target, "", err)
	}
	proxyHost, proxyPortStr, _ := net.SplitHostPort(proxyAddr)
	proxyPort, err := parsePort(ctx, proxyPortStr)
	if err != nil {
		return nil, newError(StepProxy, target, proxyAddr, fmt.Errorf("proxy port: %w", err))
	}

	start := time.Now()
	addrs, err := d.lookup(ctx, proxyHost)
	if _, literal := parseIPLiteral(proxyHost); !literal {
		c.DNS += time.Since(start)
	}
	if err != nil {
		return nil, newError(StepProxy, target, proxyAddr, fmt.Errorf("resolving proxy: %w", err))
	}
	tried := make([]netip.AddrPort, 0, len(addrs))
	for _, a := range interleave(addrs) {
		tried = append(tried, netip.AddrPortFrom(a, proxyPort))
	}

	start = time.Now()
	tcp, ap, err := race(ctx, netDialer(o.KeepAlive), tried, d.delay())
	if err != nil {
		c.Connect = time.Since(start)
		return nil, newError(StepProxy, target, ap.String(), fmt.Errorf("connecting to proxy: %w", err))
	}
	c.TCP = tcp
	var conn net.Conn = tcp
	fail := func(err error) (net.Conn, error) {
		conn.Close()
		c.Connect = time.Since(start)
		return nil, newError(StepProxy, target, ap.String(), err)
	}

	if useTLS {
		tc, err := d.handshake(ctx, conn, Target{Host: proxyHost, NextProtos: []string{"http/1.1"}}, 0)
		if err != nil {
			return fail(fmt.Errorf("TLS to proxy: %w", err))
		}
		conn = tc
	}
	if t.TLS {
		tunneled, err := connectTunnel(ctx, conn, target, t.Proxy, t.ProxyHeader, o.MaxConnectResponseBytes)
		if err != nil {
			return fail(err)
		}
		conn = tunneled
	}
	c.Connect = time.Since(start)
	return conn, nil
}

// checkProxiedTarget applies the egress checker to the origin of a proxied
// dial, as the EgressChecker doc describes, and records what it resolved.
func (d *Dialer) checkProxiedTarget(ctx context.Context, t Target, c *Conn, target string, port uint16) error {
	egress := d.egressFor(ctx)
	host := trimBrackets(t.Host)
	if ip, ok := parseIPLiteral(host); ok {
		c.Resolved = []netip.Addr{ip}
		ap := netip.AddrPortFrom(ip, port)
		if err := checkEgress(egress, t.Host, ap); err != nil {
			return newError(StepEgress, target, ap.String(), err)
		}
		return nil
	}
	if egress == nil {
		return nil // nothing to check, so no reason to resolve what the proxy will
	}
	start := time.Now()
	addrs, err := d.lookup(ctx, host)
	c.DNS = time.Since(start)
	if err != nil {
		if ctx.Err() != nil {
			// The dial's time is gone; the proxy cannot be reached now either.
			return newError(StepResolve, target, "", err)
		}
		return nil
	}
	c.Resolved = addrs
	for _, a := range addrs {
		ap := netip.AddrPortFrom(a, port)
		if err := checkEgress(egress, t.Host, ap); err != nil {
			return newError(StepEgress, target, ap.String(), err)
		}
	}
	return nil
}

// proxyHostPort returns the host:port to connect to for proxy u and whether
// the proxy itself is spoken to over TLS.
func proxyHostPort(u *url.URL) (string, bool, error) {
	var port string
	var useTLS bool
	switch u.Scheme {
	case "http":
		port = "80"
	case "https":
		port, useTLS = "443", true
	default:
		return "", false, fmt.Errorf("unsupported proxy scheme %q (want http or https)", u.Scheme)
	}
	if u.Hostname() == "" {
		return "", false, fmt.Errorf("proxy URL %q has no host", u.Redacted())
	}
	if p := u.Port(); p != "" {
		port = p
	}
	return net.JoinHostPort(u.Hostname(), port), useTLS, nil
}

// connectTunnel asks the proxy on conn for a tunnel to target and returns
// the connection to use for it. The whole exchange runs under ctx, and the
// response head is read through a reader that stops at limit bytes, so
// neither a silent proxy nor an endless header can hold the dial.
func connectTunnel(ctx context.Context, conn net.Conn, target string, proxy *url.URL, extra http.Header, limit int) (net.Conn, error) {
	if limit <= 0 {
		limit = defaultMaxConnectResponseBytes
	}
	hdr := extra.Clone()
	if hdr == nil {
		hdr = make(http.Header)
	}
	if u := proxy.User; u != nil {
		pass, _ := u.Password()
		cred := base64.StdEncoding.EncodeToString([]byte(u.Username() + ":" + pass))
		hdr.Set("Proxy-Authorization", "Basic "+cred)
	}
	req := &http.Request{
		Method: http.MethodConnect,
		URL:    &url.URL{Opaque: target},
		Host:   target,
		Header: hdr,
	}

	// The conn deadline enforces ctx's deadline; the AfterFunc enforces its
	// cancellation by pulling the deadline into the past.
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })

	resp, br, err := exchangeConnect(conn, req, limit)
	if !stop() {
		// ctx ended: even if the answer made it, the deadline is spent and
		// the conn's deadline may already be in the past.
		return nil, ctxErr(ctx, fmt.Errorf("CONNECT %s: %w", target, ctx.Err()))
	}
	if err != nil {
		return nil, ctxErr(ctx, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, fmt.Errorf("proxy refused CONNECT %s: %s", target, resp.Status)
	}
	conn.SetDeadline(time.Time{})
	if n := br.Buffered(); n > 0 {
		// Bytes the origin sent right behind the proxy's answer belong to
		// the tunnel; hand them out before reading the socket again.
		early, _ := br.Peek(n)
		return &bufferedConn{Conn: conn, r: io.MultiReader(bytes.NewReader(bytes.Clone(early)), conn)}, nil
	}
	return conn, nil
}

// exchangeConnect writes req and reads the response head, at most limit
// bytes of it.
func exchangeConnect(conn net.Conn, req *http.Request, limit int) (*http.Response, *bufio.Reader, error) {
	if err := req.Write(conn); err != nil {
		return nil, nil, fmt.Errorf("writing CONNECT: %w", err)
	}
	lr := &headLimitReader{r: conn, n: limit, limit: limit}
	br := bufio.NewReaderSize(lr, min(limit, 4096))
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		return nil, nil, fmt.Errorf("reading CONNECT response: %w", err)
	}
	return resp, br, nil
}

// headLimitReader reads at most n bytes from r and then fails with a
// message that names the limit, rather than the bare EOF of io.LimitReader
// that http.ReadResponse would turn into "unexpected EOF".
type headLimitReader struct {
	r     io.Reader
	n     int // bytes left
	limit int // for the message
}

func (l *headLimitReader) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, fmt.Errorf("proxy's CONNECT response head exceeds %d bytes", l.limit)
	}
	if len(p) > l.n {
		p = p[:l.n]
	}
	n, err := l.r.Read(p)
	l.n -= n
	return n, err
}

// bufferedConn is a conn whose first bytes were already read into memory.
type bufferedConn struct {
	net.Conn
	r io.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }
