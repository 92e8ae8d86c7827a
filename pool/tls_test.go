package pool

import (
	"context"
	"crypto/tls"
	"strings"
	"testing"
)

func TestTLSConnsRecordTheirParametersAndAreReused(t *testing.T) {
	ca := newTestCA(t)
	u := newTLSUpstream(t, ca, respond("secure"))
	e := newTestEngine(t, Options{Dialer: ca.dialer()})
	first := mustGet(t, e, u.URL)
	second := mustGet(t, e, u.URL)
	if first.body != "secure" || !second.timing.Reused || second.timing.ConnID != first.timing.ConnID {
		t.Fatalf("first %+v second %+v", first, second)
	}
	if first.timing.TLSHandshake <= 0 || second.timing.TLSHandshake != 0 {
		t.Errorf("TLS handshake times %v, %v", first.timing.TLSHandshake, second.timing.TLSHandshake)
	}
	cs := e.Conns(ConnFilter{Host: u.host})
	if len(cs) != 1 {
		t.Fatalf("conns %+v", cs)
	}
	c := cs[0]
	if c.TLSVersion != tls.VersionTLS13 || c.TLSCipherSuite == 0 || c.ALPN != "http/1.1" || c.Protocol != "HTTP/1.1" || c.State != ConnIdle || c.Requests != 2 {
		t.Errorf("conn info %+v", c)
	}
	if c.BytesRead == 0 || c.BytesWritten == 0 || c.LocalAddr == "" || c.RemoteAddr != u.host {
		t.Errorf("conn info %+v", c)
	}
}

func TestAnUnusedTLSConnIsNotMistakenForDeadByPostHandshakeMessages(t *testing.T) {
	ca := newTestCA(t)
	// A TLS 1.3 server that asks for a client certificate sends its
	// resumption data only after the client's last flight, so it arrives
	// after the client's handshake is done and waits on the socket.
	u := newTLSUpstream(t, ca, respond("ok"), func(c *tls.Config) { c.ClientAuth = tls.RequestClientCert })
	e := newTestEngine(t, Options{Dialer: ca.dialer()})
	hp, err := e.route("https", "127.0.0.1", u.host[strings.LastIndex(u.host, ":")+1:], nil)
	if err != nil {
		t.Fatal(err)
	}
	// Dial a conn and park it idle before any request: the
	// post-handshake messages are still unread.
	c, err := hp.getConn(context.Background(), &timing{})
	if err != nil {
		t.Fatal(err)
	}
	hp.release(c, "")
	eventually(t, "the post-handshake messages to arrive", func() bool { return peekSocket(c.tcp) == peekData })

	r := mustGet(t, e, u.URL)
	if r.timing.ConnID != c.id {
		t.Errorf("request used conn %d, want the parked conn %d", r.timing.ConnID, c.id)
	}
	if closed := hostStats(t, e, u).Counters.Closed; len(closed) != 0 {
		t.Errorf("closed %v", closed)
	}
}

func TestResponsesCarryTheirConnsTLSStateAndTheCallersRequest(t *testing.T) {
	ca := newTestCA(t)
	secure := newTLSUpstream(t, ca, respond("ok"))
	plain := newUpstream(t, respond("ok"))
	e := newTestEngine(t, Options{Dialer: ca.dialer()})
	for _, u := range []*upstream{secure, plain} {
		req := newRequest(t, context.Background(), "GET", u.URL, "")
		resp, err := e.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if (resp.TLS != nil) != (u == secure) {
			t.Errorf("%s: resp.TLS = %v", u.URL, resp.TLS)
		}
		if resp.Request == nil || resp.Request.URL != req.URL || resp.Request.Header == nil {
			t.Errorf("%s: resp.Request = %v, want the caller's request", u.URL, resp.Request)
		}
	}
}
