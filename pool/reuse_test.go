package pool

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
)

func TestConnIsReusedAfterBodyIsReadToEOF(t *testing.T) {
	u := newUpstream(t, respond("hello"))
	e := newTestEngine(t, Options{})

	first := mustGet(t, e, u.URL+"/a")
	second := mustGet(t, e, u.URL+"/b")

	if first.body != "hello" || second.body != "hello" {
		t.Fatalf("bodies %q, %q", first.body, second.body)
	}
	if first.timing.Reused || !second.timing.Reused {
		t.Errorf("reused = %v, %v; want false, true", first.timing.Reused, second.timing.Reused)
	}
	if first.timing.ConnID != second.timing.ConnID {
		t.Errorf("conn IDs %d, %d; want the same", first.timing.ConnID, second.timing.ConnID)
	}
	if got := u.accepted.Load(); got != 1 {
		t.Errorf("server accepted %d conns, want 1", got)
	}
	h := hostStats(t, e, u)
	if h.Counters.Requests != 2 || h.Counters.Reused != 1 || h.Counters.Dials != 1 || h.Idle != 1 {
		t.Errorf("stats %+v; want 2 requests, 1 reused, 1 dial, 1 idle", h)
	}
	if h.Key != "http://"+u.host {
		t.Errorf("key %q", h.Key)
	}
}

func TestEarlyCloseDrainsASmallRemainderAndKeepsTheConn(t *testing.T) {
	u := newUpstream(t, respond(strings.Repeat("x", 64<<10)))
	e := newTestEngine(t, Options{})

	resp, err := e.RoundTrip(newRequest(t, context.Background(), "GET", u.URL, ""))
	if err != nil {
		t.Fatal(err)
	}
	io.ReadFull(resp.Body, make([]byte, 10))
	resp.Body.Close()
	first, _ := TimingFrom(resp)

	second := mustGet(t, e, u.URL)
	if second.timing.ConnID != first.ConnID || !second.timing.Reused {
		t.Errorf("second request on conn %d (reused %v), want conn %d reused", second.timing.ConnID, second.timing.Reused, first.ConnID)
	}
}

func TestAbortClosesTheConnHoweverLittleIsLeft(t *testing.T) {
	u := newUpstream(t, respond("hello"))
	e := newTestEngine(t, Options{})

	resp, err := e.RoundTrip(newRequest(t, context.Background(), "GET", u.URL, ""))
	if err != nil {
		t.Fatal(err)
	}
	io.ReadFull(resp.Body, make([]byte, 2))
	Abort(resp)
	if _, err := resp.Body.Read(make([]byte, 1)); err == nil {
		t.Error("read after Abort succeeded")
	}
	Abort(resp) // a second Abort, or a Close, is harmless
	resp.Body.Close()
	first, _ := TimingFrom(resp)

	second := mustGet(t, e, u.URL)
	if second.timing.Reused || second.timing.ConnID == first.ConnID {
		t.Errorf("after Abort the next request got conn %d (reused %v); conn %d must be closed", second.timing.ConnID, second.timing.Reused, first.ConnID)
	}
}

func TestEarlyCloseBeyondTheDrainBoundClosesTheConn(t *testing.T) {
	u := newUpstream(t, respond(strings.Repeat("x", 4<<20)))
	e := newTestEngine(t, Options{})

	resp, err := e.RoundTrip(newRequest(t, context.Background(), "GET", u.URL, ""))
	if err != nil {
		t.Fatal(err)
	}
	io.ReadFull(resp.Body, make([]byte, 10))
	resp.Body.Close()
	if _, err := resp.Body.Read(make([]byte, 1)); !errors.Is(err, http.ErrBodyReadAfterClose) {
		t.Errorf("read after close: %v", err)
	}
	first, _ := TimingFrom(resp)

	second := mustGet(t, e, u.URL)
	if second.timing.ConnID == first.ConnID || second.timing.Reused {
		t.Errorf("second request reused conn %d after an undrainable close", first.ConnID)
	}
	if n := hostStats(t, e, u).Counters.Closed[CloseUnusable]; n != 1 {
		t.Errorf("closed[unusable] = %d, want 1", n)
	}
}

func TestServerClosingAnIdleConnIsInvisibleToTheCaller(t *testing.T) {
	u := newUpstream(t, closeAfterResponse("ok"))
	e := newTestEngine(t, Options{})

	first := mustGet(t, e, u.URL)
	// Wait until the server has closed its side, so the peek sees it.
	eventually(t, "server to close the conn", func() bool { return u.closed.Load() == 1 })
	second := mustGet(t, e, u.URL)

	if second.timing.ConnID == first.timing.ConnID {
		t.Errorf("second request used the closed conn %d", first.timing.ConnID)
	}
	if second.timing.Attempts != 1 {
		t.Errorf("attempts = %d, want 1: the dead conn should be caught before use", second.timing.Attempts)
	}
	h := hostStats(t, e, u)
	if n := h.Counters.Closed[CloseServerClosed] + h.Counters.Closed[CloseUnusable]; n != 1 {
		t.Errorf("closed = %v, want one server_closed or unusable", h.Counters.Closed)
	}
	if h.Counters.Errors != 0 {
		t.Errorf("errors = %d, want 0", h.Counters.Errors)
	}
}

func TestOnlyIdempotentRequestsAreRetriedAfterAReusedConnBreaks(t *testing.T) {
	tests := []struct {
		name      string
		method    string
		body      string
		header    string
		wantRetry bool
	}{
		{name: "GET", method: "GET", wantRetry: true},
		{name: "HEAD", method: "HEAD", wantRetry: true},
		{name: "POST", method: "POST", body: "payload"},
		{name: "POST with Idempotency-Key", method: "POST", body: "payload", header: "Idempotency-Key", wantRetry: true},
		{name: "PUT with X-Idempotency-Key", method: "PUT", body: "payload", header: "X-Idempotency-Key", wantRetry: true},
		{name: "DELETE", method: "DELETE"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u := newUpstream(t, closeBeforeSecondResponse("ok"))
			e := newTestEngine(t, Options{})
			mustGet(t, e, u.URL) // leaves one idle conn the server will drop on its next request

			req := newRequest(t, context.Background(), tt.method, u.URL, tt.body)
			if tt.header != "" {
				req.Header.Set(tt.header, "k1")
			}
			r, err := do(e, req)
			h := hostStats(t, e, u)
			if !tt.wantRetry {
				pe := poolError(t, err, PhaseResponseHeader)
				if !errors.Is(pe, io.EOF) {
					t.Errorf("error %v does not wrap io.EOF", pe)
				}
				if h.Counters.Retries != 0 {
					t.Errorf("retries = %d, want 0", h.Counters.Retries)
				}
				return
			}
			if err != nil {
				t.Fatalf("retried request failed: %v", err)
			}
			if r.status != 200 || r.timing.Attempts != 2 || r.timing.Reused {
				t.Errorf("status %d, attempts %d, reused %v; want 200 on a second, fresh conn", r.status, r.timing.Attempts, r.timing.Reused)
			}
			if h.Counters.Retries != 1 || h.Counters.Errors != 0 {
				t.Errorf("retries %d, errors %d; want 1, 0", h.Counters.Retries, h.Counters.Errors)
			}
		})
	}
}

func TestConnectionCloseIsHonoured(t *testing.T) {
	tests := []struct {
		name       string
		respond    handler
		close      bool // the request asks to close
		wantReason CloseReason
	}{
		{
			name: "server says Connection: close",
			respond: func(s *serverConn, r *http.Request) bool {
				s.reply(200, "Connection: close\r\n", "ok")
				return true // the client must close, not the server
			},
			wantReason: CloseServerClosed,
		},
		{
			name: "HTTP/1.0 response without keep-alive",
			respond: func(s *serverConn, r *http.Request) bool {
				s.write("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
				return true
			},
			wantReason: CloseServerClosed,
		},
		{
			name:       "request says Connection: close",
			respond:    respond("ok"),
			close:      true,
			wantReason: CloseUnusable,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u := newUpstream(t, tt.respond)
			e := newTestEngine(t, Options{})
			var ids []uint64
			for range 2 {
				req := newRequest(t, context.Background(), "GET", u.URL, "")
				req.Close = tt.close
				r, err := do(e, req)
				if err != nil {
					t.Fatal(err)
				}
				ids = append(ids, r.timing.ConnID)
			}
			if ids[0] == ids[1] {
				t.Errorf("both requests on conn %d", ids[0])
			}
			h := hostStats(t, e, u)
			if h.Counters.Closed[tt.wantReason] != 2 || h.Idle != 0 {
				t.Errorf("closed %v, idle %d; want 2 %s, 0 idle", h.Counters.Closed, h.Idle, tt.wantReason)
			}
		})
	}
}

func TestDisabledKeepAlivesSendConnectionCloseAndPoolNothing(t *testing.T) {
	var sawClose []bool
	u := newUpstream(t, func(s *serverConn, r *http.Request) bool {
		sawClose = append(sawClose, r.Close)
		return s.reply(200, "", "ok")
	})
	e := newTestEngine(t, Options{}, func(p *Policy) { p.DisableKeepAlives = ptr(true) })
	mustGet(t, e, u.URL)
	eventually(t, "the conn to close", func() bool { return u.closed.Load() == 1 })
	mustGet(t, e, u.URL)
	if len(sawClose) != 2 || !sawClose[0] || !sawClose[1] {
		t.Errorf("server saw Connection: close = %v", sawClose)
	}
	if h := hostStats(t, e, u); h.Counters.Closed[ClosePolicy] != 2 || h.Idle != 0 {
		t.Errorf("closed %v, idle %d", h.Counters.Closed, h.Idle)
	}
}

func TestResponsesWithoutABodyIgnoreBytesTheServerWronglySends(t *testing.T) {
	tests := []struct {
		name   string
		method string
		status int
	}{
		{"HEAD", "HEAD", 200},
		{"204 No Content", "GET", 204},
		{"304 Not Modified", "GET", 304},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u := newUpstream(t, func(s *serverConn, r *http.Request) bool {
				if r.URL.Path == "/next" {
					return s.reply(200, "", "next")
				}
				// A Content-Length and the body it promises, which a
				// response to HEAD, or a 204 or 304, must not have.
				return s.write("HTTP/1.1 " + strconv.Itoa(tt.status) + " " + http.StatusText(tt.status) + "\r\n" +
					"Content-Length: 20\r\n\r\nGARBAGEGARBAGEGARBAG")
			})
			e := newTestEngine(t, Options{})
			r, err := do(e, newRequest(t, context.Background(), tt.method, u.URL+"/first", ""))
			if err != nil {
				t.Fatal(err)
			}
			if r.status != tt.status || r.body != "" {
				t.Fatalf("got %d %q", r.status, r.body)
			}
			next := mustGet(t, e, u.URL+"/next")
			if next.body != "next" {
				t.Errorf("next response body %q: the stray bytes leaked into it", next.body)
			}
		})
	}
}
