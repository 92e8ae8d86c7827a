package pool

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestInformationalResponsesBeforeTheFinalOneAreSkipped(t *testing.T) {
	u := newUpstream(t, func(s *serverConn, r *http.Request) bool {
		s.write("HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n")
		return s.reply(200, "", "final")
	})
	e := newTestEngine(t, Options{})
	r := mustGet(t, e, u.URL)
	if r.body != "final" {
		t.Errorf("body %q", r.body)
	}
	if again := mustGet(t, e, u.URL); !again.timing.Reused {
		t.Error("conn not reused after a response with 1xx heads")
	}
}

func TestEndlessInformationalResponsesFailTheRequest(t *testing.T) {
	u := newUpstream(t, func(s *serverConn, r *http.Request) bool {
		s.write(strings.Repeat("HTTP/1.1 102 Processing\r\n\r\n", max1xx+5))
		return s.reply(200, "", "final")
	})
	e := newTestEngine(t, Options{})
	_, err := do(e, newRequest(t, context.Background(), "GET", u.URL, ""))
	if pe := poolError(t, err, PhaseResponseHeader); !errors.Is(pe, errTooMany1xx) {
		t.Errorf("error %v", err)
	}
}

func TestAResponseHeadOverTheLimitFails(t *testing.T) {
	u := newUpstream(t, func(s *serverConn, r *http.Request) bool {
		return s.reply(200, "X-Big: "+strings.Repeat("b", 8<<10)+"\r\n", "ok")
	})
	e := newTestEngine(t, Options{}, func(p *Policy) { p.MaxResponseHeaderBytes = ptr(uint32(1024)) })
	_, err := do(e, newRequest(t, context.Background(), "GET", u.URL, ""))
	if pe := poolError(t, err, PhaseResponseHeader); !errors.Is(pe, errHeaderTooLarge) || !errors.Is(pe, ErrProtocol) {
		t.Errorf("error %v", err)
	}
}

// continueUpstream answers "Expect: 100-continue" requests as told and
// reports how much body it read.
func continueUpstream(t *testing.T, send100 bool, bodyRead chan<- int) *upstream {
	return newUpstream(t, func(s *serverConn, r *http.Request) bool {
		if r.URL.Path == "/plain" {
			return s.reply(200, "", "plain")
		}
		if send100 {
			s.write("HTTP/1.1 100 Continue\r\n\r\n")
		}
		b, err := io.ReadAll(r.Body)
		if err != nil {
			return false
		}
		bodyRead <- len(b)
		return s.reply(200, "", "got "+string(b))
	})
}

func expectContinueRequest(t *testing.T, url, body string) *http.Request {
	req := newRequest(t, context.Background(), "PUT", url, body)
	req.Header.Set("Expect", "100-continue")
	return req
}

func TestExpectContinueSendsTheBodyAfter100Continue(t *testing.T) {
	bodyRead := make(chan int, 1)
	u := continueUpstream(t, true, bodyRead)
	// A long timeout: the body must go because of the 100, not the timer.
	e := newTestEngine(t, Options{}, func(p *Policy) { p.ExpectContinueTimeout = ptr(time.Minute) })
	start := time.Now()
	r, err := do(e, expectContinueRequest(t, u.URL, "payload"))
	if err != nil {
		t.Fatal(err)
	}
	if r.body != "got payload" || <-bodyRead != len("payload") {
		t.Errorf("body %q", r.body)
	}
	if time.Since(start) > 30*time.Second {
		t.Error("body waited for the timeout despite 100 Continue")
	}
	if again := mustGet(t, e, u.URL+"/plain"); !again.timing.Reused {
		t.Error("conn not reused after a 100-continue exchange")
	}
}

func TestExpectContinueSendsTheBodyAfterTheTimeoutWithNo100(t *testing.T) {
	bodyRead := make(chan int, 1)
	u := continueUpstream(t, false, bodyRead)
	// The server never sends 100 Continue, so the body can only go when
	// the timer fires; only a lower bound on the time is checked.
	const timeout = time.Second
	e := newTestEngine(t, Options{}, func(p *Policy) { p.ExpectContinueTimeout = ptr(timeout) })
	start := time.Now()
	r, err := do(e, expectContinueRequest(t, u.URL, "payload"))
	if err != nil {
		t.Fatal(err)
	}
	if r.body != "got payload" || <-bodyRead != len("payload") {
		t.Errorf("body %q", r.body)
	}
	if d := time.Since(start); d < timeout {
		t.Errorf("body sent after %v, before the expect-continue timeout", d)
	}
}

func TestExpectContinueWithholdsTheBodyWhenTheServerAnswersFirst(t *testing.T) {
	var gotBytes = make(chan int, 1)
	u := newUpstream(t, func(s *serverConn, r *http.Request) bool {
		if r.URL.Path == "/plain" {
			return s.reply(200, "", "plain")
		}
		s.reply(http.StatusExpectationFailed, "", "no")
		// Whatever the client sends next is body it should have withheld;
		// a closed conn means it sent none. The client closes the conn as
		// soon as it has read this answer, so the deadline only bounds a
		// client that neither sends nor closes, which the checks below
		// catch.
		s.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, _ := s.br.Read(make([]byte, 64))
		gotBytes <- n
		return false
	})
	e := newTestEngine(t, Options{}, func(p *Policy) { p.ExpectContinueTimeout = ptr(time.Minute) })
	r, err := do(e, expectContinueRequest(t, u.URL, "payload"))
	if err != nil {
		t.Fatal(err)
	}
	if r.status != http.StatusExpectationFailed {
		t.Errorf("status %d", r.status)
	}
	if n := <-gotBytes; n != 0 {
		t.Errorf("server read %d body bytes after answering", n)
	}
	if again := mustGet(t, e, u.URL+"/plain"); again.timing.ConnID == r.timing.ConnID {
		t.Error("conn reused after the body was withheld")
	}
	if n := hostStats(t, e, u).Counters.Closed[CloseUnusable]; n != 1 {
		t.Errorf("closed[unusable] = %d, want 1", n)
	}
}

func TestSwitchingProtocolsHandsTheConnToTheCaller(t *testing.T) {
	u := newUpstream(t, func(s *serverConn, r *http.Request) bool {
		s.write("HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\nhi ")
		// Echo one line, then hang up.
		line, err := s.br.ReadString('\n')
		if err == nil {
			s.write(line)
		}
		return false
	})
	e := newTestEngine(t, Options{})
	req := newRequest(t, context.Background(), "GET", u.URL, "")
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "echo")
	resp, err := e.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 101 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	rw, ok := resp.Body.(io.ReadWriteCloser)
	if !ok {
		t.Fatalf("101 body %T is not an io.ReadWriteCloser", resp.Body)
	}
	if _, err := io.WriteString(rw, "ping\n"); err != nil {
		t.Fatal(err)
	}
	got, err := bufio.NewReader(rw).ReadString('\n')
	if err != nil || got != "hi ping\n" {
		t.Fatalf("read %q, %v", got, err)
	}
	h := hostStats(t, e, u)
	if h.Active != 0 || h.Idle != 0 || len(e.Conns(ConnFilter{Host: u.host})) != 0 {
		t.Errorf("pool still tracks the upgraded conn: %+v", h)
	}
}

func TestSwitchingProtocolsThatTheRequestDidNotAskForIsAProtocolError(t *testing.T) {
	u := newUpstream(t, func(s *serverConn, r *http.Request) bool {
		s.write("HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
		return false
	})
	e := newTestEngine(t, Options{})
	resp, err := e.RoundTrip(newRequest(t, context.Background(), "GET", u.URL, ""))
	if err == nil {
		resp.Body.Close()
		t.Fatal("an unrequested 101 handed the conn over; the caller would read a raw socket no deadline reaches")
	}
	if !errors.Is(err, ErrProtocol) {
		t.Errorf("error = %v, want ErrProtocol", err)
	}
	if h := hostStats(t, e, u); h.Active != 0 || h.Idle != 0 {
		t.Errorf("pool kept the conn: %+v", h)
	}
}

// endless is a request body that never runs out and is not in memory, so
// the writer is still busy when the response comes.
type endless struct{}

func (endless) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 'z'
	}
	return len(p), nil
}

func TestAResponseThatArrivesWhileTheBodyIsStillBeingWrittenEndsTheConn(t *testing.T) {
	u := newUpstream(t, func(s *serverConn, r *http.Request) bool {
		if r.URL.Path == "/plain" {
			return s.reply(200, "", "plain")
		}
		// Refuse the upload without reading it, and keep the conn open:
		// closing with unread data would reset it under the response.
		s.reply(http.StatusRequestEntityTooLarge, "", "too large")
		<-s.u.done
		return false
	})
	e := newTestEngine(t, Options{})
	req := newRequest(t, context.Background(), "POST", u.URL+"/upload", "")
	req.Body = io.NopCloser(endless{})
	req.ContentLength = 1 << 40
	r, err := do(e, req)
	if err != nil {
		t.Fatal(err)
	}
	if r.status != http.StatusRequestEntityTooLarge || r.body != "too large" {
		t.Fatalf("got %d %q", r.status, r.body)
	}
	if n := hostStats(t, e, u).Counters.Closed[CloseUnusable]; n != 1 {
		t.Errorf("closed[unusable] = %d, want 1", n)
	}
	if again := mustGet(t, e, u.URL+"/plain"); again.timing.Reused {
		t.Error("the conn with a half-written body was reused")
	}
}

func TestResponsesThatBreakHTTPAreProtocolErrors(t *testing.T) {
	tests := []struct {
		name  string
		raw   string
		phase Phase
	}{
		{"garbage status line", "HTTP/1.1 two hundred OK\r\n\r\n", PhaseResponseHeader},
		{"header line without a colon", "HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", PhaseResponseHeader},
		{"bad chunk size", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", PhaseBody},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u := newUpstream(t, func(s *serverConn, r *http.Request) bool {
				s.write(tt.raw)
				<-s.u.done
				return false
			})
			e := newTestEngine(t, Options{})
			_, err := do(e, newRequest(t, context.Background(), "GET", u.URL, ""))
			if pe := poolError(t, err, tt.phase); !errors.Is(pe, ErrProtocol) {
				t.Errorf("error %v does not wrap ErrProtocol", err)
			}
		})
	}
}

// Every form of response head reaches the caller alike, whether the engine
// parses it itself or leaves it to net/http, and the conn is reused exactly
// when the framing allows.
func TestResponseFormsFromBothReaders(t *testing.T) {
	tests := []struct {
		name    string
		raw     string
		body    string
		header  http.Header // fields that must be there
		trailer http.Header
		reused  bool // the next request reuses the conn
	}{
		{name: "content-length", raw: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello",
			body: "hello", header: http.Header{"X-A": {"1"}}, reused: true},
		{name: "chunked", raw: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n",
			body: "hello", reused: true},
		{name: "chunked with a trailer", raw: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Sum: 42\r\n\r\n",
			body: "hello", trailer: http.Header{"X-Sum": {"42"}}, reused: true},
		{name: "declared trailer (net/http reads it)", raw: "HTTP/1.1 200 OK\r\nTrailer: X-Sum\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Sum: 42\r\n\r\n",
			body: "hello", trailer: http.Header{"X-Sum": {"42"}}, reused: true},
		{name: "folded field (net/http reads it)", raw: "HTTP/1.1 200 OK\r\nX-Long: a\r\n b\r\nContent-Length: 5\r\n\r\nhello",
			body: "hello", header: http.Header{"X-Long": {"a b"}}, reused: true},
		{name: "non-ASCII value (net/http reads it)", raw: "HTTP/1.1 200 OK\r\nX-Name: caf\xe9\r\nContent-Length: 5\r\n\r\nhello",
			body: "hello", header: http.Header{"X-Name": {"caf\xe9"}}, reused: true},
		{name: "HTTP/1.0 keep-alive (net/http reads it)", raw: "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 5\r\n\r\nhello",
			body: "hello", reused: true},
		{name: "HTTP/1.0 (net/http reads it)", raw: "HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello",
			body: "hello", reused: false},
		{name: "connection close", raw: "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello",
			body: "hello", reused: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u := newUpstream(t, func(s *serverConn, r *http.Request) bool {
				return s.write(tt.raw)
			})
			e := newTestEngine(t, Options{})
			resp, err := e.RoundTrip(newRequest(t, context.Background(), "GET", u.URL, ""))
			if err != nil {
				t.Fatal(err)
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || string(b) != tt.body {
				t.Fatalf("body %q, %v; want %q", b, err, tt.body)
			}
			for k, want := range tt.header {
				if got := resp.Header[k]; !slices.Equal(got, want) {
					t.Errorf("header %s = %q, want %q", k, got, want)
				}
			}
			for k, want := range tt.trailer {
				if got := resp.Trailer[k]; !slices.Equal(got, want) {
					t.Errorf("trailer %s = %q, want %q", k, got, want)
				}
			}
			if _, ok := TimingFrom(resp); !ok {
				t.Error("no timing on the response")
			}
			again := mustGet(t, e, u.URL)
			if again.timing.Reused != tt.reused {
				t.Errorf("next request reused the conn: %v, want %v", again.timing.Reused, tt.reused)
			}
		})
	}
}

func TestTruncatedBodiesFailInTheBodyPhase(t *testing.T) {
	for _, raw := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
	} {
		u := newUpstream(t, func(s *serverConn, r *http.Request) bool {
			s.write(raw)
			return false // close the conn mid-body
		})
		e := newTestEngine(t, Options{})
		_, err := do(e, newRequest(t, context.Background(), "GET", u.URL, ""))
		if pe := poolError(t, err, PhaseBody); !errors.Is(pe, io.ErrUnexpectedEOF) {
			t.Errorf("%q: error %v, want unexpected EOF", raw, err)
		}
		if h := hostStats(t, e, u); h.Idle != 0 || h.Active != 0 {
			t.Errorf("%q: %d idle, %d active after the failure", raw, h.Idle, h.Active)
		}
	}
}
