package pool

import (
	"encoding/base64"
	"net"
	"net/http"
	"net/url"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// proxyFor picks the proxy for an origin from the effective ProxyURL:
// "direct" means none, "" defers to Options.Proxy (the environment by
// default), anything else names the proxy.
func (e *Engine) proxyFor(setting, scheme, hostport string) (*url.URL, error) {
	switch setting {
	case "direct":
		return nil, nil
	case "":
		return e.proxyEnv(&url.URL{Scheme: scheme, Host: hostport})
	}
	// Validate has already vetted the URL, so a parse error here means the
	// snapshot holds something Validate let through.
	u, err := url.Parse(setting)
	if err != nil {
		panic("pool: internal error: validated proxy_url does not parse: " + err.Error())
	}
	return u, nil
}

// poolKey names the pool for an origin and proxy. A password in the proxy
// URL is redacted: the key is shown to operators.
func poolKey(scheme, hostport string, proxy *url.URL) string {
	k := scheme + "://" + hostport
	if proxy != nil {
		k += " via " + proxyLabel(proxy)
	}
	return k
}

func proxyLabel(u *url.URL) string {
	if u == nil {
		return ""
	}
	return (&url.URL{Scheme: u.Scheme, User: u.User, Host: u.Host}).Redacted()
}

// proxyAuth is the Proxy-Authorization value for a proxy URL with user info.
func proxyAuth(u *url.URL) string {
	if u == nil || u.User == nil {
		return ""
	}
	pw, _ := u.User.Password()
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(u.User.Username()+":"+pw))
}

// originOf splits a request URL into scheme, host (lowercase, no
// brackets) and port (the scheme's default when absent).
func originOf(u *url.URL) (scheme, host, port string, ok bool) {
	scheme = strings.ToLower(u.Scheme)
	host = strings.ToLower(u.Hostname())
	port = u.Port()
	if host == "" {
		return "", "", "", false
	}
	switch scheme {
	case "http":
		if port == "" {
			port = "80"
		}
	case "https":
		if port == "" {
			port = "443"
		}
	default:
		return "", "", "", false
	}
	return scheme, host, port, true
}

// hostPort joins host and port, bracketing IPv6 literals.
func hostPort(host, port string) string { return net.JoinHostPort(host, port) }

// headerHasToken reports whether a comma-separated header (such as
// Connection) lists token, ignoring case.
func headerHasToken(h http.Header, name, token string) bool {
	return httpguts.HeaderValuesContainsToken(h[name], token)
}
