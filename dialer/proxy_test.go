package dialer

import (
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestDialTLSThroughAProxyTunnel(t *testing.T) {
	pki := newTestPKI(t)
	up := newTLSUpstream(t, pki, "http/1.1")
	proxy := newTestProxy(t, tunnel, map[string]string{"example.test": "127.0.0.1"})
	proxyURL, _ := url.Parse("http://user:pa%20ss@" + proxy.hostport)
	check := &denyList{}
	d := &Dialer{
		Resolver:  &fakeResolver{hosts: map[string][]netip.Addr{"example.test": addrs("127.0.0.1")}},
		Egress:    check,
		TLSConfig: pki.clientConfig(),
	}

	c, err := d.Dial(testContext(t), Target{
		Host:        "example.test",
		Port:        up.port,
		TLS:         true,
		NextProtos:  []string{"http/1.1"},
		Proxy:       proxyURL,
		ProxyHeader: http.Header{"X-Trace": {"abc"}, "Proxy-Authorization": {"Basic overridden"}},
	}, Options{DialTimeout: time.Second, TLSHandshakeTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	roundTrip(t, c, "through the tunnel")
	req := proxy.request(t)
	target := "example.test:" + up.port
	if req.Method != http.MethodConnect || req.RequestURI != target || req.Host != target {
		t.Errorf("proxy got %s %s Host %s, want CONNECT %s", req.Method, req.RequestURI, req.Host, target)
	}
	if got, want := req.Header.Get("Proxy-Authorization"), "Basic dXNlcjpwYSBzcw=="; got != want { // user:pa ss
		t.Errorf("Proxy-Authorization = %q, want %q", got, want)
	}
	if got := req.Header.Get("X-Trace"); got != "abc" {
		t.Errorf("X-Trace = %q, want the extra header passed on", got)
	}
	if c.TLS == nil || c.TLS.ServerName != "example.test" || c.TLS.NegotiatedProtocol != "http/1.1" {
		t.Errorf("TLS state = %+v, want example.test with http/1.1", c.TLS)
	}
	if sni := <-up.sni; sni != "example.test" {
		t.Errorf("origin saw SNI %q", sni)
	}
	if got := c.TCP.RemoteAddr().String(); got != proxy.hostport {
		t.Errorf("socket goes to %s, want the proxy %s", got, proxy.hostport)
	}
	// The origin's address is checked; the proxy's is not.
	if want := []string{"example.test 127.0.0.1:" + up.port}; !slices.Equal(check.questions(), want) {
		t.Errorf("egress asked %v, want %v", check.questions(), want)
	}
}

func TestProxyRefusingCONNECTFailsAtProxyNamingTheStatus(t *testing.T) {
	tests := []struct {
		reply proxyReply
		want  string
	}{
		{http.StatusProxyAuthRequired, "407 Proxy Authentication Required"},
		{http.StatusBadGateway, "502 Bad Gateway"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			proxy := newTestProxy(t, tt.reply, nil)
			proxyURL, _ := url.Parse(proxy.url)

			_, err := (&Dialer{}).Dial(testContext(t), Target{Host: "127.0.0.1", Port: "443", TLS: true, Proxy: proxyURL},
				Options{DialTimeout: time.Second})

			de := dialError(t, err, StepProxy)
			if !strings.Contains(err.Error(), tt.want) || de.Timeout() {
				t.Errorf("err = %v, want the status %q and no timeout", err, tt.want)
			}
			if de.Addr != proxy.hostport || de.Host != "127.0.0.1:443" {
				t.Errorf("Addr, Host = %q, %q; want the proxy and the origin", de.Addr, de.Host)
			}
		})
	}
}

func TestProxyWithAnEndlessHeaderFailsAtTheBound(t *testing.T) {
	tests := []struct {
		name  string
		limit int
		want  string
	}{
		{"explicit bound", 4096, "exceeds 4096 bytes"},
		{"default bound", 0, "exceeds 65536 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			proxy := newTestProxy(t, endless, nil)
			proxyURL, _ := url.Parse(proxy.url)

			_, err := (&Dialer{}).Dial(testContext(t), Target{Host: "127.0.0.1", Port: "443", TLS: true, Proxy: proxyURL},
				Options{DialTimeout: 5 * time.Second, MaxConnectResponseBytes: tt.limit})

			de := dialError(t, err, StepProxy)
			if !strings.Contains(err.Error(), tt.want) || de.Timeout() {
				t.Errorf("err = %v, want %q and no timeout", err, tt.want)
			}
		})
	}
}

func TestProxySilentAfterConnectIsATimeoutAtProxy(t *testing.T) {
	// The kernel accepts the connection; nobody answers the CONNECT.
	ln := listen(t, "tcp4", "127.0.0.1:0")
	proxyURL, _ := url.Parse("http://" + ln.Addr().String())

	_, err := (&Dialer{}).Dial(testContext(t), Target{Host: "127.0.0.1", Port: "443", TLS: true, Proxy: proxyURL},
		Options{DialTimeout: 100 * time.Millisecond})

	de := dialError(t, err, StepProxy)
	if !de.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("err = %v, want a timeout", err)
	}
}

func TestPlainTargetThroughAProxyConnectsToTheProxy(t *testing.T) {
	proxy := newTestProxy(t, tunnel, nil)
	proxyURL, _ := url.Parse(proxy.url)

	c, err := (&Dialer{}).Dial(testContext(t), Target{Host: "example.test", Port: "80", Proxy: proxyURL}, Options{DialTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	// The caller speaks absolute-form HTTP to the proxy itself.
	io.WriteString(c, "GET http://example.test/ HTTP/1.1\r\nHost: example.test\r\n\r\n")
	req := proxy.request(t)
	if req.Method != http.MethodGet || req.RequestURI != "http://example.test/" {
		t.Errorf("proxy got %s %s, want the caller's absolute-form GET", req.Method, req.RequestURI)
	}
	if c.TLS != nil || c.RemoteAddr().String() != proxy.hostport {
		t.Errorf("TLS = %v, remote %s; want plain TCP to the proxy", c.TLS, c.RemoteAddr())
	}
}

func TestProxyFailuresAreReportedAtProxy(t *testing.T) {
	tests := []struct {
		name  string
		proxy string
		res   *fakeResolver
	}{
		{"refused", "http://127.0.0.1:" + closedPort(t), nil},
		{"unknown scheme", "socks5://127.0.0.1:1080", nil},
		{"name that does not resolve", "http://proxy.test:3128", &fakeResolver{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u, _ := url.Parse(tt.proxy)
			d := &Dialer{}
			if tt.res != nil {
				d.Resolver = tt.res
			}

			_, err := d.Dial(testContext(t), Target{Host: "127.0.0.1", Port: "443", TLS: true, Proxy: u}, Options{DialTimeout: time.Second})

			dialError(t, err, StepProxy)
		})
	}
}

func TestEgressThroughAProxyChecksTheOriginNotTheProxy(t *testing.T) {
	tests := []struct {
		name      string
		host      string
		res       *fakeResolver
		wantStep  Step // "" = the dial succeeds through the proxy
		wantAsked []string
	}{
		{
			name:      "denied IP literal",
			host:      "::1",
			res:       &fakeResolver{},
			wantStep:  StepEgress,
			wantAsked: []string{"::1 [::1]:443"},
		},
		{
			name:      "name with a denied answer among allowed ones",
			host:      "example.test",
			res:       &fakeResolver{hosts: map[string][]netip.Addr{"example.test": addrs("127.0.0.1", "::1")}},
			wantStep:  StepEgress,
			wantAsked: []string{"example.test 127.0.0.1:443", "example.test [::1]:443"},
		},
		{
			name:      "name that does not resolve here is left to the proxy",
			host:      "only-the-proxy-knows.test",
			res:       &fakeResolver{},
			wantAsked: nil,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			proxy := newTestProxy(t, tunnel, nil)
			proxyURL, _ := url.Parse(proxy.url)
			check := &denyList{deny: addrs("::1")}
			d := &Dialer{Resolver: tt.res, Egress: check}

			// A plain target: the proxy's conn is the result, so success
			// needs no origin behind the proxy.
			c, err := d.Dial(testContext(t), Target{Host: tt.host, Port: "443", Proxy: proxyURL}, Options{DialTimeout: time.Second})

			if tt.wantStep != "" {
				dialError(t, err, tt.wantStep)
				if !errors.Is(err, ErrEgressDenied) {
					t.Errorf("err = %v, want ErrEgressDenied", err)
				}
			} else if err != nil {
				t.Fatal(err)
			} else {
				c.Close()
			}
			if !slices.Equal(check.questions(), tt.wantAsked) {
				t.Errorf("egress asked %v, want %v (never the proxy %s)", check.questions(), tt.wantAsked, proxy.hostport)
			}
		})
	}
}

func TestConnectTunnelKeepsBytesThatFollowTheResponse(t *testing.T) {
	client, proxy := net.Pipe()
	defer client.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer proxy.Close()
		buf := make([]byte, 4096)
		proxy.Read(buf) // the CONNECT request
		io.WriteString(proxy, "HTTP/1.1 200 OK\r\n\r\nearly bytes")
	}()
	u, _ := url.Parse("http://proxy.test")

	conn, err := connectTunnel(testContext(t), client, "example.test:443", u, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(conn)
	<-done
	if string(got) != "early bytes" {
		t.Errorf("tunnel read %q, want the bytes behind the response head", got)
	}
}
