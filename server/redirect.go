package server

import (
	"io"
	"net/http"
	"net/url"
	"strings"
)

// redirectDrainLimit bounds how much of an intermediate 3xx body is read
// so that its connection can go back to the pool. A longer body is not
// worth reading: the engine closes the connection instead.
const redirectDrainLimit = 64 << 10

// sendFollowingRedirects sends req through rt, following up to
// maxRedirects redirects, and returns the final response with the number of
// redirects followed. Every hop goes through rt, so each one gets its own
// checkout, policy and egress check.
//
// A redirect is followed for 301, 302, 303, 307 and 308 with a Location.
// The response is returned as it is, without following, when the limit is
// reached, when Location is missing or is not an http or https URL poold
// would accept as a request URL, or when the next hop must resend a body
// that cannot be replayed (a Stream body already sent upstream).
func sendFollowingRedirects(rt http.RoundTripper, req *http.Request, maxRedirects int) (*http.Response, int, error) {
	for hops := 0; ; hops++ {
		resp, err := rt.RoundTrip(req)
		if err != nil {
			return nil, hops, err
		}
		if resp.Request == nil {
			// The final URL and error reports read it.
			resp.Request = req
		}
		if hops >= maxRedirects {
			return resp, hops, nil
		}
		next := redirectRequest(req, resp)
		if next == nil {
			return resp, hops, nil
		}
		// Drain before the next hop, so that a next hop to the same host
		// can take this connection.
		_, _ = io.CopyN(io.Discard, resp.Body, redirectDrainLimit)
		_ = resp.Body.Close()
		req = next
	}
}

// redirectRequest builds the request that follows resp, or returns nil when
// resp is not a redirect poold follows.
//
// The method rules are those of RFC 9110 section 15.4 as browsers and
// net/http apply them: 303 turns anything but HEAD into a GET without a
// body, 301 and 302 do that to POST only, and 307 and 308 resend the same
// method and body. Credentials (Authorization, Cookie,
// Proxy-Authorization) and a Host override are dropped once the host name
// or port changes, so that a redirect cannot carry them to another server.
func redirectRequest(req *http.Request, resp *http.Response) *http.Request {
	switch resp.StatusCode {
	case http.StatusMovedPermanently, http.StatusFound, http.StatusSeeOther,
		http.StatusTemporaryRedirect, http.StatusPermanentRedirect:
	default:
		return nil
	}
	loc := resp.Header.Get("Location")
	if loc == "" {
		return nil
	}
	u, err := req.URL.Parse(loc)
	if err != nil || targetURLProblem(u) != "" {
		return nil
	}
	u.Fragment, u.RawFragment = "", ""

	method := req.Method
	keepBody := true
	switch resp.StatusCode {
	case http.StatusSeeOther:
		if method != http.MethodHead {
			method, keepBody = http.MethodGet, false
		}
	case http.StatusMovedPermanently, http.StatusFound:
		if method == http.MethodPost {
			method, keepBody = http.MethodGet, false
		}
	}

	next := req.Clone(req.Context())
	next.URL = u
	next.Method = method
	next.Body, next.GetBody, next.ContentLength = nil, nil, 0
	if keepBody && hasBody(req) {
		if req.GetBody == nil {
			return nil
		}
		body, err := req.GetBody()
		if err != nil {
			return nil
		}
		next.Body, next.GetBody, next.ContentLength = body, req.GetBody, req.ContentLength
		if body == http.NoBody {
			next.ContentLength = 0
		}
	}
	if !keepBody {
		next.Header.Del("Content-Type")
		next.Header.Del("Content-Length")
	}
	if sameHost(req.URL, u) {
		next.Host = req.Host
	} else {
		next.Host = ""
		for _, k := range []string{"Authorization", "Cookie", "Proxy-Authorization"} {
			next.Header.Del(k)
		}
	}
	return next
}

// hasBody reports whether req carries a body that a 307 or 308 would have
// to resend.
func hasBody(req *http.Request) bool {
	return req.Body != nil && req.Body != http.NoBody
}

// sameHost reports whether a and b name the same host and port, counting a
// missing port as the scheme's default.
func sameHost(a, b *url.URL) bool {
	return strings.EqualFold(a.Hostname(), b.Hostname()) && effectivePort(a) == effectivePort(b)
}

func effectivePort(u *url.URL) string {
	if p := u.Port(); p != "" {
		return p
	}
	if u.Scheme == "https" {
		return "443"
	}
	return "80"
}
