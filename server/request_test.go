package server

import (
	"context"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	pooldv1 "github.com/poold/poold/gen/poold/v1"
)

func hdr(name, value string) *pooldv1.Header { return &pooldv1.Header{Name: name, Value: value} }

// invalidRequestCases are requests newUpstreamRequest must refuse, with the
// field each refusal names. base is filled in with a valid URL where the
// case leaves it empty on purpose only when url is the field at fault.
var invalidRequestCases = []struct {
	name  string
	req   *pooldv1.DoRequest
	field string
}{
	{"a missing URL", &pooldv1.DoRequest{}, "url"},
	{"a relative URL", &pooldv1.DoRequest{Url: "/v1/items"}, "url"},
	{"a URL without a host", &pooldv1.DoRequest{Url: "http:///v1/items"}, "url"},
	{"an opaque URL", &pooldv1.DoRequest{Url: "http:example.com"}, "url"},
	{"an ftp URL", &pooldv1.DoRequest{Url: "ftp://127.0.0.1/file"}, "url"},
	{"a URL that does not parse", &pooldv1.DoRequest{Url: "http://[::1/"}, "url"},
	{"a URL with user info", &pooldv1.DoRequest{Url: "http://user:secret@127.0.0.1/"}, "url"},
	{"a URL with port 0", &pooldv1.DoRequest{Url: "http://127.0.0.1:0/"}, "url"},
	{"a URL with a port over 65535", &pooldv1.DoRequest{Url: "http://127.0.0.1:65536/"}, "url"},
	{"a method with a space", &pooldv1.DoRequest{Method: "GE T", Url: "http://127.0.0.1/"}, "method"},
	{"the CONNECT method", &pooldv1.DoRequest{Method: "CONNECT", Url: "http://127.0.0.1/"}, "method"},
	{"a header name with a space", &pooldv1.DoRequest{Url: "http://127.0.0.1/", Headers: []*pooldv1.Header{hdr("Bad Name", "v")}}, "headers[0].name"},
	{"an empty header name", &pooldv1.DoRequest{Url: "http://127.0.0.1/", Headers: []*pooldv1.Header{hdr("Accept", "*/*"), hdr("", "v")}}, "headers[1].name"},
	{"a header name with a colon", &pooldv1.DoRequest{Url: "http://127.0.0.1/", Headers: []*pooldv1.Header{hdr("X-A:", "v")}}, "headers[0].name"},
	{"a header value with CR LF", &pooldv1.DoRequest{Url: "http://127.0.0.1/", Headers: []*pooldv1.Header{hdr("X-A", "v\r\nX-Injected: 1")}}, "headers[0].value"},
	{"a header value with a bare LF", &pooldv1.DoRequest{Url: "http://127.0.0.1/", Headers: []*pooldv1.Header{hdr("X-A", "v\nw")}}, "headers[0].value"},
	{"a header value with NUL", &pooldv1.DoRequest{Url: "http://127.0.0.1/", Headers: []*pooldv1.Header{hdr("X-A", "v\x00")}}, "headers[0].value"},
	{"a Connection header", &pooldv1.DoRequest{Url: "http://127.0.0.1/", Headers: []*pooldv1.Header{hdr("Connection", "close")}}, "headers[0].name"},
	{"a lowercase transfer-encoding header", &pooldv1.DoRequest{Url: "http://127.0.0.1/", Headers: []*pooldv1.Header{hdr("Accept", "*/*"), hdr("X-B", "1"), hdr("transfer-encoding", "chunked")}}, "headers[2].name"},
	{"a Keep-Alive header", &pooldv1.DoRequest{Url: "http://127.0.0.1/", Headers: []*pooldv1.Header{hdr("Keep-Alive", "timeout=5")}}, "headers[0].name"},
	{"a Proxy-Connection header", &pooldv1.DoRequest{Url: "http://127.0.0.1/", Headers: []*pooldv1.Header{hdr("Proxy-Connection", "keep-alive")}}, "headers[0].name"},
	{"a TE header", &pooldv1.DoRequest{Url: "http://127.0.0.1/", Headers: []*pooldv1.Header{hdr("TE", "trailers")}}, "headers[0].name"},
	{"an Upgrade header", &pooldv1.DoRequest{Url: "http://127.0.0.1/", Headers: []*pooldv1.Header{hdr("Upgrade", "websocket")}}, "headers[0].name"},
	{"a Host header with a space", &pooldv1.DoRequest{Url: "http://127.0.0.1/", Headers: []*pooldv1.Header{hdr("Host", "a b")}}, "headers[0].value"},
	{"an empty Host header", &pooldv1.DoRequest{Url: "http://127.0.0.1/", Headers: []*pooldv1.Header{hdr("Host", "")}}, "headers[0].value"},
	{"a Host header with a path", &pooldv1.DoRequest{Url: "http://127.0.0.1/", Headers: []*pooldv1.Header{hdr("Host", "example.com/x")}}, "headers[0].value"},
	{"two Host headers", &pooldv1.DoRequest{Url: "http://127.0.0.1/", Headers: []*pooldv1.Header{hdr("Host", "a.example"), hdr("host", "b.example")}}, "headers[1].name"},
	{"a Content-Length that does not match the body", &pooldv1.DoRequest{Method: "POST", Url: "http://127.0.0.1/", Body: []byte("abc"), Headers: []*pooldv1.Header{hdr("Content-Length", "5")}}, "headers[0].value"},
	{"a negative Content-Length", &pooldv1.DoRequest{Url: "http://127.0.0.1/", Headers: []*pooldv1.Header{hdr("Content-Length", "-1")}}, "headers[0].value"},
	{"a Content-Length with a sign", &pooldv1.DoRequest{Method: "POST", Url: "http://127.0.0.1/", Body: []byte("abc"), Headers: []*pooldv1.Header{hdr("Content-Length", "+3")}}, "headers[0].value"},
	{"a negative timeout", &pooldv1.DoRequest{Url: "http://127.0.0.1/", Timeout: durationpb.New(-time.Second)}, "timeout"},
	{"a malformed timeout", &pooldv1.DoRequest{Url: "http://127.0.0.1/", Timeout: &durationpb.Duration{Seconds: 1, Nanos: -5}}, "timeout"},
	{"too many redirects", &pooldv1.DoRequest{Url: "http://127.0.0.1/", MaxRedirects: maxRedirectsLimit + 1}, "max_redirects"},
}

func TestDoRejectsInvalidRequestsBeforeDialingAndNamesTheField(t *testing.T) {
	h := newHTTPHarness(t)
	for _, tc := range invalidRequestCases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := h.client.Do(testContext(t), tc.req)
			wantFieldViolation(t, err, tc.field)
		})
	}
	if hosts := h.engine.Hosts(); len(hosts) != 0 {
		t.Errorf("invalid requests reached the engine: %v", hosts)
	}
}

func TestDoReportsEveryViolationAtOnce(t *testing.T) {
	h := newHTTPHarness(t)
	_, err := h.client.Do(testContext(t), &pooldv1.DoRequest{
		Method:  "BAD METHOD",
		Url:     "http://127.0.0.1/",
		Headers: []*pooldv1.Header{hdr("Connection", "close"), hdr("X-Ok", "1"), hdr("X-Bad", "a\rb")},
		Timeout: durationpb.New(-time.Second),
	})
	var got []string
	for _, d := range status.Convert(err).Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				got = append(got, v.GetField())
			}
		}
	}
	want := []string{"method", "headers[0].name", "headers[2].value", "timeout"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("violated fields (-want +got):\n%s", diff)
	}
}

func TestStreamRejectsAMissingOrInvalidHead(t *testing.T) {
	h := newHTTPHarness(t)
	cases := []struct {
		name  string
		msgs  []*pooldv1.StreamRequest
		field string
	}{
		{"no message at all", nil, "head"},
		{"a body chunk first", []*pooldv1.StreamRequest{{Msg: &pooldv1.StreamRequest_Body{Body: []byte("x")}}}, "head"},
		{"a head with a body", []*pooldv1.StreamRequest{{Msg: &pooldv1.StreamRequest_Head{Head: &pooldv1.DoRequest{Url: "http://127.0.0.1/", Body: []byte("x")}}}}, "head.body"},
		{"a head with a bad URL", []*pooldv1.StreamRequest{{Msg: &pooldv1.StreamRequest_Head{Head: &pooldv1.DoRequest{Url: "ftp://127.0.0.1/"}}}}, "head.url"},
		{"a head with a hop-by-hop header", []*pooldv1.StreamRequest{{Msg: &pooldv1.StreamRequest_Head{Head: &pooldv1.DoRequest{Url: "http://127.0.0.1/", Headers: []*pooldv1.Header{hdr("Upgrade", "h2c")}}}}}, "head.headers[0].name"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			st, err := h.client.Stream(testContext(t))
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range tc.msgs {
				if err := st.Send(m); err != nil {
					t.Fatal(err)
				}
			}
			if err := st.CloseSend(); err != nil {
				t.Fatal(err)
			}
			_, err = st.Recv()
			wantFieldViolation(t, err, tc.field)
		})
	}
}

func TestUpstreamRequestKeepsWhatTheCallerSent(t *testing.T) {
	ctx := t.Context()
	req, err := newUpstreamRequest(ctx, &pooldv1.DoRequest{
		Url: "https://api.example.com:8443/v1/items?limit=10#section",
		Headers: []*pooldv1.Header{
			hdr("x-rep", "1"), hdr("Accept", "*/*"), hdr("X-Rep", "2"), hdr("Host", "virtual.example:8443"),
			hdr("X-Rep", "3"), hdr("content-length", "0"),
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if req.Method != http.MethodGet {
		t.Errorf("method = %q, want GET for an empty method", req.Method)
	}
	if got, want := req.URL.String(), "https://api.example.com:8443/v1/items?limit=10"; got != want {
		t.Errorf("URL = %q, want %q (fragment dropped)", got, want)
	}
	if req.Host != "virtual.example:8443" {
		t.Errorf("Host = %q, want the override", req.Host)
	}
	want := http.Header{"X-Rep": {"1", "2", "3"}, "Accept": {"*/*"}}
	if diff := cmp.Diff(want, req.Header); diff != "" {
		t.Errorf("header (-want +got):\n%s", diff)
	}
	if req.Context() != ctx {
		t.Error("request does not carry the caller's context")
	}
	if req.ContentLength != 0 || (req.Body != nil && req.Body != http.NoBody) {
		t.Errorf("an empty body became ContentLength %d, Body %v", req.ContentLength, req.Body)
	}
}

func TestUpstreamRequestBodyCanBeReplayed(t *testing.T) {
	req, err := newUpstreamRequest(t.Context(), &pooldv1.DoRequest{
		Method:  "PUT",
		Url:     "http://127.0.0.1/upload",
		Body:    []byte("payload"),
		Headers: []*pooldv1.Header{hdr("Content-Length", "7")},
	})
	if err != nil {
		t.Fatal(err)
	}
	if req.ContentLength != 7 {
		t.Errorf("ContentLength = %d, want 7", req.ContentLength)
	}
	if _, ok := req.Header["Content-Length"]; ok {
		t.Error("Content-Length stays in the header; the engine writes it from ContentLength")
	}
	for i := range 2 {
		b, err := req.GetBody()
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(b)
		if string(got) != "payload" {
			t.Errorf("replay %d read %q", i, got)
		}
	}
}

func TestUpstreamRequestConvertsAnInternationalHostToASCII(t *testing.T) {
	req, err := newUpstreamRequest(t.Context(), &pooldv1.DoRequest{Url: "http://bücher.example/"})
	if err != nil {
		t.Fatal(err)
	}
	if req.URL.Host != "xn--bcher-kva.example" {
		t.Errorf("host = %q, want its punycode", req.URL.Host)
	}
}

// FuzzDoRequestConversion checks that no DoRequest makes the converter
// panic, that what it accepts is a request net/http can write, and that
// what it refuses is INVALID_ARGUMENT naming a field.
func FuzzDoRequestConversion(f *testing.F) {
	for _, tc := range invalidRequestCases {
		r := tc.req
		var names, values []string
		for _, h := range r.GetHeaders() {
			names = append(names, h.GetName())
			values = append(values, h.GetValue())
		}
		f.Add(r.GetMethod(), r.GetUrl(), strings.Join(names, "\n"), strings.Join(values, "\n"), r.GetBody(),
			r.GetTimeout().GetSeconds(), r.GetTimeout().GetNanos(), r.GetMaxRedirects())
	}
	f.Add("POST", "https://api.example.com/v1?x=1#f", "Content-Type\nX-A\nx-a\nHost", "application/json\n1\n2\nvirtual:8080", []byte("{}"), int64(2), int32(0), uint32(3))

	f.Fuzz(func(t *testing.T, method, rawURL, names, values string, body []byte, secs int64, nanos int32, redirects uint32) {
		in := &pooldv1.DoRequest{Method: method, Url: rawURL, Body: body, MaxRedirects: redirects}
		if secs != 0 || nanos != 0 {
			in.Timeout = &durationpb.Duration{Seconds: secs, Nanos: nanos}
		}
		vs := strings.Split(values, "\n")
		for i, n := range strings.Split(names, "\n") {
			if n == "" && i == 0 && names == "" {
				break
			}
			v := ""
			if i < len(vs) {
				v = vs[i]
			}
			in.Headers = append(in.Headers, hdr(n, v))
		}

		req, err := newUpstreamRequest(context.Background(), in)
		if err != nil {
			st := status.Convert(err)
			if st.Code() != codes.InvalidArgument {
				t.Fatalf("refused with %v, want INVALID_ARGUMENT: %v", st.Code(), err)
			}
			for _, d := range st.Details() {
				if br, ok := d.(*errdetails.BadRequest); ok && len(br.GetFieldViolations()) > 0 && br.GetFieldViolations()[0].GetField() != "" {
					return
				}
			}
			t.Fatalf("refusal without a BadRequest field: %v", err)
		}
		checkAcceptedRequest(t, in, req)
	})
}

// checkAcceptedRequest asserts what the engine relies on for a request the
// converter let through.
func checkAcceptedRequest(t *testing.T, in *pooldv1.DoRequest, req *http.Request) {
	t.Helper()
	if req.Method == "" || req.Method == http.MethodConnect || strings.ContainsAny(req.Method, " \t\r\n") {
		t.Fatalf("accepted method %q", req.Method)
	}
	u := req.URL
	if (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "" || u.User != nil || u.Fragment != "" || u.Opaque != "" {
		t.Fatalf("accepted URL %q", u)
	}
	for k, vs := range req.Header {
		if k == "" || strings.ContainsAny(k, " :\r\n\x00") || hopByHop[http.CanonicalHeaderKey(k)] || k == "Host" {
			t.Fatalf("accepted header name %q", k)
		}
		for _, v := range vs {
			if strings.ContainsAny(v, "\r\n\x00") {
				t.Fatalf("accepted header %q value %q", k, v)
			}
		}
	}
	if req.ContentLength != int64(len(in.GetBody())) {
		t.Fatalf("ContentLength %d for a %d-byte body", req.ContentLength, len(in.GetBody()))
	}
	// The request must be one net/http can put on the wire as it is.
	var sb strings.Builder
	if err := req.Write(&sb); err != nil {
		t.Fatalf("accepted a request net/http cannot write: %v", err)
	}
	if head, _, _ := strings.Cut(sb.String(), "\r\n\r\n"); slices.ContainsFunc(strings.Split(head, "\r\n")[1:], func(l string) bool {
		return !strings.Contains(l, ": ")
	}) {
		t.Fatalf("written head has a line that is not a field:\n%s", head)
	}
}
