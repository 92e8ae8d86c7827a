package h2script_test

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/net/http2"

	"github.com/poold/poold/internal/h2script"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// client returns x/net's own HTTP/2 transport for srv, h2c or TLS.
func client(t *testing.T, srv *h2script.Server) *http2.Transport {
	tr := &http2.Transport{}
	if srv.RootCAs != nil {
		tr.TLSClientConfig = &tls.Config{RootCAs: srv.RootCAs}
	} else {
		tr.AllowHTTP = true
		tr.DialTLSContext = func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		}
	}
	t.Cleanup(tr.CloseIdleConnections)
	return tr
}

func TestScriptServesRequestAndBody(t *testing.T) {
	for _, useTLS := range []bool{false, true} {
		name := "h2c"
		if useTLS {
			name = "tls"
		}
		t.Run(name, func(t *testing.T) {
			got := make(chan *h2script.Stream, 1)
			script := func(c *h2script.Conn) {
				if useTLS && c.ALPN != "h2" {
					c.Errorf("ALPN %q, want h2", c.ALPN)
				}
				c.Greet(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 5})
				st := c.WantBody(c.WantHeaders())
				got <- st
				c.WriteHeaders(st.ID, false, ":status", "201", "x-test", "yes")
				c.WriteData(st.ID, false, []byte("hello"))
				c.WriteTrailers(st.ID, "x-trailer", "done")
				c.WantClosed()
			}
			var srv *h2script.Server
			if useTLS {
				srv = h2script.NewTLSServer(t, script)
			} else {
				srv = h2script.NewServer(t, script)
			}
			req, _ := http.NewRequest("POST", srv.URL+"/up?q=1", strings.NewReader("payload"))
			req.Header.Set("X-Req", "r")
			res, err := client(t, srv).RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			b, err := io.ReadAll(res.Body)
			res.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			if res.StatusCode != 201 || string(b) != "hello" || res.Header.Get("X-Test") != "yes" || res.Trailer.Get("X-Trailer") != "done" {
				t.Errorf("response %d %q header %v trailer %v", res.StatusCode, b, res.Header, res.Trailer)
			}
			st := <-got
			if st.Method() != "POST" || st.Path() != "/up?q=1" || st.Get("x-req") != "r" || string(st.Body) != "payload" || !st.Ended {
				t.Errorf("server saw %s %s x-req=%q body %q ended %v", st.Method(), st.Path(), st.Get("x-req"), st.Body, st.Ended)
			}
		})
	}
}

func TestScriptGoAwayMakesClientRetryOnNewConn(t *testing.T) {
	srv := h2script.NewServer(t, func(c *h2script.Conn) {
		c.Greet()
		st := c.WantHeaders()
		if c.Index == 0 {
			c.WriteGoAway(0, http2.ErrCodeNo, "")
			c.WantClosed()
			return
		}
		c.Respond(st.ID, 200, "second")
		c.WantClosed()
	})
	req, _ := http.NewRequest("GET", srv.URL, nil)
	res, err := client(t, srv).RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if string(b) != "second" || srv.Accepted() != 2 {
		t.Errorf("body %q after %d conns, want second after 2", b, srv.Accepted())
	}
}

func TestScriptSilentConnFailsClientPing(t *testing.T) {
	closed := make(chan error, 1)
	srv := h2script.NewServer(t, func(c *h2script.Conn) {
		c.Greet()
		c.WantHeaders()
		closed <- c.Silent()
	})
	tr := client(t, srv)
	tr.ReadIdleTimeout = 50 * time.Millisecond
	tr.PingTimeout = 50 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a hang guard only
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL, nil)
	if _, err := tr.RoundTrip(req); err == nil {
		t.Fatal("RoundTrip on a silent conn succeeded")
	}
	select {
	case err := <-closed:
		if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
			t.Logf("silent conn ended with %v", err)
		}
	case <-ctx.Done():
		t.Fatal("the client never closed the silent conn")
	}
}

func TestCloseEndsBlockedScripts(t *testing.T) {
	started := make(chan struct{})
	srv := h2script.NewServer(t, func(c *h2script.Conn) {
		close(started)
		c.Await(make(chan struct{}))
		t.Error("Await returned though nothing was sent")
	})
	nc, err := net.Dial("tcp", srv.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	<-started
	srv.Close()
	if _, err := nc.Read(make([]byte, 1)); err == nil {
		t.Error("conn still open after Close")
	}
}
