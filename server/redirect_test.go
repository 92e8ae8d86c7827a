package server

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	pooldv1 "github.com/poold/poold/gen/poold/v1"
)

// seen is what an upstream saw of one request.
type seen struct {
	Method, Path, Host, Body string
	Header                   http.Header
}

// recorder is an upstream that records every request and answers from a
// route table: a path maps to a status and a Location, or to 200 "final".
type recorder struct {
	reqs   chan seen
	routes map[string]redirectTo
}

type redirectTo struct {
	code     int
	location string
}

func newRecorder(t *testing.T, routes map[string]redirectTo) (*recorder, string) {
	rec := &recorder{reqs: make(chan seen, 32), routes: routes}
	srv := upstream(t, rec.ServeHTTP)
	return rec, srv.URL
}

func (rec *recorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	rec.reqs <- seen{Method: r.Method, Path: r.URL.RequestURI(), Host: r.Host, Body: string(b), Header: r.Header.Clone()}
	if to, ok := rec.routes[r.URL.Path]; ok {
		w.Header().Set("Location", to.location)
		w.WriteHeader(to.code)
		io.WriteString(w, "moved")
		return
	}
	io.WriteString(w, "final")
}

func (rec *recorder) next(t *testing.T) seen {
	t.Helper()
	return receive(t, rec.reqs, "an upstream request")
}

func TestDoFollowsARelativeRedirectAndReportsTheFinalURL(t *testing.T) {
	rec, base := newRecorder(t, map[string]redirectTo{"/a/start": {http.StatusFound, "next?x=1"}})
	h := newHTTPHarness(t)
	resp := h.do(t, &pooldv1.DoRequest{Url: base + "/a/start", MaxRedirects: 5})
	if resp.GetStatusCode() != http.StatusOK || string(resp.GetBody()) != "final" {
		t.Fatalf("got %d %q, want 200 final", resp.GetStatusCode(), resp.GetBody())
	}
	if want := base + "/a/next?x=1"; resp.GetUrl() != want {
		t.Errorf("url = %q, want %q", resp.GetUrl(), want)
	}
	if resp.GetTiming().GetRedirects() != 1 {
		t.Errorf("redirects = %d, want 1", resp.GetTiming().GetRedirects())
	}
	rec.next(t)
	if got := rec.next(t).Path; got != "/a/next?x=1" {
		t.Errorf("second hop went to %q", got)
	}
	// The 3xx body was drained, so the second hop took the same conn.
	if !resp.GetTiming().GetReused() {
		t.Error("the hop after a drained redirect did not reuse the connection")
	}
}

func TestDoRedirectMethodAndBodyFollowTheStatusCode(t *testing.T) {
	cases := []struct {
		code       int
		method     string
		wantMethod string
		wantBody   bool
	}{
		{http.StatusSeeOther, "POST", "GET", false},
		{http.StatusSeeOther, "PUT", "GET", false},
		{http.StatusSeeOther, "HEAD", "HEAD", false},
		{http.StatusFound, "POST", "GET", false},
		{http.StatusMovedPermanently, "POST", "GET", false},
		{http.StatusFound, "PUT", "PUT", true},
		{http.StatusTemporaryRedirect, "POST", "POST", true},
		{http.StatusPermanentRedirect, "PUT", "PUT", true},
	}
	for _, tc := range cases {
		t.Run(fmt.Sprintf("%d after %s", tc.code, tc.method), func(t *testing.T) {
			rec, base := newRecorder(t, map[string]redirectTo{"/from": {tc.code, "/to"}})
			h := newHTTPHarness(t)
			in := &pooldv1.DoRequest{
				Method:       tc.method,
				Url:          base + "/from",
				Headers:      []*pooldv1.Header{hdr("Content-Type", "text/plain"), hdr("X-Keep", "yes")},
				MaxRedirects: 1,
			}
			if tc.method != "HEAD" {
				in.Body = []byte("the body")
			}
			resp := h.do(t, in)
			if resp.GetStatusCode() != http.StatusOK {
				t.Fatalf("status %d, want the redirect followed", resp.GetStatusCode())
			}
			rec.next(t)
			got := rec.next(t)
			if got.Method != tc.wantMethod {
				t.Errorf("second hop method %s, want %s", got.Method, tc.wantMethod)
			}
			if got.Header.Get("X-Keep") != "yes" {
				t.Error("second hop lost an ordinary header")
			}
			if tc.wantBody {
				if got.Body != "the body" || got.Header.Get("Content-Type") != "text/plain" {
					t.Errorf("second hop body %q type %q, want the body resent", got.Body, got.Header.Get("Content-Type"))
				}
				return
			}
			if got.Body != "" || got.Header.Get("Content-Length") != "" {
				t.Errorf("second hop body %q length %q, want no body", got.Body, got.Header.Get("Content-Length"))
			}
			if tc.method != tc.wantMethod && got.Header.Get("Content-Type") != "" {
				t.Errorf("second hop kept Content-Type %q of a body it does not send", got.Header.Get("Content-Type"))
			}
		})
	}
}

func TestDoRedirectDropsCredentialsOnlyWhenTheHostChanges(t *testing.T) {
	other, otherURL := newRecorder(t, nil)
	rec, base := newRecorder(t, map[string]redirectTo{
		"/same":  {http.StatusFound, "/landing"},
		"/cross": {http.StatusFound, otherURL + "/landing"},
	})
	h := newHTTPHarness(t)
	creds := []*pooldv1.Header{
		hdr("Authorization", "Bearer secret"), hdr("Cookie", "session=1"), hdr("Proxy-Authorization", "Basic cHc="),
		hdr("X-Keep", "yes"), hdr("Host", "virtual.example"),
	}

	h.do(t, &pooldv1.DoRequest{Url: base + "/same", Headers: creds, MaxRedirects: 1})
	rec.next(t)
	same := rec.next(t)
	for _, k := range []string{"Authorization", "Cookie", "Proxy-Authorization", "X-Keep"} {
		if same.Header.Get(k) == "" {
			t.Errorf("a same-host redirect dropped %s", k)
		}
	}
	if same.Host != "virtual.example" {
		t.Errorf("a same-host redirect sent Host %q, want the override kept", same.Host)
	}

	h.do(t, &pooldv1.DoRequest{Url: base + "/cross", Headers: creds, MaxRedirects: 1})
	rec.next(t)
	cross := other.next(t)
	for _, k := range []string{"Authorization", "Cookie", "Proxy-Authorization"} {
		if v := cross.Header.Get(k); v != "" {
			t.Errorf("a redirect to another port carried %s: %q", k, v)
		}
	}
	if cross.Header.Get("X-Keep") != "yes" {
		t.Error("a cross-host redirect dropped an ordinary header")
	}
	if want := strings.TrimPrefix(otherURL, "http://"); cross.Host != want {
		t.Errorf("a cross-host redirect sent Host %q, want %q", cross.Host, want)
	}
}

func TestDoReturnsTheLastRedirectWhenTheLimitIsReached(t *testing.T) {
	_, base := newRecorder(t, map[string]redirectTo{
		"/r1": {http.StatusFound, "/r2"},
		"/r2": {http.StatusMovedPermanently, "/r3"},
		"/r3": {http.StatusTemporaryRedirect, "/final"},
	})
	h := newHTTPHarness(t)
	resp := h.do(t, &pooldv1.DoRequest{Url: base + "/r1", MaxRedirects: 2})
	if resp.GetStatusCode() != http.StatusTemporaryRedirect {
		t.Fatalf("status %d, want the third 3xx as it is", resp.GetStatusCode())
	}
	if diff := cmp.Diff([]string{"/final"}, headerValues(resp.GetHeaders(), "Location")); diff != "" {
		t.Errorf("Location (-want +got):\n%s", diff)
	}
	if resp.GetUrl() != base+"/r3" || resp.GetTiming().GetRedirects() != 2 || string(resp.GetBody()) != "moved" {
		t.Errorf("url %q redirects %d body %q, want %s/r3, 2, moved", resp.GetUrl(), resp.GetTiming().GetRedirects(), resp.GetBody(), base)
	}
}

func TestDoReturnsARedirectAsItIsWhenItCannotBeFollowed(t *testing.T) {
	_, base := newRecorder(t, map[string]redirectTo{
		"/ftp":      {http.StatusFound, "ftp://127.0.0.1/file"},
		"/userinfo": {http.StatusFound, "http://user:pw@127.0.0.1/"},
		"/nowhere":  {http.StatusFound, ""},
		"/300":      {http.StatusMultipleChoices, "/final"},
		"/found":    {http.StatusFound, "/final"},
	})
	h := newHTTPHarness(t)
	for _, path := range []string{"/ftp", "/userinfo", "/nowhere", "/300"} {
		t.Run(path, func(t *testing.T) {
			resp := h.do(t, &pooldv1.DoRequest{Url: base + path, MaxRedirects: 5})
			if resp.GetStatusCode()/100 != 3 || resp.GetTiming().GetRedirects() != 0 {
				t.Errorf("got %d after %d redirects, want the 3xx itself", resp.GetStatusCode(), resp.GetTiming().GetRedirects())
			}
		})
	}
	t.Run("max_redirects 0", func(t *testing.T) {
		resp := h.do(t, &pooldv1.DoRequest{Url: base + "/found"})
		if resp.GetStatusCode() != http.StatusFound {
			t.Errorf("got %d, want 302", resp.GetStatusCode())
		}
	})
}
