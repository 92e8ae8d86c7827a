package pool_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/poold/poold/dialer"
	"github.com/poold/poold/dialer/dialertest"
	"github.com/poold/poold/pool"
)

// startNginxH2 runs nginx serving HTTPS with HTTP/2 on a loopback port,
// with a certificate for 127.0.0.1 from a CA made for the test, and the
// given http-block directives. It returns the address and the CA.
func startNginxH2(t *testing.T, directives string) (string, *dialertest.CA) {
	t.Helper()
	bin := nginxBinary(t)
	out, err := exec.Command(bin, "-v").CombinedOutput()
	if err != nil {
		t.Fatalf("nginx -v: %v\n%s", err, out)
	}
	srv, err := nginxH2Server(string(out))
	if err != nil {
		t.Fatal(err)
	}
	ca := dialertest.NewCA(t)
	certPEM, keyPEM := ca.Issue(t, 2, "127.0.0.1")
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	srv.directives += fmt.Sprintf("\n    ssl_certificate %s;\n    ssl_certificate_key %s;", certFile, keyFile)
	return startNginxServer(t, bin, dir, directives, srv), ca
}

// nginxVersion matches the version in what `nginx -v` prints.
var nginxVersion = regexp.MustCompile(`nginx/(\d+)\.(\d+)\.(\d+)`)

// nginxH2Server returns the server block settings for TLS with HTTP/2 in
// the syntax of the nginx whose `nginx -v` output is given: nginx 1.25.1
// made HTTP/2 a directive of its own and deprecated the listen parameter.
func nginxH2Server(versionOutput string) (nginxServer, error) {
	m := nginxVersion.FindStringSubmatch(versionOutput)
	if m == nil {
		return nginxServer{}, fmt.Errorf("no nginx version in %q", versionOutput)
	}
	var v [3]int
	for i := range v {
		v[i], _ = strconv.Atoi(m[i+1])
	}
	if v[0] > 1 || v[0] == 1 && (v[1] > 25 || v[1] == 25 && v[2] >= 1) {
		return nginxServer{listen: "ssl", directives: "http2 on;"}, nil
	}
	return nginxServer{listen: "ssl http2"}, nil
}

func TestNginxHTTP2SyntaxFollowsTheInstalledVersion(t *testing.T) {
	for _, tc := range []struct {
		out  string
		want nginxServer
	}{
		{"nginx version: nginx/1.22.1\n", nginxServer{listen: "ssl http2"}},
		{"nginx version: nginx/1.25.0", nginxServer{listen: "ssl http2"}},
		{"nginx version: nginx/1.25.1", nginxServer{listen: "ssl", directives: "http2 on;"}},
		{"nginx version: nginx/1.26.3 (Debian)", nginxServer{listen: "ssl", directives: "http2 on;"}},
		{"nginx version: nginx/2.0.0", nginxServer{listen: "ssl", directives: "http2 on;"}},
	} {
		got, err := nginxH2Server(tc.out)
		if err != nil || got != tc.want {
			t.Errorf("nginxH2Server(%q) = %+v, %v; want %+v", tc.out, got, err, tc.want)
		}
	}
	if _, err := nginxH2Server("openresty"); err == nil {
		t.Error("a version string without a version was accepted")
	}
}

// nginx ends an HTTP/2 conn with GOAWAY after its fifth stream: the pool
// must take each GOAWAY as the end of that conn, dial the next one, and
// close every conn for that reason once its streams are done, with no
// caller-visible error.
func TestNginxGoAwayAfterFiveStreamsEndsEachConnAfterFiveRequests(t *testing.T) {
	const requests, perConn = 100, 5
	addr, ca := startNginxH2(t, fmt.Sprintf("keepalive_requests %d;", perConn))
	engine, err := pool.New(pool.Options{
		Dialer: &dialer.Dialer{TLSConfig: &tls.Config{RootCAs: ca.Pool, MinVersion: tls.VersionTLS12}},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer engine.Close()

	// Bounds every wait of the test; a healthy run takes well under it.
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	closed := engine.Subscribe(ctx, pool.EventFilter{Kinds: []pool.EventKind{pool.EventClosed}})

	client := &http.Client{Transport: engine, Timeout: 10 * time.Second}
	url := "https://" + addr + "/"
	for i := range requests {
		resp, err := client.Get(url)
		if err != nil {
			t.Fatalf("GET %d: %v", i, err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatalf("GET %d: reading the body: %v", i, err)
		}
		if resp.StatusCode != http.StatusOK || string(body) != "ok\n" {
			t.Fatalf("GET %d: %d %q", i, resp.StatusCode, body)
		}
		if resp.ProtoMajor != 2 {
			t.Fatalf("GET %d: answered over %s, want HTTP/2.0", i, resp.Proto)
		}
	}

	// A conn closes once its last stream is done after the GOAWAY, which
	// may be a moment after its last response reached the caller.
	const wantConns = requests / perConn
	reasons := map[string]int{}
	for n := 0; n < wantConns; {
		select {
		case ev, ok := <-closed:
			if !ok {
				t.Fatalf("event stream ended after %d closes: %v", n, reasons)
			}
			if ev.Kind == pool.EventClosed {
				reasons[ev.Reason]++
				n++
			}
		case <-ctx.Done():
			h, _ := engine.Host(addr)
			t.Fatalf("%d of %d conns closed before the wait ran out: %v; host %+v", n, wantConns, reasons, h)
		}
	}

	h, ok := engine.Host(addr)
	if !ok {
		t.Fatal("no host stats for nginx")
	}
	c := h.Counters
	if c.Requests != requests || c.Errors != 0 || c.Retries != 0 {
		t.Errorf("requests %d, errors %d, retries %d; want %d, 0, 0", c.Requests, c.Errors, c.Retries, requests)
	}
	if c.Dials != wantConns || c.DialErrors != 0 {
		t.Errorf("dials %d (%d failed), want %d: one conn per %d requests", c.Dials, c.DialErrors, wantConns, perConn)
	}
	if c.Streams != requests || c.GoAways != wantConns || c.RefusedStreams != 0 {
		t.Errorf("streams %d, GOAWAYs %d, refused streams %d; want %d, %d, 0", c.Streams, c.GoAways, c.RefusedStreams, requests, wantConns)
	}
	if want := map[pool.CloseReason]uint64{pool.CloseGoAway: wantConns}; !maps.Equal(c.Closed, want) {
		t.Errorf("closed %v, want %v", c.Closed, want)
	}
	if h.Active != 0 || h.Idle != 0 || h.H2Conns != 0 {
		t.Errorf("after every conn closed: active %d, idle %d, HTTP/2 conns %d", h.Active, h.Idle, h.H2Conns)
	}
}
