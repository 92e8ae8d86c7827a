package pool_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/poold/poold/internal/h2script"
	"github.com/poold/poold/pool"
)

func scriptPtr[T any](v T) *T { return &v }

// scriptEngine returns an engine speaking h2c to srv, closed when the test ends.
func scriptEngine(t *testing.T, edit func(*pool.Policy)) *pool.Engine {
	t.Helper()
	p := pool.Policy{Protocols: scriptPtr(pool.ProtocolsH2C)}
	if edit != nil {
		edit(&p)
	}
	e, err := pool.New(pool.Options{
		Policies: pool.PolicySet{Default: p},
		Proxy:    func(*url.URL) (*url.URL, error) { return nil, nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

// scriptDo sends one request under a hang guard and reads the whole body.
func scriptDo(t *testing.T, e *pool.Engine, method, u, body string) (int, string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second) // a hang guard only
	defer cancel()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		t.Fatal(err)
	}
	res, err := e.RoundTrip(req)
	if err != nil {
		return 0, "", err
	}
	b, err := io.ReadAll(res.Body)
	res.Body.Close()
	return res.StatusCode, string(b), err
}

func scriptEventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func scriptHost(t *testing.T, e *pool.Engine, srv *h2script.Server) pool.HostStats {
	t.Helper()
	h, ok := e.Host(srv.Addr)
	if !ok {
		t.Fatalf("no pool for %s", srv.Addr)
	}
	return h
}

// goAwayFirstConn answers GOAWAY(last, code) on conn 0's first stream and
// serves every other conn.
func goAwayFirstConn(last uint32, code http2.ErrCode) h2script.Script {
	return func(c *h2script.Conn) {
		c.Greet(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 10})
		for {
			st := c.WantBody(c.WantHeaders())
			if c.Index == 0 && st.ID > last {
				c.WriteGoAway(last, code, "")
				c.WantClosed()
				return
			}
			c.Respond(st.ID, 200, st.Method()+" "+string(st.Body))
		}
	}
}

func TestH2RetryAfterGOAWAYNoRetry(t *testing.T) {
	srv := h2script.NewServer(t, goAwayFirstConn(0, http2.ErrCodeInternal))
	e := scriptEngine(t, nil)
	_, _, err := scriptDo(t, e, "GET", srv.URL, "")
	var sre *pool.StreamResetError
	if !errors.As(err, &sre) || sre.Code != uint32(http2.ErrCodeInternal) || !sre.GoAway {
		t.Fatalf("error %v (%T), want a *pool.StreamResetError{Code: INTERNAL_ERROR, GoAway: true}", err, err)
	}
	if n := srv.Accepted(); n != 1 {
		t.Errorf("%d conns accepted, want 1: the request was retried", n)
	}
	if h := scriptHost(t, e, srv); h.Counters.Retries != 0 || h.Counters.GoAways != 1 {
		t.Errorf("retries %d goaways %d, want 0 and 1", h.Counters.Retries, h.Counters.GoAways)
	}
}

func TestH2RetryAfterGOAWAYRetry(t *testing.T) {
	for _, method := range []string{"GET", "POST"} {
		t.Run(method, func(t *testing.T) {
			srv := h2script.NewServer(t, goAwayFirstConn(0, http2.ErrCodeNo))
			e := scriptEngine(t, nil)
			status, body, err := scriptDo(t, e, method, srv.URL, "replayable")
			if err != nil || status != 200 || body != method+" replayable" {
				t.Fatalf("got %d %q %v, want 200 %q", status, body, err, method+" replayable")
			}
			if n := srv.Accepted(); n != 2 {
				t.Errorf("%d conns accepted, want 2", n)
			}
			h := scriptHost(t, e, srv)
			if h.Counters.Retries != 1 || h.Counters.GoAways != 1 {
				t.Errorf("retries %d goaways %d, want 1 and 1", h.Counters.Retries, h.Counters.GoAways)
			}
			scriptEventually(t, "the GOAWAY conn closed as goaway", func() bool {
				return scriptHost(t, e, srv).Counters.Closed[pool.CloseGoAway] == 1
			})
		})
	}
}

func TestH2RetryAfterGOAWAYSecondRequest(t *testing.T) {
	for _, method := range []string{"GET", "POST"} {
		t.Run(method, func(t *testing.T) {
			srv := h2script.NewServer(t, goAwayFirstConn(1, http2.ErrCodeProtocol))
			e := scriptEngine(t, nil)
			if status, _, err := scriptDo(t, e, "GET", srv.URL, ""); err != nil || status != 200 {
				t.Fatalf("first request: %d %v", status, err)
			}
			status, body, err := scriptDo(t, e, method, srv.URL, "again")
			if err != nil || status != 200 || body != method+" again" {
				t.Fatalf("second request: %d %q %v", status, body, err)
			}
			if n := srv.Accepted(); n != 2 {
				t.Errorf("%d conns accepted, want 2", n)
			}
			if h := scriptHost(t, e, srv); h.Counters.Retries != 1 {
				t.Errorf("retries %d, want 1", h.Counters.Retries)
			}
		})
	}
}

func TestH2NoRetryOnStreamProtocolError(t *testing.T) {
	release := make(chan struct{})
	srv := h2script.NewServer(t, func(c *h2script.Conn) {
		c.Greet(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 10})
		long := c.WantHeaders()
		bad := c.WantHeaders()
		if long.Path() != "/long" || bad.Path() != "/bad" {
			c.Errorf("streams %s then %s, want /long then /bad", long.Path(), bad.Path())
		}
		c.WriteRSTStream(bad.ID, http2.ErrCodeProtocol)
		c.Await(release)
		c.Respond(long.ID, 200, "long")
		c.WantClosed()
	})
	e := scriptEngine(t, nil)
	longDone := make(chan error, 1)
	go func() {
		_, body, err := scriptDo(t, e, "GET", srv.URL+"/long", "")
		if err == nil && body != "long" {
			err = errors.New("body " + body)
		}
		longDone <- err
	}()
	scriptEventually(t, "the first stream", func() bool {
		h, ok := e.Host(srv.Addr)
		return ok && h.Streams == 1
	})
	_, _, err := scriptDo(t, e, "GET", srv.URL+"/bad", "")
	var sre *pool.StreamResetError
	if !errors.As(err, &sre) || sre.Code != uint32(http2.ErrCodeProtocol) || sre.GoAway {
		t.Errorf("error %v, want a *pool.StreamResetError{Code: PROTOCOL_ERROR}", err)
	}
	close(release)
	if err := <-longDone; err != nil {
		t.Errorf("the other stream failed: %v", err)
	}
	if h := scriptHost(t, e, srv); h.Counters.Retries != 0 || srv.Accepted() != 1 {
		t.Errorf("retries %d, conns %d, want 0 and 1", h.Counters.Retries, srv.Accepted())
	}
}

func TestH2ReturnsErrorOnBadResponseHeaders(t *testing.T) {
	rst := make(chan http2.ErrCode, 1)
	srv := h2script.NewServer(t, func(c *h2script.Conn) {
		c.Greet()
		st := c.WantHeaders()
		c.WriteHeaders(st.ID, false, ":status", "200", "  content-type", "bogus")
		rst <- c.WantRSTStream(st.ID)
		c.WantClosed()
	})
	e := scriptEngine(t, nil)
	_, _, err := scriptDo(t, e, "GET", srv.URL, "")
	if !errors.Is(err, pool.ErrProtocol) {
		t.Errorf("error %v, want one matching pool.ErrProtocol", err)
	}
	if code := <-rst; code != http2.ErrCodeProtocol {
		t.Errorf("client reset the stream with %v, want PROTOCOL_ERROR", code)
	}
	if h := scriptHost(t, e, srv); h.Counters.Retries != 0 {
		t.Errorf("retries %d, want 0", h.Counters.Retries)
	}
}

func TestH2ConnBecomesUnresponsive(t *testing.T) {
	srv := h2script.NewServer(t, func(c *h2script.Conn) {
		c.Greet()
		st := c.WantHeaders()
		c.Respond(st.ID, 200, "ok")
		if c.Index == 0 {
			c.Silent()
			return
		}
		c.WantClosed()
	})
	e := scriptEngine(t, func(p *pool.Policy) {
		p.H2ReadIdleTimeout = scriptPtr(50 * time.Millisecond)
		p.H2PingTimeout = scriptPtr(50 * time.Millisecond)
	})
	if status, _, err := scriptDo(t, e, "GET", srv.URL, ""); err != nil || status != 200 {
		t.Fatalf("first request: %d %v", status, err)
	}
	scriptEventually(t, "the silent conn closed as ping_timeout", func() bool {
		return scriptHost(t, e, srv).Counters.Closed[pool.ClosePingTimeout] == 1
	})
	if status, _, err := scriptDo(t, e, "GET", srv.URL, ""); err != nil || status != 200 {
		t.Fatalf("request after the ping timeout: %d %v", status, err)
	}
	if n := srv.Accepted(); n != 2 {
		t.Errorf("%d conns accepted, want 2", n)
	}
}
