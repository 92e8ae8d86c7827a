package server

import (
	"context"
	"net/url"
	"testing"
	"time"

	pooldv1 "github.com/poold/poold/gen/poold/v1"
	"github.com/poold/poold/internal/canned"
	"github.com/poold/poold/pool"
)

// What Do allocates on top of the engine, from the request message to the
// response message, is part of poold's cost per call (BENCHMARKS.md): pin
// it, so that a change that adds an allocation is seen. The gRPC framing
// and marshalling around it are grpc-go's. Of the 17, the engine spends 9
// (pool/allocs_test.go, with a deadline); the rest are the http.Request,
// its URL and header map, the body buffer, the response message with its
// timing, and the response headers' two slabs.
func TestDoAllocations(t *testing.T) {
	if raceEnabled || testing.CoverMode() != "" {
		t.Skip("the race detector and coverage allocate on their own account; scripts/test.sh runs this without them")
	}
	for _, tc := range []struct {
		name     string
		response string
		headers  []*pooldv1.Header
		max      float64
	}{
		{"no request headers", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\nDate: Mon, 23 Nov 2026 10:00:00 GMT\r\n\r\nhello", nil, 17},
		{"two request headers", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\nDate: Mon, 23 Nov 2026 10:00:00 GMT\r\n\r\nhello",
			[]*pooldv1.Header{{Name: "Accept", Value: "text/plain"}, {Name: "X-Trace", Value: "1"}}, 19},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := canned.Upstream(t, tc.response)
			engine, err := pool.New(pool.Options{
				SweepInterval: time.Hour,
				Proxy:         func(*url.URL) (*url.URL, error) { return nil, nil },
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = engine.Close() })
			s := NewHTTPServer(engine, HTTPOptions{MaxInFlight: 16})
			// gRPC calls carry a deadline, so this one does too.
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			req := &pooldv1.DoRequest{Method: "GET", Url: "http://" + addr + "/", Headers: tc.headers}
			do := func() {
				resp, err := s.Do(ctx, req)
				if err != nil || string(resp.GetBody()) != "hello" {
					t.Fatalf("Do: %v, body %q", err, resp.GetBody())
				}
			}
			do() // the dial and the host pool are not per request
			got := testing.AllocsPerRun(200, do)
			t.Logf("%.0f allocations per Do", got)
			if got > tc.max {
				t.Errorf("%.0f allocations per Do, want at most %.0f", got, tc.max)
			}
		})
	}
}
