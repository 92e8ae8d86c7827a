package pool

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestABodyClosedAfterItsRequestWasCancelledNeverReturnsItsConn(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "a small body that a drain would easily save")
	}))
	defer srv.Close()
	e, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()

	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL, nil)
	resp, err := e.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	first, _ := TimingFrom(resp)
	cancel()
	resp.Body.Close()

	resp, err = e.RoundTrip(mustRequest(t, srv.URL))
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	second, _ := TimingFrom(resp)
	if second.Reused || second.ConnID == first.ConnID {
		t.Errorf("the request after a cancelled one reused conn %d; want a new conn", first.ConnID)
	}
	h, _ := e.Host(strings.TrimPrefix(srv.URL, "http://"))
	if h.Counters.Closed[CloseCanceled] != 1 {
		t.Errorf("closed = %v, want one close for reason canceled", h.Counters.Closed)
	}
}

func mustRequest(t *testing.T, url string) *http.Request {
	t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	return req
}
