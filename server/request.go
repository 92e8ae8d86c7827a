package server

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/http/httpguts"

	pooldv1 "github.com/poold/poold/gen/poold/v1"
)

// maxRedirectsLimit bounds DoRequest.max_redirects. A chain longer than this
// is a loop or a misconfigured upstream; net/http's client gives up at 10.
const maxRedirectsLimit = 20

// hopByHop lists the request fields that describe one connection rather
// than the request. poold owns its upstream connections, so a caller may not
// set them (RFC 9110 section 7.6.1).
var hopByHop = map[string]bool{
	"Connection":        true,
	"Keep-Alive":        true,
	"Proxy-Connection":  true,
	"Te":                true,
	"Transfer-Encoding": true,
	"Upgrade":           true,
}

// notUTF8 is the reason given for a string field that is not UTF-8, as
// protobuf requires. The server's codec reads requests without checking
// it (codec.go), so the fields that become the upstream request are
// checked here; method and header names are tokens, ASCII by definition.
const notUTF8 = "must be valid UTF-8, as every protobuf string field"

// newUpstreamRequest turns a DoRequest into the request the engine sends,
// checking everything that can be checked before a connection is made.
// Every problem found is reported at once as INVALID_ARGUMENT, each against
// the DoRequest field at fault. It only reads its input, so the fuzz target
// can drive it directly.
func newUpstreamRequest(ctx context.Context, in *pooldv1.DoRequest) (*http.Request, error) {
	c := requestConverter{}
	req, _ := c.convert(ctx, in, false)
	if len(c.violations) > 0 {
		return nil, invalidArgument(c.violations...)
	}
	return req, nil
}

// requestConverter collects the violations of one DoRequest. prefix names
// where the DoRequest sits in the RPC's request ("head." in Stream).
type requestConverter struct {
	prefix     string
	violations []fieldViolation
}

func (c *requestConverter) violate(field, format string, args ...any) {
	c.violations = append(c.violations, fieldViolation{
		Field:  c.prefix + field,
		Reason: fmt.Sprintf(format, args...),
	})
}

// convert builds the request. With streamed set the body arrives later, so
// the request gets none here, and the Content-Length the caller declared
// (-1 when none) is returned for the body to be checked against; otherwise
// DoRequest.body is the body and a declared Content-Length must match it.
// The result is meaningful only when no violation was recorded.
func (c *requestConverter) convert(ctx context.Context, in *pooldv1.DoRequest, streamed bool) (*http.Request, int64) {
	method := c.method(in.GetMethod())
	u := c.url(in.GetUrl())
	header, host, declared := c.headers(in.GetHeaders())
	c.timeout(in)
	if n := in.GetMaxRedirects(); n > maxRedirectsLimit {
		c.violate("max_redirects", "must be at most %d, got %d", maxRedirectsLimit, n)
	}
	body := in.GetBody()
	if streamed && len(body) > 0 {
		c.violate("body", "must be empty in Stream: send the body as StreamRequest.body chunks")
	}
	if !streamed && declared.set && declared.n != int64(len(body)) {
		c.violate(declared.field, "Content-Length %d does not match the body length %d", declared.n, len(body))
	}
	if len(c.violations) > 0 {
		return nil, -1
	}

	// Built as http.NewRequestWithContext would build it, without printing
	// the URL only to parse it again.
	base := http.Request{
		Method:     method,
		URL:        u,
		Proto:      "HTTP/1.1",
		ProtoMajor: 1,
		ProtoMinor: 1,
		Header:     header,
		Host:       strings.TrimSuffix(u.Host, ":"),
	}
	if host != "" {
		base.Host = host
	}
	if !streamed && len(body) > 0 {
		// GetBody replays the body, which retries and 307/308 redirects
		// need.
		base.ContentLength = int64(len(body))
		base.Body = io.NopCloser(bytes.NewReader(body))
		base.GetBody = func() (io.ReadCloser, error) {
			return io.NopCloser(bytes.NewReader(body)), nil
		}
	}
	req := base.WithContext(ctx)
	if !declared.set {
		return req, -1
	}
	return req, declared.n
}

// method checks the request method; empty means GET.
func (c *requestConverter) method(m string) string {
	switch {
	case m == "":
		return http.MethodGet
	case !httpguts.ValidHeaderFieldName(m):
		c.violate("method", "must be an RFC 9110 token, for example GET or POST")
	case m == http.MethodConnect:
		// A CONNECT turns the pooled connection into a tunnel that the
		// pool could never reuse.
		c.violate("method", "CONNECT is not supported: poold manages connections")
	}
	return m
}

// url parses and checks the target. The fragment is dropped: it never goes
// on the wire.
func (c *requestConverter) url(raw string) *url.URL {
	if raw == "" {
		c.violate("url", "is required: an absolute http or https URL")
		return nil
	}
	if !utf8.ValidString(raw) {
		c.violate("url", "%s", notUTF8)
		return nil
	}
	u, err := url.Parse(raw)
	if err != nil {
		// url.Error repeats the URL, whose query may hold a secret; the
		// inner error says what is wrong without it.
		if ue, ok := err.(*url.Error); ok {
			err = ue.Err
		}
		c.violate("url", "not a valid URL: %v", err)
		return nil
	}
	if reason := targetURLProblem(u); reason != "" {
		c.violate("url", "%s", reason)
		return nil
	}
	u.Fragment, u.RawFragment = "", ""
	return u
}

// targetURLProblem says why u cannot be a request target, or "" when it
// can. It converts an internationalized host name to its ASCII form in
// place, as it goes on the wire. Redirect targets are held to the same
// rules.
func targetURLProblem(u *url.URL) string {
	switch {
	case !u.IsAbs() || u.Opaque != "":
		return "must be an absolute URL with scheme http or https, for example https://api.example.com/path"
	case u.Scheme != "http" && u.Scheme != "https":
		return fmt.Sprintf("scheme %q is not supported: must be http or https", u.Scheme)
	case u.User != nil:
		return "must not carry user info: credentials belong in headers (Authorization)"
	case u.Hostname() == "":
		return "must have a host"
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.ParseUint(p, 10, 16); err != nil || n == 0 {
			return fmt.Sprintf("port %q is not in 1-65535", p)
		}
	}
	if !hostIsASCII(u.Host) {
		ascii, err := httpguts.PunycodeHostPort(u.Host)
		if err != nil {
			return "host is not a valid internationalized domain name"
		}
		u.Host = ascii
	}
	if !httpguts.ValidHostHeader(u.Host) {
		return "host contains characters not allowed in a host name"
	}
	return ""
}

// declaredLength is a Content-Length the caller sent, and the field it came
// in.
type declaredLength struct {
	set   bool
	n     int64
	field string
}

// headers builds the request header fields. Values of one name keep the
// caller's order. The order between different names does not survive:
// net/http keeps fields in a map and writes them sorted by name. Host and
// Content-Length are taken out: the first overrides the Host sent upstream,
// the second is checked against the body and written by the engine.
func (c *requestConverter) headers(in []*pooldv1.Header) (http.Header, string, declaredLength) {
	if len(in) == 0 {
		return http.Header{}, "", declaredLength{}
	}
	h := make(http.Header, len(in))
	// One array backs every name's values; each name's slice is capped so
	// that appending to one never writes into another's.
	values := make([]string, 0, len(in))
	var host string
	hostSeen := false
	var declared declaredLength
	for i, f := range in {
		name, value := f.GetName(), f.GetValue()
		if !httpguts.ValidHeaderFieldName(name) {
			c.violate(headerField(i, "name"), "must be an RFC 9110 token (letters, digits and !#$%%&'*+-.^_`|~)")
			continue
		}
		if !utf8.ValidString(value) {
			c.violate(headerField(i, "value"), "%s", notUTF8)
			continue
		}
		if !httpguts.ValidHeaderFieldValue(value) {
			c.violate(headerField(i, "value"), "must not contain CR, LF, NUL or other control characters")
			continue
		}
		key := textproto.CanonicalMIMEHeaderKey(name)
		switch {
		case hopByHop[key]:
			c.violate(headerField(i, "name"), "%q is a hop-by-hop header; poold manages connections", name)
		case key == "Host":
			if hostSeen {
				c.violate(headerField(i, "name"), "Host given more than once")
				continue
			}
			hostSeen = true
			if reason := hostPortProblem(value); reason != "" {
				c.violate(headerField(i, "value"), "Host %s", reason)
				continue
			}
			host = value
		case key == "Content-Length":
			// ParseUint takes no sign or space, so only digits pass.
			n, err := strconv.ParseUint(value, 10, 63)
			if err != nil {
				c.violate(headerField(i, "value"), "Content-Length must be a non-negative decimal integer")
				continue
			}
			if declared.set && declared.n != int64(n) {
				c.violate(headerField(i, "name"), "Content-Length given twice with different values")
				continue
			}
			declared = declaredLength{set: true, n: int64(n), field: headerField(i, "value")}
		default:
			if vs, ok := h[key]; ok {
				// A repeated name: rare enough to cost an allocation.
				h[key] = append(vs[:len(vs):len(vs)], value)
				continue
			}
			values = append(values, value)
			h[key] = values[len(values)-1 : len(values) : len(values)]
		}
	}
	return h, host, declared
}

// headerField names DoRequest.headers[i].part. It is built only for a
// violation: on the path of a valid request it would cost two allocations
// a header.
func headerField(i int, part string) string {
	return "headers[" + strconv.Itoa(i) + "]." + part
}

// hostPortProblem says why v cannot be a Host field value (host[:port]),
// or "" when it can.
func hostPortProblem(v string) string {
	if v == "" {
		return "must not be empty"
	}
	if !httpguts.ValidHostHeader(v) || strings.HasSuffix(v, ":") {
		return "must be host[:port]"
	}
	u, err := url.Parse("http://" + v)
	if err != nil || u.Host != v || u.Hostname() == "" || u.User != nil {
		return "must be host[:port]"
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.ParseUint(p, 10, 16); err != nil || n == 0 {
			return "port must be in 1-65535"
		}
	}
	return ""
}

// timeout checks DoRequest.timeout. Zero, like an unset timeout, means no
// bound of the request's own, as 0 does in a policy.
func (c *requestConverter) timeout(in *pooldv1.DoRequest) {
	d := in.GetTimeout()
	if d == nil {
		return
	}
	if err := d.CheckValid(); err != nil {
		c.violate("timeout", "invalid duration: seconds and nanos must have the same sign, nanos within ±999999999, and at most 10000 years")
		return
	}
	if d.AsDuration() < 0 {
		c.violate("timeout", "must not be negative")
	}
}

func hostIsASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}
