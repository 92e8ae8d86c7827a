package dialer

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"time"
)

// Target is what to dial.
type Target struct {
	Host       string   // host name or IP literal, no brackets
	Port       string   // number, or a service name such as "https"
	TLS        bool     // do a TLS handshake after connect (through CONNECT when Proxy != nil)
	ServerName string   // SNI and the name the certificate must match; "" = Host
	NextProtos []string // ALPN, e.g. []string{"http/1.1"}; nil keeps the base config's
	// Proxy is nil for a direct dial, else an http (or https) proxy URL. For
	// a TLS target a CONNECT tunnel is made through it; for a plain-http
	// target the caller speaks absolute-form to the proxy, so Dial just
	// connects to the proxy.
	Proxy *url.URL
	// ProxyHeader holds extra headers for CONNECT. Proxy-Authorization is
	// derived from Proxy.User when that is set, and then wins over this.
	ProxyHeader http.Header
}

// Options are the per-dial knobs, taken from the resolved policy.
type Options struct {
	// DialTimeout covers resolve + connect (+ CONNECT through a proxy); 0 =
	// no limit beyond ctx.
	DialTimeout time.Duration
	// TLSHandshakeTimeout bounds the handshake alone, since the dial timeout
	// is already spent; 0 = no limit beyond ctx.
	TLSHandshakeTimeout time.Duration
	// KeepAlive is set on the socket as it is made. The zero value turns
	// keep-alive off, as SetKeepAlive does.
	KeepAlive net.KeepAliveConfig
	// MaxConnectResponseBytes bounds the proxy's CONNECT response head;
	// 0 = 64 KiB.
	MaxConnectResponseBytes int
}

// Conn is a dialed connection with the facts the pool records about it.
type Conn struct {
	net.Conn                      // the conn to use (a *tls.Conn when TLS)
	TCP      *net.TCPConn         // the underlying socket, kept so keep-alive can be retuned live
	TLS      *tls.ConnectionState // nil for plain TCP
	// Resolved lists the origin's addresses: the IP literal, or what the
	// resolver answered. Through a proxy a name is resolved, and listed,
	// only for the egress check; otherwise the proxy resolves it.
	Resolved []netip.Addr
	// How long each step took. Through a proxy, Connect covers reaching the
	// proxy and the CONNECT exchange, and DNS includes the proxy's name.
	DNS, Connect, TLSHandshake time.Duration
}

// Dialer turns a Target into a ready connection. Its fields are read, never
// written, by Dial, so one Dialer serves concurrent dials.
type Dialer struct {
	Resolver Resolver      // nil = net.DefaultResolver
	Egress   EgressChecker // nil = allow all
	// TLSConfig is the base config (roots, session cache), cloned per dial
	// with ServerName and NextProtos set per target. nil = NewTLSConfig("")
	// shared by every Dialer without one.
	TLSConfig *tls.Config

	// attemptDelay overrides defaultAttemptDelay in tests; 0 = default.
	attemptDelay time.Duration
}

func (d *Dialer) delay() time.Duration {
	if d.attemptDelay > 0 {
		return d.attemptDelay
	}
	return defaultAttemptDelay
}

// Dial resolves t, checks every address against d.Egress (or the checker
// WithEgress put in ctx), connects with
// happy eyeballs (through t.Proxy when set), sets keep-alive and, for a TLS
// target, completes the handshake. A failure is an *Error naming the step.
// On success the caller owns the returned Conn and must Close it.
func (d *Dialer) Dial(ctx context.Context, t Target, o Options) (*Conn, error) {
	target := hostPort(t.Host, t.Port)
	if trimBrackets(t.Host) == "" || t.Port == "" {
		return nil, newError(StepResolve, target, "", errors.New("target needs a host and a port"))
	}

	dctx := ctx
	if o.DialTimeout > 0 {
		var cancel context.CancelFunc
		dctx, cancel = context.WithTimeout(ctx, o.DialTimeout)
		defer cancel()
	}
	port, err := parsePort(dctx, t.Port)
	if err != nil {
		return nil, newError(StepResolve, target, "", err)
	}

	c := &Conn{}
	var raw net.Conn
	if t.Proxy != nil {
		raw, err = d.dialProxy(dctx, t, o, c, target, port)
	} else {
		raw, err = d.dialDirect(dctx, t, o, c, target, port)
	}
	if err != nil {
		return nil, err
	}
	if !t.TLS {
		c.Conn = raw
		return c, nil
	}

	// The handshake runs under the caller's ctx and its own timeout, not
	// what is left of the dial timeout.
	start := time.Now()
	tc, err := d.handshake(ctx, raw, t, o.TLSHandshakeTimeout)
	c.TLSHandshake = time.Since(start)
	if err != nil {
		raw.Close()
		addr := ""
		if t.Proxy == nil {
			addr = raw.RemoteAddr().String()
		}
		return nil, newError(StepTLS, target, addr, err)
	}
	state := tc.ConnectionState()
	c.Conn, c.TLS = tc, &state
	return c, nil
}

// dialDirect resolves t.Host, drops the addresses egress denies and races
// connects to the rest.
func (d *Dialer) dialDirect(ctx context.Context, t Target, o Options, c *Conn, target string, port uint16) (net.Conn, error) {
	host := trimBrackets(t.Host)
	start := time.Now()
	addrs, err := d.lookup(ctx, host)
	if _, literal := parseIPLiteral(host); !literal {
		c.DNS = time.Since(start)
	}
	if err != nil {
		return nil, newError(StepResolve, target, "", err)
	}
	c.Resolved = addrs

	allowed, err := d.allowed(d.egressFor(ctx), t.Host, target, addrs, port)
	if err != nil {
		return nil, err
	}

	start = time.Now()
	tcp, ap, err := race(ctx, netDialer(o.KeepAlive), allowed, d.delay())
	c.Connect = time.Since(start)
	if err != nil {
		return nil, newError(StepConnect, target, ap.String(), err)
	}
	c.TCP = tcp
	return tcp, nil
}

// allowed returns the addresses egress allows, in happy-eyeballs order.
// A denied address is skipped, not fatal, so a name with one forbidden
// answer still reaches its others; only when none is left does the dial
// fail, with the first denial as the reason.
func (d *Dialer) allowed(egress EgressChecker, host, target string, addrs []netip.Addr, port uint16) ([]netip.AddrPort, error) {
	out := make([]netip.AddrPort, 0, len(addrs))
	var denied *Error
	for _, a := range interleave(addrs) {
		ap := netip.AddrPortFrom(a, port)
		if err := checkEgress(egress, host, ap); err != nil {
			if denied == nil {
				denied = newError(StepEgress, target, ap.String(), err)
			}
			continue
		}
		out = append(out, ap)
	}
	if len(out) == 0 {
		return nil, denied
	}
	return out, nil
}
