package pool

import (
	"net/url"
	"testing"
)

func TestHTTPSGoesThroughAConnectTunnel(t *testing.T) {
	ca := newTestCA(t)
	u := newTLSUpstream(t, ca, echoPath())
	p := newConnectProxy(t)
	e := newTestEngine(t, Options{Dialer: ca.dialer()}, func(pol *Policy) { pol.ProxyURL = ptr(p.URL.String()) })

	first := mustGet(t, e, u.URL+"/one")
	second := mustGet(t, e, u.URL+"/two")
	if first.body != "GET /one 0" || second.body != "GET /two 0" {
		t.Errorf("bodies %q, %q", first.body, second.body)
	}
	if !second.timing.Reused || p.connects.Load() != 1 {
		t.Errorf("reused %v, CONNECTs %d; want the tunnel reused", second.timing.Reused, p.connects.Load())
	}
	h := hostStats(t, e, u)
	if want := "https://" + u.host + " via " + p.URL.String(); h.Key != want || h.Proxy != p.URL.String() {
		t.Errorf("key %q proxy %q, want %q", h.Key, h.Proxy, want)
	}
}

func TestPlainHTTPGoesToTheProxyInAbsoluteForm(t *testing.T) {
	u := newUpstream(t, echoPath())
	p := newConnectProxy(t)
	var proxied *url.URL
	e := newTestEngine(t, Options{Proxy: func(target *url.URL) (*url.URL, error) {
		proxied = target
		return p.URL, nil
	}})
	r := mustGet(t, e, u.URL+"/abs?q=1")
	if r.body != "GET /abs 0" {
		t.Errorf("body %q", r.body)
	}
	if uri, _ := p.lastURI.Load().(string); uri != u.URL+"/abs?q=1" {
		t.Errorf("proxy saw request-target %q, want absolute form", uri)
	}
	if proxied == nil || proxied.Host != u.host || p.connects.Load() != 0 {
		t.Errorf("proxy func saw %v; CONNECTs %d", proxied, p.connects.Load())
	}
}

func TestProxyDirectOverridesTheEnvironment(t *testing.T) {
	u := newUpstream(t, respond("direct"))
	e := newTestEngine(t, Options{Proxy: func(*url.URL) (*url.URL, error) {
		t.Error("the proxy function was consulted despite proxy_url direct")
		return nil, nil
	}}, func(p *Policy) { p.ProxyURL = ptr("direct") })
	if r := mustGet(t, e, u.URL); r.body != "direct" {
		t.Errorf("body %q", r.body)
	}
}
