package server

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"

	pooldv1 "github.com/poold/poold/gen/poold/v1"
	"github.com/poold/poold/pool"
)

func TestDoSendsRepeatedHeadersInOrderAndReturnsResponseHeadersSortedByName(t *testing.T) {
	got := make(chan http.Header, 1)
	up := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		got <- r.Header.Clone()
		w.Header()["Zeta"] = []string{"z"}
		w.Header()["X-Multi"] = []string{"first", "second", "third"}
		w.Header()["Alpha"] = []string{"a"}
		w.WriteHeader(http.StatusOK)
	})
	h := newHTTPHarness(t)
	resp := h.do(t, &pooldv1.DoRequest{
		Url: up.URL,
		Headers: []*pooldv1.Header{
			hdr("X-Rep", "one"), hdr("Accept", "text/plain"), hdr("x-rep", "two"), hdr("X-REP", "three"),
		},
	})
	sent := receive(t, got, "the upstream request")
	if diff := cmp.Diff([]string{"one", "two", "three"}, sent["X-Rep"]); diff != "" {
		t.Errorf("upstream X-Rep (-want +got):\n%s", diff)
	}
	var names []string
	for _, f := range resp.GetHeaders() {
		names = append(names, f.GetName())
	}
	wantNames := []string{"Alpha", "Content-Length", "Date", "X-Multi", "X-Multi", "X-Multi", "Zeta"}
	if diff := cmp.Diff(wantNames, names); diff != "" {
		t.Errorf("response header names (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"first", "second", "third"}, headerValues(resp.GetHeaders(), "X-Multi")); diff != "" {
		t.Errorf("response X-Multi (-want +got):\n%s", diff)
	}
	if resp.GetProtocol() != "HTTP/1.1" {
		t.Errorf("protocol = %q, want HTTP/1.1", resp.GetProtocol())
	}
}

func TestDoHostHeaderOverridesTheHostSentButNotWhereTheRequestGoes(t *testing.T) {
	got := make(chan string, 1)
	up := upstream(t, func(w http.ResponseWriter, r *http.Request) { got <- r.Host })
	h := newHTTPHarness(t)
	h.do(t, &pooldv1.DoRequest{Url: up.URL, Headers: []*pooldv1.Header{hdr("Host", "virtual.example:8080")}})
	if host := receive(t, got, "the upstream request"); host != "virtual.example:8080" {
		t.Errorf("upstream saw Host %q, want the override", host)
	}
}

func TestDoSendsTheBodyAndReturnsTheResponseBodyAndTrailers(t *testing.T) {
	up := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("Trailer", "X-Sum")
		fmt.Fprintf(w, "%s %s %d %s", r.Method, r.Header.Get("Content-Type"), r.ContentLength, b)
		w.Header().Set("X-Sum", "done")
	})
	h := newHTTPHarness(t)
	resp := h.do(t, &pooldv1.DoRequest{
		Method:  "POST",
		Url:     up.URL + "/items#ignored",
		Headers: []*pooldv1.Header{hdr("Content-Type", "application/json"), hdr("Content-Length", "7")},
		Body:    []byte(`{"a":1}`),
	})
	if got, want := string(resp.GetBody()), `POST application/json 7 {"a":1}`; got != want {
		t.Errorf("body = %q, want %q", got, want)
	}
	if diff := cmp.Diff([]*pooldv1.Header{hdr("X-Sum", "done")}, resp.GetTrailers(), cmpProto()); diff != "" {
		t.Errorf("trailers (-want +got):\n%s", diff)
	}
	if got, want := resp.GetUrl(), up.URL+"/items"; got != want {
		t.Errorf("url = %q, want %q", got, want)
	}
}

func TestDoReturnsUpstreamErrorStatusesAsSuccessfulCalls(t *testing.T) {
	for _, code := range []int{http.StatusNotFound, http.StatusTooManyRequests, http.StatusInternalServerError, http.StatusServiceUnavailable} {
		t.Run(fmt.Sprint(code), func(t *testing.T) {
			up := upstream(t, func(w http.ResponseWriter, r *http.Request) {
				http.Error(w, "nope", code)
			})
			h := newHTTPHarness(t)
			resp := h.do(t, &pooldv1.DoRequest{Url: up.URL})
			if resp.GetStatusCode() != int32(code) || string(resp.GetBody()) != "nope\n" {
				t.Errorf("got %d %q, want %d %q", resp.GetStatusCode(), resp.GetBody(), code, "nope\n")
			}
		})
	}
}

func TestDoReportsTimingAndReusesTheConnection(t *testing.T) {
	up := upstream(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	h := newHTTPHarness(t)
	first := h.do(t, &pooldv1.DoRequest{Url: up.URL}).GetTiming()
	second := h.do(t, &pooldv1.DoRequest{Url: up.URL}).GetTiming()

	if first.GetConnectionId() == 0 || first.GetReused() || first.GetAttempts() != 1 {
		t.Errorf("first call: conn %d reused %v attempts %d, want a fresh conn and 1 attempt",
			first.GetConnectionId(), first.GetReused(), first.GetAttempts())
	}
	if first.GetConnect() == nil || first.GetTimeToFirstByte() == nil || first.GetTotal() == nil {
		t.Errorf("first call misses connect, time_to_first_byte or total: %v", first)
	}
	if first.GetIdleTime() != nil {
		t.Errorf("a fresh conn reports idle time %v", first.GetIdleTime().AsDuration())
	}
	if want := strings.TrimPrefix(up.URL, "http://"); first.GetRemoteAddress() != want {
		t.Errorf("remote address = %q, want %q", first.GetRemoteAddress(), want)
	}
	if second.GetConnectionId() != first.GetConnectionId() || !second.GetReused() {
		t.Errorf("second call: conn %d reused %v, want conn %d reused", second.GetConnectionId(), second.GetReused(), first.GetConnectionId())
	}
	if second.GetConnect() != nil || second.GetDns() != nil {
		t.Errorf("a reused conn reports dial phases: %v", second)
	}
	if second.GetTotal().AsDuration() < second.GetTimeToFirstByte().AsDuration() {
		t.Errorf("total %v is shorter than time to first byte %v", second.GetTotal().AsDuration(), second.GetTimeToFirstByte().AsDuration())
	}
}

func TestDoFailsABodyOverTheLimitAndClosesItsConnection(t *testing.T) {
	const limit = 64 << 10
	big := bytes.Repeat([]byte("x"), 1<<20)
	up := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/sized":
			w.Write(big)
		case "/chunked":
			// Flushing first makes the body chunked: its size is only
			// known by reading it.
			for off := 0; off < len(big); off += 16 << 10 {
				w.Write(big[off : off+16<<10])
				http.NewResponseController(w).Flush()
			}
		case "/exact":
			w.Write(big[:limit])
		}
	})
	h := newHTTPHarness(t, withMaxBodySize(limit))

	for _, path := range []string{"/sized", "/chunked"} {
		t.Run(path, func(t *testing.T) {
			before := h.do(t, &pooldv1.DoRequest{Url: up.URL + "/exact"})
			if len(before.GetBody()) != limit {
				t.Fatalf("a body of exactly the limit came back with %d bytes", len(before.GetBody()))
			}
			_, err := h.client.Do(testContext(t), &pooldv1.DoRequest{Url: up.URL + path})
			wantStatus(t, err, codes.ResourceExhausted, ReasonBodyTooLarge)

			after := h.do(t, &pooldv1.DoRequest{Url: up.URL + "/exact"}).GetTiming()
			if after.GetReused() {
				t.Errorf("the request after an abandoned body reused conn %d", after.GetConnectionId())
			}
			if after.GetConnectionId() == before.GetTiming().GetConnectionId() {
				t.Errorf("the request after an abandoned body used conn %d again", after.GetConnectionId())
			}
		})
	}
}

func TestDoHeadOfALargeResourceIsNotOverTheBodyLimit(t *testing.T) {
	up := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(1<<30))
	})
	h := newHTTPHarness(t, withMaxBodySize(1024))
	resp := h.do(t, &pooldv1.DoRequest{Method: "HEAD", Url: up.URL})
	if resp.GetStatusCode() != http.StatusOK || len(resp.GetBody()) != 0 {
		t.Errorf("got %d with %d body bytes, want 200 and no body", resp.GetStatusCode(), len(resp.GetBody()))
	}
	if got := headerValues(resp.GetHeaders(), "Content-Length"); len(got) != 1 || got[0] != strconv.Itoa(1<<30) {
		t.Errorf("Content-Length = %q, want the resource's size", got)
	}
}

func TestDoTimeoutEndsAStalledRequestWithRequestTimeout(t *testing.T) {
	s := newStall(t)
	up := upstream(t, s.ServeHTTP)
	h := newHTTPHarness(t)
	start := time.Now()
	_, err := h.client.Do(testContext(t), &pooldv1.DoRequest{Url: up.URL, Timeout: durationpb.New(100 * time.Millisecond)})
	wantStatus(t, err, codes.DeadlineExceeded, ReasonRequestTimeout)
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("a 100ms timeout took %v", d)
	}
	receive(t, s.aborted, "the upstream to see the request abandoned")
}

func TestPolicyRequestTimeoutAppliesUnderALongerCallerDeadline(t *testing.T) {
	s := newStall(t)
	up := upstream(t, s.ServeHTTP)
	h := newHTTPHarness(t, withPolicy(pool.Policy{RequestTimeout: ptr(100 * time.Millisecond)}))
	ctx, cancel := context.WithTimeout(testContext(t), 20*time.Second)
	defer cancel()
	_, err := h.client.Do(ctx, &pooldv1.DoRequest{Url: up.URL, Timeout: durationpb.New(10 * time.Second)})
	wantStatus(t, err, codes.DeadlineExceeded, ReasonRequestTimeout)
}

func TestCancellingDoAbortsTheUpstreamRequestAndItsConnection(t *testing.T) {
	s := newStall(t)
	up := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/stall" {
			s.ServeHTTP(w, r)
		}
	})
	h := newHTTPHarness(t)
	first := h.do(t, &pooldv1.DoRequest{Url: up.URL + "/ok"}).GetTiming()

	ctx, cancel := context.WithCancel(testContext(t))
	errc := make(chan error, 1)
	go func() {
		_, err := h.client.Do(ctx, &pooldv1.DoRequest{Url: up.URL + "/stall"})
		errc <- err
	}()
	receive(t, s.started, "the upstream request")
	cancel()
	wantStatus(t, receive(t, errc, "Do to return"), codes.Canceled, "")
	receive(t, s.aborted, "the upstream to see the request canceled")

	next := h.do(t, &pooldv1.DoRequest{Url: up.URL + "/ok"}).GetTiming()
	if next.GetReused() || next.GetConnectionId() == first.GetConnectionId() {
		t.Errorf("after a cancel the next request got conn %d (reused %v); the canceled conn %d must be closed",
			next.GetConnectionId(), next.GetReused(), first.GetConnectionId())
	}
}

func TestDoMapsUpstreamFailuresToCodesAndReasons(t *testing.T) {
	cases := []struct {
		name   string
		url    func(t *testing.T) string
		config []func(*harnessConfig)
		code   codes.Code
		reason string
	}{
		{
			name:   "a closed port",
			url:    func(t *testing.T) string { return "http://" + closedPort(t) + "/" },
			code:   codes.Unavailable,
			reason: ReasonConnectionRefused,
		},
		{
			name: "an upstream that closes mid-response",
			url: func(t *testing.T) string {
				return upstream(t, hijackAfter("HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial")).URL
			},
			code:   codes.Aborted,
			reason: ReasonUpstreamReset,
		},
		{
			name:   "an upstream that sends garbage",
			url:    func(t *testing.T) string { return "http://" + rawServer(t, "SSH-2.0-OpenSSH_9.6\r\n\r\n") + "/" },
			code:   codes.Aborted,
			reason: ReasonUpstreamProtocolError,
		},
		{
			name:   "a name that does not resolve",
			url:    func(t *testing.T) string { return "http://no-such-host.invalid/" },
			config: []func(*harnessConfig){withResolver(failingResolver{})},
			code:   codes.Unavailable,
			reason: ReasonDNSError,
		},
		{
			name:   "an upstream slower than response_header_timeout",
			url:    func(t *testing.T) string { return upstream(t, newStall(t).ServeHTTP).URL },
			config: []func(*harnessConfig){withPolicy(pool.Policy{ResponseHeaderTimeout: ptr(100 * time.Millisecond)})},
			code:   codes.DeadlineExceeded,
			reason: ReasonResponseHeaderTimeout,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHTTPHarness(t, tc.config...)
			_, err := h.client.Do(testContext(t), &pooldv1.DoRequest{Url: tc.url(t)})
			wantStatus(t, err, tc.code, tc.reason)
		})
	}
}

func TestDoFailsAtOnceWithQueueFullWhenTheHostHasNoRoom(t *testing.T) {
	s := newStall(t)
	up := upstream(t, s.ServeHTTP)
	h := newHTTPHarness(t, withPolicy(pool.Policy{MaxConnsPerHost: ptr(uint32(1)), MaxPendingRequests: ptr(uint32(0))}))

	ctx, cancel := context.WithCancel(testContext(t))
	errc := make(chan error, 1)
	go func() {
		_, err := h.client.Do(ctx, &pooldv1.DoRequest{Url: up.URL})
		errc <- err
	}()
	receive(t, s.started, "the first request to take the only connection")

	_, err := h.client.Do(testContext(t), &pooldv1.DoRequest{Url: up.URL})
	wantStatus(t, err, codes.ResourceExhausted, ReasonQueueFull)
	cancel()
	receive(t, errc, "the stalled request to end")
}
