package pool

import (
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/poold/poold/internal/canned"
)

// The engine's allocations per request are a design goal (BENCHMARKS.md):
// pin them, so that a change that adds one is seen.
func TestRoundTripAllocations(t *testing.T) {
	if raceEnabled || testing.CoverMode() != "" {
		t.Skip("the race detector and coverage allocate on their own account; scripts/test.sh runs this without them")
	}
	for _, tc := range []struct {
		name     string
		response string
		max      float64
	}{
		{"content-length", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\nDate: Mon, 23 Nov 2026 10:00:00 GMT\r\n\r\nhello", 6},
		{"chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 8},
		{"no body", "HTTP/1.1 204 No Content\r\nDate: Mon, 23 Nov 2026 10:00:00 GMT\r\n\r\n", 6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := canned.Upstream(t, tc.response)
			e := newTestEngine(t, Options{SweepInterval: time.Hour})
			req, err := http.NewRequest("GET", "http://"+addr+"/", nil)
			if err != nil {
				t.Fatal(err)
			}
			roundTrip := func() {
				resp, err := e.RoundTrip(req)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := io.Copy(io.Discard, resp.Body); err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
			}
			roundTrip() // the dial, and the pools' first use
			got := testing.AllocsPerRun(200, roundTrip)
			t.Logf("%v allocs per request", got)
			if got > tc.max {
				t.Errorf("%v allocs per request, want at most %v", got, tc.max)
			}
			if h, _ := e.Host(addr); h.Counters.Dials != 1 {
				t.Errorf("%d dials: the requests did not all reuse one conn", h.Counters.Dials)
			}
		})
	}
}
