package pool

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"net/textproto"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/net/http/httpguts"
)

// The request writer puts the same bytes on the wire as net/http's
// (*http.Request).Write and WriteProxy, header order included, without
// their allocations: it formats into the conn's bufio.Writer directly and
// sorts header names on the stack. The one difference: a body of unknown
// length is sent chunked whatever the method, where net/http first reads a
// byte, with a timer, to guess whether a GET's body is really empty.

// defaultUserAgent is what net/http sends when the request sets none.
const defaultUserAgent = "Go-http-client/1.1"

// reqFraming is how a request body goes on the wire.
type reqFraming struct {
	length  int64 // body bytes when !chunked
	chunked bool
	// zeroLength sends "Content-Length: 0" for a bodiless request whose
	// method servers expect to carry one (POST, PUT, PATCH).
	zeroLength bool
}

// hasBody reports whether anything follows the head.
func (f reqFraming) hasBody() bool { return f.chunked || f.length > 0 }

// wireOpts is what the engine adds to the caller's request on the wire,
// so that the request itself is never copied or changed.
type wireOpts struct {
	absoluteForm bool   // through an HTTP proxy: the target is the absolute URL
	close        bool   // ask the server to close the conn after the response
	proxyAuth    string // Proxy-Authorization to send unless the request sets one
}

// bodyReadError is a failure of the caller's request body, as opposed to
// the conn: the request is at fault, not the server.
type bodyReadError struct{ err error }

func (e *bodyReadError) Error() string { return "reading the request body: " + e.err.Error() }
func (e *bodyReadError) Unwrap() error { return e.err }

// requestFraming frames r's body as net/http would. A retry sends a body
// from r.GetBody, which is nil or NoBody exactly when r.Body is, so the
// framing holds for every attempt.
func requestFraming(r *http.Request) (reqFraming, error) {
	body := r.Body
	if len(r.TransferEncoding) > 0 && (len(r.TransferEncoding) > 1 || r.TransferEncoding[0] != "chunked") {
		return reqFraming{}, fmt.Errorf("%w: unsupported TransferEncoding %q", ErrInvalidRequest, r.TransferEncoding)
	}
	forceChunked := len(r.TransferEncoding) == 1 && body != nil
	if body == nil || body == http.NoBody {
		if body == nil && r.ContentLength != 0 {
			return reqFraming{}, fmt.Errorf("%w: ContentLength=%d with a nil Body", ErrInvalidRequest, r.ContentLength)
		}
		if forceChunked {
			return reqFraming{chunked: true}, nil
		}
		switch r.Method {
		case "POST", "PUT", "PATCH":
			return reqFraming{zeroLength: true}, nil
		}
		return reqFraming{}, nil
	}
	if forceChunked || r.ContentLength <= 0 {
		return reqFraming{chunked: true}, nil
	}
	return reqFraming{length: r.ContentLength}, nil
}

// writeRequestHead writes the request line and header section of r.
func writeRequestHead(w *bufio.Writer, r *http.Request, f reqFraming, o wireOpts) error {
	host := r.Host
	if host == "" {
		host = r.URL.Host
	}
	host, err := httpguts.PunycodeHostPort(host)
	if err != nil {
		return fmt.Errorf("%w: Host: %w", ErrInvalidRequest, err)
	}
	if !httpguts.ValidHostHeader(host) {
		// As net/http: an invalid Host is sent empty (valid per RFC 9112
		// section 3.2) rather than altered, but a proxy needs one.
		if o.absoluteForm {
			return fmt.Errorf("%w: invalid Host header %q", ErrInvalidRequest, host)
		}
		host = ""
	}
	host = removeZone(host)

	method := r.Method
	if method == "" {
		method = "GET"
	}
	w.WriteString(method)
	w.WriteByte(' ')
	if err := writeRequestTarget(w, r.URL, method, host, o.absoluteForm); err != nil {
		return err
	}
	w.WriteString(" HTTP/1.1\r\nHost: ")
	w.WriteString(host)
	w.WriteString("\r\n")

	userAgent := defaultUserAgent
	if _, ok := r.Header["User-Agent"]; ok {
		userAgent = r.Header.Get("User-Agent")
	}
	if userAgent != "" {
		writeField(w, "User-Agent", userAgent)
	}

	if o.close && !hasToken(firstValue(r.Header, "Connection"), "close") {
		w.WriteString("Connection: close\r\n")
	}
	switch {
	case f.chunked:
		w.WriteString("Transfer-Encoding: chunked\r\n")
	case f.length > 0 || f.zeroLength:
		w.WriteString("Content-Length: ")
		w.Write(strconv.AppendInt(w.AvailableBuffer(), f.length, 10))
		w.WriteString("\r\n")
	}
	if f.chunked && r.Trailer != nil {
		if err := writeTrailerNames(w, r.Trailer); err != nil {
			return err
		}
	}
	writeHeaderFields(w, r.Header, o.proxyAuth)
	_, err = w.WriteString("\r\n")
	return err
}

// writeRequestTarget writes the request target: origin form, absolute
// form through a proxy, authority form for CONNECT. URL.RequestURI would
// allocate for a query; the pieces go out one by one instead.
func writeRequestTarget(w *bufio.Writer, u *url.URL, method, host string, absolute bool) error {
	if u.Opaque != "" || (method == "CONNECT" && u.Path == "") {
		ruri := u.RequestURI()
		if absolute && u.Scheme != "" && u.Opaque == "" {
			ruri = u.Scheme + "://" + host + ruri
		} else if method == "CONNECT" && u.Path == "" {
			ruri = host
			if u.Opaque != "" {
				ruri = u.Opaque
			}
		}
		return writeTargetPart(w, ruri)
	}
	if absolute && u.Scheme != "" {
		w.WriteString(u.Scheme)
		w.WriteString("://")
		if err := writeTargetPart(w, host); err != nil {
			return err
		}
	}
	path := u.EscapedPath()
	if path == "" {
		path = "/"
	}
	if err := writeTargetPart(w, path); err != nil {
		return err
	}
	if u.ForceQuery || u.RawQuery != "" {
		w.WriteByte('?')
		return writeTargetPart(w, u.RawQuery)
	}
	return nil
}

// writeTargetPart writes part of the request target, refusing control
// bytes that would split the request line. checkRequest refuses them
// before a conn is taken; this is the last line, for the writer's own
// sake.
func writeTargetPart(w *bufio.Writer, s string) error {
	if hasCTL(s) {
		return fmt.Errorf("%w: control character in the request target", ErrInvalidRequest)
	}
	w.WriteString(s)
	return nil
}

// skipOnWire lists the fields the writer sends itself, from the request's
// own fields, whatever the Header map says.
func skipOnWire(key string) bool {
	switch key {
	case "Host", "User-Agent", "Content-Length", "Transfer-Encoding", "Trailer":
		return true
	}
	return false
}

// writeHeaderFields writes h sorted by name, as net/http does, with
// Proxy-Authorization set to proxyAuth when h has none.
func writeHeaderFields(w *bufio.Writer, h http.Header, proxyAuth string) {
	if proxyAuth != "" && h.Get("Proxy-Authorization") != "" {
		proxyAuth = ""
	}
	var stack [32]string
	keys := stack[:0]
	for k := range h {
		if skipOnWire(k) || (proxyAuth != "" && k == "Proxy-Authorization") {
			continue
		}
		keys = append(keys, k)
	}
	if proxyAuth != "" {
		keys = append(keys, "Proxy-Authorization")
	}
	slices.Sort(keys)
	for _, k := range keys {
		if !httpguts.ValidHeaderFieldName(k) {
			continue // net/http drops these; checkRequest has refused them already
		}
		if proxyAuth != "" && k == "Proxy-Authorization" {
			writeField(w, k, proxyAuth)
			continue
		}
		for _, v := range h[k] {
			writeField(w, k, v)
		}
	}
}

// writeField writes one header field line, with net/http's value
// cleaning: newlines become spaces, surrounding space is trimmed.
func writeField(w *bufio.Writer, k, v string) {
	if strings.ContainsAny(v, "\r\n") {
		v = headerNewlineToSpace.Replace(v)
	}
	w.WriteString(k)
	w.WriteString(": ")
	w.WriteString(textproto.TrimString(v))
	w.WriteString("\r\n")
}

var headerNewlineToSpace = strings.NewReplacer("\n", " ", "\r", " ")

// writeTrailerNames announces the trailer fields of a chunked body.
func writeTrailerNames(w *bufio.Writer, trailer http.Header) error {
	keys := make([]string, 0, len(trailer))
	for k := range trailer {
		k = http.CanonicalHeaderKey(k)
		switch k {
		case "Transfer-Encoding", "Trailer", "Content-Length":
			return fmt.Errorf("%w: %s cannot be a trailer", ErrInvalidRequest, k)
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil
	}
	slices.Sort(keys)
	w.WriteString("Trailer: ")
	w.WriteString(strings.Join(keys, ","))
	w.WriteString("\r\n")
	return nil
}

// copyBufPool holds the buffers request bodies are copied through.
var copyBufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// writeRequestBody sends body as f frames it, then the trailer for a
// chunked body. Failures of body itself come back as *bodyReadError.
// A chunked body is flushed chunk by chunk, so a streamed body reaches the
// server as it is produced.
func writeRequestBody(w *bufio.Writer, body io.Reader, f reqFraming, trailer http.Header) error {
	bufp := copyBufPool.Get().(*[]byte)
	defer copyBufPool.Put(bufp)
	buf := *bufp
	if f.chunked {
		return writeChunked(w, body, buf, trailer)
	}
	var sent int64
	for sent < f.length {
		p := buf
		if rest := f.length - sent; rest < int64(len(p)) {
			p = p[:rest]
		}
		n, err := body.Read(p)
		if n > 0 {
			if _, werr := w.Write(p[:n]); werr != nil {
				return werr
			}
			sent += int64(n)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return &bodyReadError{err}
		}
	}
	if sent < f.length {
		return fmt.Errorf("http: ContentLength=%d with Body length %d", f.length, sent)
	}
	// A body longer than declared would be read by the server as the
	// start of the next request; one byte tells.
	var one [1]byte
	for {
		n, err := body.Read(one[:])
		if n > 0 {
			return fmt.Errorf("http: ContentLength=%d with a longer Body", f.length)
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return &bodyReadError{err}
		}
	}
}

func writeChunked(w *bufio.Writer, body io.Reader, buf []byte, trailer http.Header) error {
	for {
		n, err := body.Read(buf)
		if n > 0 {
			w.Write(strconv.AppendInt(w.AvailableBuffer(), int64(n), 16))
			w.WriteString("\r\n")
			w.Write(buf[:n])
			w.WriteString("\r\n")
			if ferr := w.Flush(); ferr != nil {
				return ferr
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return &bodyReadError{err}
		}
	}
	w.WriteString("0\r\n")
	if trailer != nil {
		if err := trailer.Write(w); err != nil {
			return err
		}
	}
	_, err := w.WriteString("\r\n")
	return err
}

// removeZone strips an IPv6 zone from a host: RFC 6874 says it must not
// leave the machine.
func removeZone(host string) string {
	if !strings.HasPrefix(host, "[") {
		return host
	}
	i := strings.LastIndex(host, "]")
	if i < 0 {
		return host
	}
	j := strings.LastIndex(host[:i], "%")
	if j < 0 {
		return host
	}
	return host[:j] + host[i:]
}

// firstValue is h[key][0] without canonicalising key, as net/http's
// writer reads Connection.
func firstValue(h http.Header, key string) string {
	if v := h[key]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// hasToken reports whether token appears in v, ASCII case-insensitive,
// between spaces, commas or tabs: net/http's test for "Connection: close".
func hasToken(v, token string) bool {
	if len(token) > len(v) || token == "" {
		return false
	}
	if v == token {
		return true
	}
	for sp := 0; sp <= len(v)-len(token); sp++ {
		if sp > 0 && !isTokenBoundary(v[sp-1]) {
			continue
		}
		if end := sp + len(token); end != len(v) && !isTokenBoundary(v[end]) {
			continue
		}
		if asciiEqualFold(v[sp:sp+len(token)], token) {
			return true
		}
	}
	return false
}

func isTokenBoundary(b byte) bool { return b == ' ' || b == ',' || b == '\t' }

// asciiEqualFold is strings.EqualFold for ASCII only: Unicode folding
// would let "\u017f" (long s) stand for "s" in a protocol token.
func asciiEqualFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		if lower(a[i]) != lower(b[i]) {
			return false
		}
	}
	return true
}

func lower(b byte) byte {
	if 'A' <= b && b <= 'Z' {
		return b + ('a' - 'A')
	}
	return b
}
