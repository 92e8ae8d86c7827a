package pool_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/poold/poold/internal/h2script"
	"github.com/poold/poold/pool"
)

// An HTTP/1.1 answer on a conn that should speak HTTP/2 is the upstream
// breaking the protocol: the request fails as such and the conn is closed
// as protocol_error, not retried.
func TestH2FailureErrorForHTTP1Response(t *testing.T) {
	srv := h2script.NewServer(t, func(c *h2script.Conn) {
		c.WriteRaw([]byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
		c.WantClosed()
	})
	e := scriptEngine(t, nil)
	_, _, err := scriptDo(t, e, "GET", srv.URL+"/", "")
	if err == nil {
		t.Fatal("an HTTP/1.1 answer to HTTP/2 succeeded")
	}
	if !errors.Is(err, pool.ErrProtocol) {
		t.Errorf("error %v, want one matching pool.ErrProtocol", err)
	}
	if h := scriptHost(t, e, srv); h.Counters.Retries != 0 {
		t.Errorf("retries %d, want 0", h.Counters.Retries)
	}
}

// The response's ContentLength is what its content-length says, -1 when
// it says nothing and the body is still coming, 0 when the head ends the
// stream.
func TestH2ResponseContentLength(t *testing.T) {
	tests := []struct {
		name   string
		fields []string
		body   string
		end    bool // the head ends the stream
		want   int64
	}{
		{name: "declared", fields: []string{":status", "200", "content-length", "5"}, body: "hello", want: 5},
		{name: "undeclared", fields: []string{":status", "200"}, body: "hello", want: -1},
		{name: "head ends the stream", fields: []string{":status", "200"}, end: true, want: 0},
		{name: "declared zero", fields: []string{":status", "200", "content-length", "0"}, end: true, want: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := h2script.NewServer(t, func(c *h2script.Conn) {
				c.Greet()
				st := c.WantHeaders()
				c.WriteHeaders(st.ID, tt.end, tt.fields...)
				if !tt.end {
					c.WriteData(st.ID, true, []byte(tt.body))
				}
				c.WantClosed()
			})
			e := scriptEngine(t, nil)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second) // a hang guard only
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+"/", nil)
			resp, err := e.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || string(b) != tt.body {
				t.Errorf("body %q, %v; want %q", b, err, tt.body)
			}
			if resp.ContentLength != tt.want {
				t.Errorf("ContentLength %d, want %d", resp.ContentLength, tt.want)
			}
		})
	}
}

// A WINDOW_UPDATE that takes a stream's send window past 2^31-1 is a flow
// control error (RFC 9113 section 6.9.1): the engine resets the stream and
// the request fails rather than sending into a window that overflowed.
func TestH2WindowUpdateBeyondLimit(t *testing.T) {
	reset := make(chan http2.ErrCode, 1)
	srv := h2script.NewServer(t, func(c *h2script.Conn) {
		c.Greet(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 20})
		st := c.WantHeaders()
		c.WriteWindowUpdate(st.ID, 1<<31-1)
		reset <- c.WantRSTStream(st.ID)
		c.WantClosed()
	})
	e := scriptEngine(t, nil)
	body := strings.Repeat("x", 64<<10)
	_, _, err := scriptDo(t, e, "POST", srv.URL+"/", body)
	if err == nil {
		t.Fatal("a request on a stream whose window overflowed succeeded")
	}
	select {
	case code := <-reset:
		if code != http2.ErrCodeFlowControl {
			t.Errorf("stream reset with %v, want FLOW_CONTROL_ERROR", code)
		}
	case <-time.After(30 * time.Second): // a hang guard only
		t.Fatal("the engine never reset the stream")
	}
}

// A server that answers before it has read the whole request body: after
// a 200 the engine keeps sending the body (the server may be streaming
// both ways); after a 403 it stops, resetting its side, and the response
// is still the caller's.
func TestH2ReqBodyAfterResponse_200(t *testing.T) { testH2ReqBodyAfterResponse(t, 200) }

func TestH2ReqBodyAfterResponse_403(t *testing.T) { testH2ReqBodyAfterResponse(t, 403) }

func testH2ReqBodyAfterResponse(t *testing.T, status int) {
	const bodySize = 1 << 20
	got := make(chan int, 1)
	srv := h2script.NewServer(t, func(c *h2script.Conn) {
		c.Greet(http2.Setting{ID: http2.SettingInitialWindowSize, Val: bodySize})
		st := c.WantHeaders()
		c.WriteHeaders(st.ID, false, ":status", strconv.Itoa(status))
		if status == 200 {
			st = c.WantBody(st)
			got <- len(st.Body)
			c.WriteData(st.ID, true, []byte("done"))
		} else {
			c.WriteData(st.ID, true, []byte("denied"))
			got <- -1
		}
		c.WantClosed()
	})
	e := scriptEngine(t, nil)
	pr, pw := io.Pipe()
	go func() {
		chunk := make([]byte, 16<<10)
		for sent := 0; sent < bodySize; sent += len(chunk) {
			if _, err := pw.Write(chunk); err != nil {
				return
			}
		}
		pw.Close()
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second) // a hang guard only
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", srv.URL+"/", pr)
	req.ContentLength = bodySize
	resp, err := e.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	pr.CloseWithError(errors.New("test over"))
	if resp.StatusCode != status {
		t.Errorf("status %d, want %d", resp.StatusCode, status)
	}
	want := map[int]string{200: "done", 403: "denied"}[status]
	if err != nil || string(b) != want {
		t.Errorf("body %q, %v; want %q", b, err, want)
	}
	if n := <-got; status == 200 && n != bodySize {
		t.Errorf("server got %d body bytes, want %d", n, bodySize)
	}
}
