package pool

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/textproto"
	"reflect"
	"strings"
	"testing"
)

// wireBufSize is the read buffer the differential checks use, the engine's
// size, so that net/http's and the fast path's buffer-bound rules (a head or
// trailer that must fit) meet the same limit.
const wireBufSize = 4096

// smallBufSize is a read buffer small enough that fuzz inputs overflow it:
// heads and trailers that do not fit, chunk lines too long.
const smallBufSize = 64

// wireResult is everything a caller can observe from reading one response
// off the wire: the head, the body, the trailer and where the stream was
// left. Two readers agree when their wireResults are deeply equal.
type wireResult struct {
	HeadErr          string
	Status           string
	StatusCode       int
	Proto            string
	ProtoMajor       int
	ProtoMinor       int
	Header           http.Header
	ContentLength    int64
	TransferEncoding []string
	Close            bool
	TrailerBefore    http.Header // Trailer before the body is read
	Body             []byte
	BodyErr          string
	BodyUnexpected   bool // errors.Is(BodyErr, io.ErrUnexpectedEOF)
	Trailer          http.Header
	Rest             []byte // what is left unread in the stream afterwards
}

// netHTTPRead reads one response from br with http.ReadResponse, its body
// to the first error, and the rest of the stream.
func netHTTPRead(br *bufio.Reader, method string) wireResult {
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		rest, _ := io.ReadAll(br)
		return wireResult{HeadErr: err.Error(), Rest: rest}
	}
	w := headResult(resp)
	body, err := io.ReadAll(resp.Body)
	w.finish(body, err, resp.Trailer, br)
	if err := resp.Body.Close(); err != nil && w.BodyErr == "" {
		// Close after EOF must be silent; after an error it may repeat it.
		w.BodyErr = "close: " + err.Error()
	}
	return w
}

// fastRead reads one response from br with parseResponseHead and
// framedReader. ok is false, with only Rest and HeadErr set, when the fast
// path declined or failed.
func fastRead(br *bufio.Reader, method string) (w wireResult, ok bool) {
	var resp http.Response
	f, ok, err := parseResponseHead(br, method, &resp)
	if err != nil || !ok {
		if err != nil {
			w.HeadErr = err.Error()
		}
		return w, false
	}
	w = headResult(&resp)
	var fr framedReader
	fr.reset(br, f, &resp)
	body, err := io.ReadAll(&fr)
	w.finish(body, err, resp.Trailer, br)
	return w, true
}

// headResult records the head fields of resp.
func headResult(resp *http.Response) wireResult {
	return wireResult{
		Status:           resp.Status,
		StatusCode:       resp.StatusCode,
		Proto:            resp.Proto,
		ProtoMajor:       resp.ProtoMajor,
		ProtoMinor:       resp.ProtoMinor,
		Header:           resp.Header,
		ContentLength:    resp.ContentLength,
		TransferEncoding: resp.TransferEncoding,
		Close:            resp.Close,
		TrailerBefore:    cloneHeader(resp.Trailer),
	}
}

// finish records the body, its error, the trailer and the rest of br.
func (w *wireResult) finish(body []byte, err error, trailer http.Header, br *bufio.Reader) {
	w.Body = body
	if err != nil {
		w.BodyErr = err.Error()
		w.BodyUnexpected = errors.Is(err, io.ErrUnexpectedEOF)
	}
	w.Trailer = trailer
	w.Rest, _ = io.ReadAll(br)
}

// cloneHeader copies h keeping nil and empty apart, since net/http sets
// Trailer in place while the body is read.
func cloneHeader(h http.Header) http.Header {
	if h == nil {
		return nil
	}
	return h.Clone()
}

// checkResponseHead is the differential check behind the table tests and
// the fuzz target: for raw as a response to method, the fast path must
// either decline having consumed nothing, or agree with net/http on every
// observable thing, body framing included. It reports whether the fast path
// accepted.
func checkResponseHead(t testing.TB, raw []byte, method string) bool {
	t.Helper()
	return checkResponseHeadSize(t, raw, method, wireBufSize)
}

// checkResponseHeadSize is checkResponseHead with a read buffer of size
// bytes, to bring the rules that depend on what fits in the buffer within
// reach of short fuzz inputs.
func checkResponseHeadSize(t testing.TB, raw []byte, method string, size int) bool {
	t.Helper()
	want := netHTTPRead(bufio.NewReaderSize(bytes.NewReader(raw), size), method)

	br := bufio.NewReaderSize(bytes.NewReader(raw), size)
	got, ok := fastRead(br, method)
	switch {
	case ok:
		if want.HeadErr != "" {
			t.Fatalf("fast path accepted %q (%s) but net/http fails: %s", raw, method, want.HeadErr)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("fast path and net/http differ on %q (%s):\nfast:     %+v\nnet/http: %+v", raw, method, got, want)
		}
	case got.HeadErr != "":
		// Only a stream that ends inside the head fails; net/http must
		// fail on it too.
		if want.HeadErr == "" {
			t.Fatalf("fast path failed on %q (%s) with %s but net/http read it", raw, method, got.HeadErr)
		}
	default:
		// Declined: net/http reading on from the same reader must see
		// exactly what it sees on a fresh one.
		if after := netHTTPRead(br, method); !reflect.DeepEqual(after, want) {
			t.Fatalf("decline of %q (%s) consumed input:\nafter decline: %+v\nfresh:         %+v", raw, method, after, want)
		}
	}
	return ok
}

// cannedBody is the body of cannedResponse.
var cannedBody = strings.Repeat("x", 100)

// cannedResponse is the response the wire benchmarks read: the upstream's
// typical answer.
var cannedResponse = "HTTP/1.1 200 OK\r\nContent-Length: 100\r\nContent-Type: text/plain; charset=utf-8\r\nDate: Mon, 23 Nov 2026 10:00:00 GMT\r\n\r\n" + cannedBody

func TestParseResponseHeadAcceptsPlainForms(t *testing.T) {
	tests := []struct {
		name   string
		method string
		raw    string
		// What the fast path must produce; the differential check then
		// proves net/http agrees.
		status  string
		cl      int64
		close   bool
		header  http.Header
		body    string
		trailer http.Header
		rest    string
		short   bool // the body ends early: io.ErrUnexpectedEOF
	}{
		{
			name:   "200 with Content-Length",
			raw:    "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhellonext",
			status: "200 OK", cl: 5, body: "hello", rest: "next",
			header: http.Header{"Content-Length": {"5"}, "Content-Type": {"text/plain"}},
		},
		{
			name:   "the canned response",
			raw:    cannedResponse,
			status: "200 OK", cl: 100, body: cannedBody,
			header: http.Header{"Content-Length": {"100"}, "Content-Type": {"text/plain; charset=utf-8"}, "Date": {"Mon, 23 Nov 2026 10:00:00 GMT"}},
		},
		{
			name:   "Content-Length 0",
			raw:    "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nnext",
			status: "200 OK", cl: 0, rest: "next",
			header: http.Header{"Content-Length": {"0"}},
		},
		{
			name:   "Content-Length with leading zeros",
			raw:    "HTTP/1.1 200 OK\r\nContent-Length: 007\r\n\r\n1234567",
			status: "200 OK", cl: 7, body: "1234567",
			header: http.Header{"Content-Length": {"007"}},
		},
		{
			name:   "chunked",
			raw:    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: b\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\nnext",
			status: "200 OK", cl: -1, body: "hello world", rest: "next",
			header: http.Header{"X-A": {"b"}},
		},
		{
			name:   "chunked with trailers",
			raw:    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-Sum: 1\r\nx-other: 2 \r\n\r\nnext",
			status: "200 OK", cl: -1, body: "abc", rest: "next",
			header:  http.Header{},
			trailer: http.Header{"X-Sum": {"1"}, "X-Other": {"2"}},
		},
		{
			name: "HEAD with Content-Length", method: "HEAD",
			raw:    "HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\nnext",
			status: "200 OK", cl: 1234, rest: "next",
			header: http.Header{"Content-Length": {"1234"}},
		},
		{
			name: "HEAD without Content-Length", method: "HEAD",
			raw:    "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\nnext",
			status: "200 OK", cl: -1, rest: "next",
			header: http.Header{"Content-Type": {"text/html"}},
		},
		{
			name: "HEAD of a 304", method: "HEAD",
			raw:    "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
			status: "304 Not Modified", cl: 10,
			header: http.Header{"Content-Length": {"10"}},
		},
		{
			name:   "204",
			raw:    "HTTP/1.1 204 No Content\r\n\r\nnext",
			status: "204 No Content", cl: 0, rest: "next",
			header: http.Header{},
		},
		{
			name:   "304 with Content-Length",
			raw:    "HTTP/1.1 304 Not Modified\r\nContent-Length: 42\r\nEtag: \"x\"\r\n\r\nnext",
			status: "304 Not Modified", cl: 0, rest: "next",
			header: http.Header{"Content-Length": {"42"}, "Etag": {`"x"`}},
		},
		{
			name:   "Connection: close",
			raw:    "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
			status: "200 OK", cl: 2, close: true, body: "ok",
			header: http.Header{"Content-Length": {"2"}},
		},
		{
			name:   "close among other Connection tokens",
			raw:    "HTTP/1.1 200 OK\r\nConnection: Keep-Alive, CLOSE\r\nContent-Length: 2\r\n\r\nok",
			status: "200 OK", cl: 2, close: true, body: "ok",
			header: http.Header{"Content-Length": {"2"}},
		},
		{
			name:   "Connection: keep-alive",
			raw:    "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
			status: "200 OK", cl: 2, body: "ok",
			header: http.Header{"Connection": {"keep-alive"}, "Content-Length": {"2"}},
		},
		{
			name:   "repeated headers",
			raw:    "HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nContent-Length: 0\r\nset-cookie: b=2\r\nSet-Cookie: c=3\r\n\r\n",
			status: "200 OK", cl: 0,
			header: http.Header{"Set-Cookie": {"a=1", "b=2", "c=3"}, "Content-Length": {"0"}},
		},
		{
			name:   "non-canonical names",
			raw:    "HTTP/1.1 200 OK\r\ncontent-type: a/b\r\nCONTENT-LENGTH: 1\r\nx-fOO-bar: z\r\nwww-authenticate: Basic\r\n\r\n!",
			status: "200 OK", cl: 1, body: "!",
			header: http.Header{"Content-Type": {"a/b"}, "Content-Length": {"1"}, "X-Foo-Bar": {"z"}, "Www-Authenticate": {"Basic"}},
		},
		{
			name:   "names of every token character",
			raw:    "HTTP/1.1 200 OK\r\n!#$%&'*+-.^_`|~09az: v\r\nContent-Length: 0\r\n\r\n",
			status: "200 OK", cl: 0,
			header: http.Header{"!#$%&'*+-.^_`|~09az": {"v"}, "Content-Length": {"0"}},
		},
		{
			name:   "empty reason",
			raw:    "HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n",
			status: "200", cl: 0,
			header: http.Header{"Content-Length": {"0"}},
		},
		{
			name:   "reason of one space",
			raw:    "HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n",
			status: "200 ", cl: 0,
			header: http.Header{"Content-Length": {"0"}},
		},
		{
			name:   "reason with spaces and tabs",
			raw:    "HTTP/1.1 404 Not  Found\there \t\r\nContent-Length: 0\r\n\r\n",
			status: "404 Not  Found\there \t", cl: 0,
			header: http.Header{"Content-Length": {"0"}},
		},
		{
			name:   "values with inner and trailing spaces",
			raw:    "HTTP/1.1 200 OK\r\nX-A:   a  b \t \r\nX-B:\tc\td\t\r\nContent-Length:  3  \r\n\r\nabc",
			status: "200 OK", cl: 3, body: "abc",
			header: http.Header{"X-A": {"a  b"}, "X-B": {"c\td"}, "Content-Length": {"3"}},
		},
		{
			name:   "empty values",
			raw:    "HTTP/1.1 200 OK\r\nX-E:\r\nX-F:   \r\nContent-Length: 0\r\n\r\n",
			status: "200 OK", cl: 0,
			header: http.Header{"X-E": {""}, "X-F": {""}, "Content-Length": {"0"}},
		},
		{
			name:   "599",
			raw:    "HTTP/1.1 599 Whatever\r\nContent-Length: 1\r\n\r\nx",
			status: "599 Whatever", cl: 1, body: "x",
			header: http.Header{"Content-Length": {"1"}},
		},
		{
			name: "an unknown method is not HEAD", method: "head",
			raw:    "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx",
			status: "200 OK", cl: 1, body: "x",
			header: http.Header{"Content-Length": {"1"}},
		},
		{
			name:   "a body cut short",
			raw:    "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
			status: "200 OK", cl: 10, body: "abc", short: true,
			header: http.Header{"Content-Length": {"10"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !checkResponseHead(t, []byte(tt.raw), tt.method) {
				t.Fatal("declined")
			}
			got, _ := fastRead(bufio.NewReaderSize(strings.NewReader(tt.raw), wireBufSize), tt.method)
			want := wireResult{
				Status:     tt.status,
				StatusCode: int(tt.status[0]-'0')*100 + int(tt.status[1]-'0')*10 + int(tt.status[2]-'0'),
				Proto:      "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
				Header:        tt.header,
				ContentLength: tt.cl,
				Close:         tt.close,
				Body:          []byte(tt.body),
				Trailer:       tt.trailer,
				Rest:          []byte(tt.rest),
			}
			if tt.cl == -1 && tt.method != "HEAD" {
				want.TransferEncoding = []string{"chunked"}
			}
			if tt.short {
				want.BodyErr, want.BodyUnexpected = io.ErrUnexpectedEOF.Error(), true
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("got  %+v\nwant %+v", got, want)
			}
		})
	}
}

func TestParseResponseHeadDeclinesOtherForms(t *testing.T) {
	manyHeaders := "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n" + strings.Repeat("X-A: b\r\n", maxHeadLines) + "\r\n"
	bigHead := "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n" + strings.Repeat("X-Long: "+strings.Repeat("v", 70)+"\r\n", 60) + "\r\n"
	tests := []struct {
		name   string
		method string
		raw    string
	}{
		{"1xx", "", "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"},
		{"101", "", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n"},
		{"below 100", "", "HTTP/1.1 099 Odd\r\nContent-Length: 0\r\n\r\n"},
		{"above 599", "", "HTTP/1.1 600 Odd\r\nContent-Length: 0\r\n\r\n"},
		{"HTTP/1.0", "", "HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"},
		{"HTTP/2", "", "HTTP/2 200 OK\r\nContent-Length: 0\r\n\r\n"},
		{"HTTP/1.2", "", "HTTP/1.2 200 OK\r\nContent-Length: 0\r\n\r\n"},
		{"lower-case protocol", "", "http/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"},
		{"two spaces before the code", "", "HTTP/1.1  200 OK\r\nContent-Length: 0\r\n\r\n"},
		{"four-digit code", "", "HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n"},
		{"two-digit code", "", "HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n"},
		{"non-digit code", "", "HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n"},
		{"signed code", "", "HTTP/1.1 +20 OK\r\nContent-Length: 0\r\n\r\n"},
		{"tab after the code", "", "HTTP/1.1 200\tOK\r\nContent-Length: 0\r\n\r\n"},
		{"obs-text in the reason", "", "HTTP/1.1 200 \xe9t\xe9\r\nContent-Length: 0\r\n\r\n"},
		{"control byte in the reason", "", "HTTP/1.1 200 O\x01K\r\nContent-Length: 0\r\n\r\n"},
		{"CR in the reason", "", "HTTP/1.1 200 O\rK\r\nContent-Length: 0\r\n\r\n"},
		{"bare LF line endings", "", "HTTP/1.1 200 OK\nContent-Length: 0\n\n"},
		{"bare LF ending the status line", "", "HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n"},
		{"bare LF blank line", "", "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\nX-After: 1\r\n\r\n"},
		{"CR in a value", "", "HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 0\r\n\r\n"},
		{"CR CR LF", "", "HTTP/1.1 200 OK\r\nContent-Length: 0\r\r\n\r\n"},
		{"empty name", "", "HTTP/1.1 200 OK\r\n: v\r\nContent-Length: 0\r\n\r\n"},
		{"space before the colon", "", "HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n"},
		{"non-token name", "", "HTTP/1.1 200 OK\r\nX(y): z\r\nContent-Length: 0\r\n\r\n"},
		{"obs-text name", "", "HTTP/1.1 200 OK\r\nX-\xe9: z\r\nContent-Length: 0\r\n\r\n"},
		{"no colon", "", "HTTP/1.1 200 OK\r\nContent-Length 0\r\n\r\n"},
		{"obs-text value", "", "HTTP/1.1 200 OK\r\nX-A: caf\xc3\xa9\r\nContent-Length: 0\r\n\r\n"},
		{"NUL in a value", "", "HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 0\r\n\r\n"},
		{"DEL in a value", "", "HTTP/1.1 200 OK\r\nX-A: a\x7fb\r\nContent-Length: 0\r\n\r\n"},
		{"obs-fold", "", "HTTP/1.1 200 OK\r\nX-A: a\r\n  b\r\nContent-Length: 0\r\n\r\n"},
		{"first header line starts with a space", "", "HTTP/1.1 200 OK\r\n Content-Length: 0\r\n\r\n"},
		{"first header line starts with a tab", "", "HTTP/1.1 200 OK\r\n\tX: y\r\nContent-Length: 0\r\n\r\n"},
		{"Trailer with chunked", "", "HTTP/1.1 200 OK\r\nTrailer: X-Sum\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-Sum: 1\r\n\r\n"},
		{"Trailer without chunked", "", "HTTP/1.1 200 OK\r\nTrailer: X-Sum\r\nContent-Length: 0\r\n\r\n"},
		{"Pragma", "", "HTTP/1.1 200 OK\r\nPragma: no-cache\r\nContent-Length: 0\r\n\r\n"},
		{"other Pragma", "", "HTTP/1.1 200 OK\r\npragma: x\r\nContent-Length: 0\r\n\r\n"},
		{"two equal Content-Lengths", "", "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx"},
		{"two different Content-Lengths", "", "HTTP/1.1 200 OK\r\nContent-Length: 1\r\ncontent-length: 2\r\n\r\nxx"},
		{"Content-Length list", "", "HTTP/1.1 200 OK\r\nContent-Length: 1, 1\r\n\r\nx"},
		{"signed Content-Length", "", "HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\nx"},
		{"negative Content-Length", "", "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nx"},
		{"hex Content-Length", "", "HTTP/1.1 200 OK\r\nContent-Length: 0x1\r\n\r\nx"},
		{"empty Content-Length", "", "HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\nx"},
		{"20-digit Content-Length", "", "HTTP/1.1 200 OK\r\nContent-Length: 00000000000000000001\r\n\r\nx"},
		{"Content-Length past int64", "", "HTTP/1.1 200 OK\r\nContent-Length: 9223372036854775808\r\n\r\nx"},
		{"invalid Content-Length on 204", "", "HTTP/1.1 204 No Content\r\nContent-Length: x\r\n\r\n"},
		{"invalid Content-Length on HEAD", "HEAD", "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"},
		{"two Transfer-Encodings", "", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"},
		{"Transfer-Encoding list", "", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"},
		{"Transfer-Encoding in capitals", "", "HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n0\r\n\r\n"},
		{"identity Transfer-Encoding", "", "HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\nContent-Length: 0\r\n\r\n"},
		{"Content-Length and chunked", "", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"},
		{"chunked to HEAD", "HEAD", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"},
		{"chunked 204", "", "HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n"},
		{"chunked 304", "", "HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n"},
		{"body until close", "", "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it"},
		{"too many header lines", "", manyHeaders},
		{"head larger than the buffer", "", bigHead},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if checkResponseHead(t, []byte(tt.raw), tt.method) {
				t.Fatal("accepted")
			}
			// Buffered before and after: a decline reads nothing off.
			br := bufio.NewReaderSize(strings.NewReader(tt.raw), wireBufSize)
			if _, err := br.Peek(1); err != nil {
				t.Fatal(err)
			}
			before := br.Buffered()
			var resp http.Response
			_, ok, err := parseResponseHead(br, tt.method, &resp)
			if ok || err != nil {
				t.Fatalf("ok %v, err %v", ok, err)
			}
			if br.Buffered() != before {
				t.Errorf("buffered %d bytes, %d before", br.Buffered(), before)
			}
			if !reflect.DeepEqual(resp, http.Response{}) {
				t.Errorf("a decline filled resp: %+v", resp)
			}
		})
	}
}

func TestParseResponseHeadWithSmallBuffer(t *testing.T) {
	// A head that would fit the engine's buffer but not this one is left to
	// net/http, which reads it line by line.
	raw := "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-A: " + strings.Repeat("a", 20) + "\r\n\r\n"
	br := bufio.NewReaderSize(strings.NewReader(raw), 16)
	var resp http.Response
	if _, ok, err := parseResponseHead(br, "", &resp); ok || err != nil {
		t.Fatalf("ok %v, err %v", ok, err)
	}
	got, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got.Header.Get("X-A") != strings.Repeat("a", 20) {
		t.Errorf("header %v", got.Header)
	}
}

// scriptedReader returns its parts one Read at a time, then err; each Read
// after the parts are gone is counted, so tests can see reads past the end.
type scriptedReader struct {
	parts [][]byte
	err   error
	extra int // Reads after the parts ran out
}

func (r *scriptedReader) Read(p []byte) (int, error) {
	if len(r.parts) == 0 {
		r.extra++
		return 0, r.err
	}
	n := copy(p, r.parts[0])
	if r.parts[0] = r.parts[0][n:]; len(r.parts[0]) == 0 {
		r.parts = r.parts[1:]
	}
	return n, nil
}

// byteParts splits s into one-byte parts, the slowest a server can send.
func byteParts(s string) [][]byte {
	parts := make([][]byte, len(s))
	for i := range s {
		parts[i] = []byte{s[i]}
	}
	return parts
}

func TestParseResponseHeadReturnsReadErrorsMidHead(t *testing.T) {
	boom := errors.New("boom")
	tests := []struct {
		name  string
		parts []string
		err   error
		want  error
	}{
		{"error mid-head", []string{"HTTP/1.1 200 OK\r\n", "Content-Le"}, boom, boom},
		{"EOF mid-head", []string{"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n"}, io.EOF, io.ErrUnexpectedEOF},
		{"EOF in the blank line", []string{"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r"}, io.EOF, io.ErrUnexpectedEOF},
		{"EOF at once", nil, io.EOF, io.ErrUnexpectedEOF},
		{"error at once", nil, boom, boom},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := &scriptedReader{err: tt.err}
			for _, p := range tt.parts {
				src.parts = append(src.parts, []byte(p))
			}
			var resp http.Response
			_, ok, err := parseResponseHead(bufio.NewReaderSize(src, wireBufSize), "", &resp)
			if ok || err != tt.want {
				t.Errorf("ok %v, err %v; want %v", ok, err, tt.want)
			}
		})
	}
}

func TestParseResponseHeadReadsNoFurtherThanNetHTTP(t *testing.T) {
	// Fed one byte per Read, the fast path must accept or decline without
	// asking for a byte past the point where net/http would answer: a
	// server waiting for the next request sends nothing more.
	tests := []struct {
		name   string
		raw    string
		accept bool
	}{
		{"accepted head", "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-A: b\r\n\r\n", true},
		{"bare LF line endings", "HTTP/1.1 200 OK\nContent-Length: 0\n\n", false},
		{"bare LF blank line", "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\n", false},
		{"HTTP/1.0 status line", "HTTP/1.0 200 OK\r\n", false},
		{"1xx status line", "HTTP/1.1 103 Early Hints\r\n", false},
		{"malformed header line", "HTTP/1.1 200 OK\r\nno colon\r\n", false},
		{"obs-fold", "HTTP/1.1 200 OK\r\nX: a\r\n ", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := &scriptedReader{parts: byteParts(tt.raw), err: errors.New("read past what net/http needs")}
			var resp http.Response
			_, ok, err := parseResponseHead(bufio.NewReaderSize(src, wireBufSize), "", &resp)
			if ok != tt.accept || err != nil || src.extra != 0 {
				t.Errorf("ok %v, err %v, reads past the end %d", ok, err, src.extra)
			}
		})
	}
}

func TestParseResponseHeadLeavesValuesIndependent(t *testing.T) {
	// The values share one backing array; an append to one must not
	// overwrite the next, as with textproto's.
	raw := "HTTP/1.1 200 OK\r\nX-A: a\r\nX-B: b\r\nContent-Length: 0\r\n\r\n"
	var resp http.Response
	if _, ok, err := parseResponseHead(bufio.NewReader(strings.NewReader(raw)), "", &resp); !ok || err != nil {
		t.Fatalf("ok %v, err %v", ok, err)
	}
	resp.Header["X-A"] = append(resp.Header["X-A"], "a2")
	if got := resp.Header["X-B"]; !reflect.DeepEqual(got, []string{"b"}) {
		t.Errorf("X-B is %q after an append to X-A", got)
	}
}

// timeoutError is a net.Error-like timeout, to check that the framed
// reader hands the engine the very error the conn gave.
type timeoutError struct{}

func (timeoutError) Error() string { return "i/o timeout" }
func (timeoutError) Timeout() bool { return true }

func TestFramedReaderContentLength(t *testing.T) {
	t.Run("EOF comes with the last bytes", func(t *testing.T) {
		var fr framedReader
		fr.reset(bufio.NewReader(strings.NewReader("hello, next")), respFraming{length: 5}, &http.Response{})
		p := make([]byte, 64)
		n, err := fr.Read(p)
		if n != 5 || err != io.EOF || string(p[:n]) != "hello" {
			t.Fatalf("Read = %d %q, %v", n, p[:n], err)
		}
		if n, err := fr.Read(p); n != 0 || err != io.EOF {
			t.Errorf("Read after EOF = %d, %v", n, err)
		}
	})
	t.Run("no body", func(t *testing.T) {
		var fr framedReader
		br := bufio.NewReader(strings.NewReader("next"))
		fr.reset(br, respFraming{}, &http.Response{})
		if n, err := fr.Read(make([]byte, 8)); n != 0 || err != io.EOF {
			t.Errorf("Read = %d, %v", n, err)
		}
		if rest, _ := io.ReadAll(br); string(rest) != "next" {
			t.Errorf("rest %q", rest)
		}
	})
	t.Run("premature EOF", func(t *testing.T) {
		var fr framedReader
		fr.reset(bufio.NewReader(strings.NewReader("abc")), respFraming{length: 5}, &http.Response{})
		body, err := io.ReadAll(&fr)
		if string(body) != "abc" || err != io.ErrUnexpectedEOF {
			t.Fatalf("ReadAll = %q, %v", body, err)
		}
		if _, err := fr.Read(make([]byte, 8)); err != io.ErrUnexpectedEOF {
			t.Errorf("Read after a premature EOF = %v", err)
		}
	})
	t.Run("other errors pass through unchanged", func(t *testing.T) {
		var fr framedReader
		src := &scriptedReader{parts: [][]byte{[]byte("ab")}, err: timeoutError{}}
		fr.reset(bufio.NewReader(src), respFraming{length: 5}, &http.Response{})
		body, err := io.ReadAll(&fr)
		if string(body) != "ab" || err != (timeoutError{}) {
			t.Fatalf("ReadAll = %q, %v", body, err)
		}
		// The conn may still deliver: net/http would read on, and so do we.
		src.parts = [][]byte{[]byte("cde")}
		body, err = io.ReadAll(&fr)
		if string(body) != "cde" || err != nil {
			t.Errorf("ReadAll after the error = %q, %v", body, err)
		}
	})
}

// lastBytesErrReader returns all its data together with err, as a conn
// may when the bytes and a deadline arrive at once, and then err alone.
type lastBytesErrReader struct {
	data []byte
	err  error
}

func (r *lastBytesErrReader) Read(p []byte) (int, error) {
	n := copy(p, r.data)
	r.data = r.data[n:]
	return n, r.err
}

func TestFramedReaderEndsAfterAnErrorWithTheLastBytes(t *testing.T) {
	// A Read as large as bufio's buffer goes straight to the conn, which
	// may hand back the last bytes with an error; the body is then whole
	// and the next Read says so, as net/http's LimitReader does.
	var fr framedReader
	const size = 16 // bufio's smallest buffer
	data := strings.Repeat("d", size)
	fr.reset(bufio.NewReaderSize(&lastBytesErrReader{data: []byte(data), err: timeoutError{}}, size), respFraming{length: size}, &http.Response{})
	p := make([]byte, 64)
	if n, err := fr.Read(p); n != size || err != (timeoutError{}) {
		t.Fatalf("Read = %d, %v", n, err)
	}
	if n, err := fr.Read(p); n != 0 || err != io.EOF {
		t.Errorf("Read after the last bytes = %d, %v", n, err)
	}
}

func TestFramedReaderPassesTrailerReadErrorsThrough(t *testing.T) {
	// net/http turns these into errTrailerEOF or errLongTrailer; the engine
	// needs the timeout itself to classify it.
	for _, wire := range []string{"0\r\n", "0\r\nX", "0\r\nX-Sum: 1\r\n"} {
		t.Run(wire, func(t *testing.T) {
			var fr framedReader
			src := &scriptedReader{parts: [][]byte{[]byte(wire)}, err: timeoutError{}}
			fr.reset(bufio.NewReader(src), respFraming{chunked: true}, &http.Response{})
			if body, err := io.ReadAll(&fr); len(body) != 0 || err != (timeoutError{}) {
				t.Errorf("ReadAll = %q, %v", body, err)
			}
		})
	}
}

func TestFramedReaderRefusesAMalformedTrailer(t *testing.T) {
	wire := "1\r\nx\r\n0\r\nno colon\r\n\r\n"
	var resp http.Response
	var fr framedReader
	fr.reset(bufio.NewReader(strings.NewReader(wire)), respFraming{chunked: true}, &resp)
	body, err := io.ReadAll(&fr)
	var pe textproto.ProtocolError
	if string(body) != "x" || !errors.As(err, &pe) {
		t.Fatalf("ReadAll = %q, %v", body, err)
	}
	if again, _ := fr.Read(make([]byte, 8)); again != 0 {
		t.Errorf("Read after a bad trailer returned %d bytes", again)
	}
	checkResponseHead(t, []byte("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"+wire), "")
}

func TestFramedReaderChunked(t *testing.T) {
	tests := []struct {
		name    string
		wire    string
		body    string
		err     error
		trailer http.Header
		rest    string
	}{
		{name: "no trailer", wire: "3\r\nabc\r\n0\r\n\r\nnext", body: "abc", rest: "next"},
		{name: "trailer", wire: "3\r\nabc\r\n0\r\nX-Sum: 9\r\n\r\nnext", body: "abc", trailer: http.Header{"X-Sum": {"9"}}, rest: "next"},
		{name: "EOF where the trailer should be", wire: "3\r\nabc\r\n0\r\n", body: "abc", err: errTrailerEOF},
		{name: "EOF inside the trailer", wire: "3\r\nabc\r\n0\r\nX-Sum: 9\r\n", body: "abc", err: errLongTrailer},
		{name: "EOF inside a chunk", wire: "5\r\nabc", body: "abc", err: io.ErrUnexpectedEOF},
		{name: "trailer too long", wire: "0\r\nX-Big: " + strings.Repeat("b", wireBufSize) + "\r\n\r\n", err: errLongTrailer},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var resp http.Response
			var fr framedReader
			br := bufio.NewReaderSize(strings.NewReader(tt.wire), wireBufSize)
			fr.reset(br, respFraming{chunked: true}, &resp)
			body, err := io.ReadAll(&fr)
			if string(body) != tt.body || err != tt.err {
				t.Fatalf("ReadAll = %q, %v; want %q, %v", body, err, tt.body, tt.err)
			}
			if !reflect.DeepEqual(resp.Trailer, tt.trailer) {
				t.Errorf("trailer %v", resp.Trailer)
			}
			if tt.err == nil {
				if rest, _ := io.ReadAll(br); string(rest) != tt.rest {
					t.Errorf("rest %q", rest)
				}
			}
			// The end sticks: io.EOF after a whole body, the error after
			// a broken one.
			wantAgain := tt.err
			if wantAgain == nil {
				wantAgain = io.EOF
			}
			if n, again := fr.Read(make([]byte, 8)); n != 0 || again != wantAgain {
				t.Errorf("Read after the end = %d, %v", n, again)
			}
			// And net/http agrees on all of it.
			checkResponseHead(t, []byte("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"+tt.wire), "")
		})
	}
}

// FuzzResponseHead checks the safety property of the fast path on any
// input: it declines having consumed nothing, or agrees with net/http on
// the head, the body, the trailer and the framing.
func FuzzResponseHead(f *testing.F) {
	for _, s := range []string{
		cannedResponse,
		"HTTP/1.1 204 No Content\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
		"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
		"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
	} {
		f.Add([]byte(s), false)
		f.Add([]byte(s), true)
	}
	f.Fuzz(func(t *testing.T, data []byte, head bool) {
		method := http.MethodGet
		if head {
			method = http.MethodHead
		}
		checkResponseHead(t, data, method)
		checkResponseHeadSize(t, data, method, smallBufSize)
	})
}

// readCanned reads cannedResponse through the fast path, reusing
// everything the engine would reuse per conn, and checks what it read.
func readCanned(src *strings.Reader, br *bufio.Reader, resp *http.Response, fr *framedReader, buf []byte) error {
	src.Reset(cannedResponse)
	br.Reset(src)
	*resp = http.Response{}
	f, ok, err := parseResponseHead(br, http.MethodGet, resp)
	if err != nil || !ok {
		return fmt.Errorf("parseResponseHead: ok %v, err %v", ok, err)
	}
	fr.reset(br, f, resp)
	total := 0
	for {
		n, err := fr.Read(buf)
		total += n
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
	}
	if total != len(cannedBody) {
		return fmt.Errorf("read %d body bytes", total)
	}
	return nil
}

// cannedAllocs is what reading cannedResponse through the fast path costs:
// the head string, the header map (its header and one group) and the
// values' backing array.
const cannedAllocs = 4

// TestParseResponseHeadAllocs pins the fast path's allocations so that a
// change that adds one fails here rather than in a profile months later.
func TestParseResponseHeadAllocs(t *testing.T) {
	if testing.CoverMode() != "" {
		t.Skip("coverage instrumentation changes allocations")
	}
	src := strings.NewReader(cannedResponse)
	br := bufio.NewReader(src)
	var resp http.Response
	var fr framedReader
	buf := make([]byte, 512)
	var err error
	allocs := testing.AllocsPerRun(100, func() {
		if e := readCanned(src, br, &resp, &fr, buf); e != nil {
			err = e
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if allocs > cannedAllocs {
		t.Errorf("%v allocations per response, want at most %d", allocs, cannedAllocs)
	}
}
