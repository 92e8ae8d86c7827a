package pool

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// wireCase is a request as the engine would send it.
type wireCase struct {
	name      string
	method    string
	url       string
	host      string      // Request.Host
	header    http.Header // nil stays nil
	body      *string     // nil = no body
	length    int64       // ContentLength; -2 = len(body)
	te        []string
	trailer   http.Header
	close     bool
	proxy     bool
	proxyAuth string
}

func strp(s string) *string { return &s }

func (wc wireCase) request(t testing.TB) *http.Request {
	t.Helper()
	u, err := url.Parse(wc.url)
	if err != nil {
		t.Fatal(err)
	}
	r := &http.Request{Method: wc.method, URL: u, Host: wc.host, Header: wc.header, TransferEncoding: wc.te, Trailer: wc.trailer}
	if wc.body != nil {
		r.Body = io.NopCloser(strings.NewReader(*wc.body))
		r.ContentLength = wc.length
		if wc.length == -2 {
			r.ContentLength = int64(len(*wc.body))
		}
	}
	return r
}

// ourWire is what the engine's writer sends for r.
func ourWire(r *http.Request, o wireOpts) ([]byte, error) {
	var out bytes.Buffer
	w := bufio.NewWriter(&out)
	f, err := requestFraming(r)
	if err != nil {
		return nil, err
	}
	if err := writeRequestHead(w, r, f, o); err != nil {
		return nil, err
	}
	if f.hasBody() {
		if err := writeRequestBody(w, r.Body, f, r.Trailer); err != nil {
			return nil, err
		}
	}
	if err := w.Flush(); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

// netHTTPWire is what net/http's writer sends for r with the same
// additions, made the way net/http callers make them.
func netHTTPWire(r *http.Request, o wireOpts) ([]byte, error) {
	r2 := *r
	r2.Close = r.Close || o.close
	if o.proxyAuth != "" && r.Header.Get("Proxy-Authorization") == "" {
		r2.Header = r.Header.Clone()
		if r2.Header == nil {
			r2.Header = make(http.Header)
		}
		r2.Header.Set("Proxy-Authorization", o.proxyAuth)
	}
	var out bytes.Buffer
	var err error
	if o.absoluteForm {
		err = r2.WriteProxy(&out)
	} else {
		err = r2.Write(&out)
	}
	return out.Bytes(), err
}

// probes says whether net/http would read a byte of r's body to guess
// its length, the one case where the two writers differ on purpose.
func probes(r *http.Request) bool {
	return r.Body != nil && r.Body != http.NoBody && r.ContentLength <= 0 &&
		len(r.TransferEncoding) == 0 && usuallyNoBody(r.Method)
}

// usuallyNoBody lists the methods net/http probes for a body.
func usuallyNoBody(method string) bool {
	switch method {
	case "", "GET", "HEAD", "DELETE", "OPTIONS", "PROPFIND", "SEARCH":
		return true
	}
	return false
}

// compareWire checks that the engine's writer and net/http's agree on r:
// the same bytes, or both refuse it.
func compareWire(t *testing.T, mk func() *http.Request, o wireOpts) {
	t.Helper()
	ours, oerr := ourWire(mk(), o)
	theirs, terr := netHTTPWire(mk(), o)
	switch {
	case oerr != nil && terr != nil:
	case oerr != nil:
		t.Fatalf("ours failed (%v), net/http wrote\n%q", oerr, theirs)
	case terr != nil:
		t.Fatalf("net/http failed (%v), ours wrote\n%q", terr, ours)
	case !bytes.Equal(ours, theirs):
		t.Fatalf("wire differs\nours:     %q\nnet/http: %q", ours, theirs)
	}
}

func TestRequestWriterMatchesNetHTTP(t *testing.T) {
	cases := []wireCase{
		{name: "get", method: "GET", url: "http://example.com/a/b?x=1&y=2"},
		{name: "default method and path", url: "http://example.com"},
		{name: "force query", method: "GET", url: "http://example.com/p?"},
		{name: "escaped path", method: "GET", url: "http://example.com/a%2Fb/c%20d"},
		{name: "path needing escape", method: "GET", url: "http://example.com/a b"},
		{name: "opaque", method: "GET", url: "http:opaque/thing?q"},
		{name: "host override", method: "GET", url: "http://example.com/", host: "other.example:8080"},
		{name: "invalid host is blanked", method: "GET", url: "http://example.com/", host: "bad host"},
		{name: "ipv6 zone dropped", method: "GET", url: "http://[fe80::1%25eth0]:8080/"},
		{name: "unicode host", method: "GET", url: "http://bücher.example/"},
		{name: "headers sorted, repeats in order", method: "GET", url: "http://example.com/", header: http.Header{
			"X-B": {"2", "3"}, "Accept": {"*/*"}, "X-A": {" padded\t"}, "Empty": {""},
		}},
		{name: "non-canonical key kept", method: "GET", url: "http://example.com/", header: http.Header{"x-lower": {"v"}}},
		{name: "framing headers in map ignored", method: "POST", url: "http://example.com/", header: http.Header{
			"Content-Length": {"99"}, "Transfer-Encoding": {"gzip"}, "Host": {"evil"}, "Trailer": {"X"},
		}, body: strp("abc"), length: -2},
		{name: "user agent set", method: "GET", url: "http://example.com/", header: http.Header{"User-Agent": {"poold-test/1"}}},
		{name: "user agent blank", method: "GET", url: "http://example.com/", header: http.Header{"User-Agent": {""}}},
		{name: "post no body", method: "POST", url: "http://example.com/"},
		{name: "put no body", method: "PUT", url: "http://example.com/"},
		{name: "delete no body", method: "DELETE", url: "http://example.com/"},
		{name: "post known length", method: "POST", url: "http://example.com/", body: strp("hello"), length: -2},
		{name: "post unknown length", method: "POST", url: "http://example.com/", body: strp("hello"), length: -1},
		{name: "post zero length with body", method: "POST", url: "http://example.com/", body: strp("hello"), length: 0},
		{name: "get known length body", method: "GET", url: "http://example.com/", body: strp("q"), length: -2},
		{name: "forced chunked", method: "PUT", url: "http://example.com/", body: strp("abc"), length: 3, te: []string{"chunked"}},
		{name: "chunked with trailer", method: "POST", url: "http://example.com/", body: strp("abc"), length: -1,
			trailer: http.Header{"X-Sum": {"1"}, "a-trailer": {"2"}}},
		{name: "close", method: "GET", url: "http://example.com/", close: true},
		{name: "close already asked", method: "GET", url: "http://example.com/", close: true, header: http.Header{"Connection": {"keep-alive, Close"}}},
		{name: "proxy absolute form", method: "GET", url: "http://example.com:8080/p?q=1", proxy: true},
		{name: "proxy auth added", method: "GET", url: "http://example.com/", proxy: true, proxyAuth: "Basic dTpw"},
		{name: "proxy auth kept", method: "GET", url: "http://example.com/", proxy: true, proxyAuth: "Basic dTpw",
			header: http.Header{"Proxy-Authorization": {"Bearer mine"}}},
		{name: "proxy auth replaces empty", method: "GET", url: "http://example.com/", proxy: true, proxyAuth: "Basic dTpw",
			header: http.Header{"Proxy-Authorization": {""}, "Zed": {"z"}}},
		{name: "connect", method: "CONNECT", url: "http://example.com:443"},
		{name: "content length mismatch short", method: "POST", url: "http://example.com/", body: strp("abc"), length: 5},
		{name: "content length mismatch long", method: "POST", url: "http://example.com/", body: strp("abcdef"), length: 2},
	}
	for _, wc := range cases {
		t.Run(wc.name, func(t *testing.T) {
			compareWire(t, func() *http.Request { return wc.request(t) },
				wireOpts{absoluteForm: wc.proxy, close: wc.close, proxyAuth: wc.proxyAuth})
		})
	}
}

func TestRequestWriterRefusesWhatCannotBeFramed(t *testing.T) {
	for _, tc := range []struct {
		name string
		req  func() *http.Request
	}{
		{"control byte in query", func() *http.Request {
			return &http.Request{Method: "GET", URL: &url.URL{Scheme: "http", Host: "h", Path: "/", RawQuery: "a\r\nX: y"}}
		}},
		{"unsupported transfer encoding", func() *http.Request {
			return &http.Request{Method: "POST", URL: &url.URL{Scheme: "http", Host: "h", Path: "/"}, TransferEncoding: []string{"gzip"},
				Body: io.NopCloser(strings.NewReader("x")), ContentLength: -1}
		}},
		{"length without body", func() *http.Request {
			return &http.Request{Method: "POST", URL: &url.URL{Scheme: "http", Host: "h", Path: "/"}, ContentLength: 3}
		}},
		{"framing field as trailer", func() *http.Request {
			return &http.Request{Method: "POST", URL: &url.URL{Scheme: "http", Host: "h", Path: "/"},
				Body: io.NopCloser(strings.NewReader("x")), ContentLength: -1, Trailer: http.Header{"Content-Length": nil}}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := ourWire(tc.req(), wireOpts{})
			if err == nil {
				t.Fatalf("wrote %q", out)
			}
		})
	}
}

// A body of unknown length on a GET goes chunked; net/http would first
// read a byte to guess whether it is empty.
func TestUnknownLengthBodyIsChunkedForAnyMethod(t *testing.T) {
	r := &http.Request{Method: "GET", URL: &url.URL{Scheme: "http", Host: "h", Path: "/"},
		Body: io.NopCloser(strings.NewReader("abc"))}
	out, err := ourWire(r, wireOpts{})
	if err != nil {
		t.Fatal(err)
	}
	want := "GET / HTTP/1.1\r\nHost: h\r\nUser-Agent: Go-http-client/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
	if string(out) != want {
		t.Errorf("wire %q, want %q", out, want)
	}
}

func TestRequestBodyFailureIsTheBodys(t *testing.T) {
	boom := errors.New("boom")
	for _, length := range []int64{10, -1} {
		r := &http.Request{Method: "POST", URL: &url.URL{Scheme: "http", Host: "h", Path: "/"},
			Body: io.NopCloser(io.MultiReader(strings.NewReader("ab"), errReader{boom})), ContentLength: length}
		_, err := ourWire(r, wireOpts{})
		var be *bodyReadError
		if !errors.As(err, &be) || !errors.Is(err, boom) {
			t.Errorf("length %d: error %v, want a bodyReadError wrapping boom", length, err)
		}
	}
}

func TestRequestHeadWritesWithoutAllocating(t *testing.T) {
	r, _ := http.NewRequest("GET", "http://127.0.0.1:8080/100?x=1", nil)
	r.Header.Set("Accept", "*/*")
	r.Header.Set("X-Request-Id", "abc")
	w := bufio.NewWriter(io.Discard)
	allocs := testing.AllocsPerRun(100, func() {
		f, err := requestFraming(r)
		if err != nil {
			t.Fatal(err)
		}
		if err := writeRequestHead(w, r, f, wireOpts{close: true}); err != nil {
			t.Fatal(err)
		}
		w.Flush()
	})
	if allocs != 0 {
		t.Errorf("%v allocs per request head, want 0", allocs)
	}
}

func FuzzRequestWriter(f *testing.F) {
	f.Add("GET", "/a?b=c", "Accept: */*\nX-A: 1\nX-A: 2", []byte(nil), int8(0), uint8(0))
	f.Add("POST", "/upload", "Content-Type: text/plain", []byte("hello"), int8(1), uint8(1))
	f.Add("PUT", "/x", "Connection: close", []byte("abc"), int8(2), uint8(2))
	f.Add("PATCH", "/%zz", "User-Agent: \t", []byte(""), int8(3), uint8(4))
	f.Add("OPTIONS", "*", "Proxy-Authorization: x", []byte("body"), int8(1), uint8(7))
	f.Fuzz(func(t *testing.T, method, target, headers string, body []byte, lengthMode int8, flags uint8) {
		if len(body) > 4096 || len(headers) > 4096 || len(target) > 1024 {
			t.Skip()
		}
		u, err := url.Parse("http://example.com" + target)
		if err != nil || u.Host != "example.com" {
			t.Skip()
		}
		h := http.Header{}
		for _, line := range strings.Split(headers, "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok {
				h[k] = append(h[k], strings.TrimLeft(v, " "))
			}
		}
		mk := func() *http.Request {
			r := &http.Request{Method: method, URL: u, Header: h}
			if body != nil {
				r.Body = io.NopCloser(bytes.NewReader(body))
				switch lengthMode % 4 {
				case 0:
					r.ContentLength = int64(len(body))
				case 1:
					r.ContentLength = -1
				case 2:
					r.ContentLength = 0
				default:
					r.ContentLength = int64(len(body)) + int64(lengthMode)
				}
			}
			return r
		}
		if r := mk(); probes(r) {
			t.Skip()
		}
		if _, err := checkRequest(mk()); err != nil {
			t.Skip()
		}
		o := wireOpts{close: flags&1 != 0, absoluteForm: flags&2 != 0}
		if flags&4 != 0 {
			o.proxyAuth = "Basic dTpw"
		}
		compareWire(t, mk, o)
	})
}

// BenchmarkWire compares the wire code alone, with no sockets: writing a
// GET, parsing cannedResponse's head and reading its 100-byte body, by
// poold's code and by net/http's.
func BenchmarkWire(b *testing.B) {
	req, _ := http.NewRequest("GET", "http://127.0.0.1:8080/100", nil)
	src := strings.NewReader(cannedResponse)
	br := bufio.NewReader(src)
	bw := bufio.NewWriter(io.Discard)
	b.Run("codec=poold", func(b *testing.B) {
		var resp http.Response
		var fr framedReader
		buf := make([]byte, 512)
		b.ReportAllocs()
		for b.Loop() {
			f, err := requestFraming(req)
			if err == nil {
				err = writeRequestHead(bw, req, f, wireOpts{})
			}
			if err == nil {
				err = bw.Flush()
			}
			if err == nil {
				err = readCanned(src, br, &resp, &fr, buf)
			}
			if err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("codec=net-http", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := req.Write(bw); err != nil {
				b.Fatal(err)
			}
			bw.Flush()
			src.Reset(cannedResponse)
			br.Reset(src)
			resp, err := http.ReadResponse(br, req)
			if err != nil {
				b.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	})
}
