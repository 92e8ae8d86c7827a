package server

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/poold/poold/dialer"
	"github.com/poold/poold/pool"
)

// The HTTP/JSON API is the gRPC service under another wire format: the
// same answer, the same error mapping, the same tokens.
func TestTheHTTPJSONAPIServesDoAsGRPCDoes(t *testing.T) {
	up := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Upstream", "yes")
		w.WriteHeader(http.StatusTeapot)
		io.WriteString(w, "short and stout")
	})
	upAddr := strings.TrimPrefix(up.URL, "http://")
	resolver := newFakeResolver()
	resolver.set("metadata.corp.example", netip.MustParseAddr("169.254.169.254"))
	rules, err := dialer.NewEgressRules(dialer.EgressConfig{Allow: []string{"127.0.0.1/32"}})
	if err != nil {
		t.Fatal(err)
	}
	engine, err := pool.New(pool.Options{
		Proxy:  func(*url.URL) (*url.URL, error) { return nil, nil },
		Dialer: &dialer.Dialer{Resolver: resolver, Egress: rules},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer engine.Close()
	store, err := OpenPolicyStore("", engine.SetPolicies, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	admin := writeTokenFile(t, "admin-secret")
	srv, err := New(Config{Engine: engine, Policies: store, AdminTokens: admin})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop(time.Second)
	h, err := srv.HTTPAPI()
	if err != nil {
		t.Fatal(err)
	}
	api := httptest.NewServer(h)
	defer api.Close()

	post := func(path, body string, header ...string) (int, map[string]any) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, api.URL+path, bytes.NewBufferString(body))
		req.Header.Set("Content-Type", "application/json")
		for i := 0; i+1 < len(header); i += 2 {
			req.Header.Set(header[i], header[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		var out map[string]any
		if err := json.Unmarshal(raw, &out); err != nil {
			t.Fatalf("POST %s: %d, body %q is not JSON: %v", path, resp.StatusCode, raw, err)
		}
		return resp.StatusCode, out
	}

	code, out := post("/poold.v1.HTTPService/Do", `{"url": "http://`+upAddr+`/tea"}`)
	if code != http.StatusOK || out["statusCode"] != float64(http.StatusTeapot) || out["body"] != "c2hvcnQgYW5kIHN0b3V0" {
		t.Errorf("Do over HTTP/JSON = %d %v; want 200 with statusCode 418 and the body in base64", code, out)
	}

	for _, tc := range []struct {
		name, path, body string
		header           []string
		status           int
		want             []string // in the JSON answer
	}{
		{"egress denied", "/poold.v1.HTTPService/Do", `{"url": "http://metadata.corp.example/"}`, nil, http.StatusForbidden, []string{"EGRESS_DENIED"}},
		{"bad URL", "/poold.v1.HTTPService/Do", `{"url": "ftp://example.com/"}`, nil, http.StatusBadRequest, []string{"INVALID_ARGUMENT", "url"}},
		{"admin call without a token", "/poold.v1.PoolService/ListHosts", `{}`, nil, http.StatusUnauthorized, nil},
		{"admin call with the token", "/poold.v1.PoolService/ListHosts", `{}`, []string{"Authorization", "Bearer admin-secret"}, http.StatusOK, []string{upAddr}},
		{"the default policy with its HTTP/2 fields", "/poold.v1.PolicyService/GetPolicy", `{"name": "policies/default"}`, []string{"Authorization", "Bearer admin-secret"}, http.StatusOK,
			[]string{`"protocols":"PROTOCOLS_H2_PREFERRED"`, `"maxConcurrentStreams":0`, `"strictMaxConcurrentStreams":false`, `"h2ReadIdleTimeout":"30s"`, `"h2PingTimeout":"15s"`}},
		{"a call that changes policy", "/poold.v1.PolicyService/UpdatePolicy", `{}`, []string{"Authorization", "Bearer admin-secret"}, http.StatusNotFound, []string{"use gRPC"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out := post(tc.path, tc.body, tc.header...)
			raw, _ := json.Marshal(out)
			if code != tc.status {
				t.Errorf("status %d (%s), want %d", code, raw, tc.status)
			}
			for _, w := range tc.want {
				if !strings.Contains(string(raw), w) {
					t.Errorf("answer %s does not have %q", raw, w)
				}
			}
		})
	}
}

// writeTokenFile writes tokens to a file of the test's and loads it.
func writeTokenFile(t *testing.T, tokens ...string) *TokenFile {
	t.Helper()
	path := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(path, []byte(strings.Join(tokens, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := LoadTokenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return f
}
