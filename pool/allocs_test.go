package pool

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// cannedUpstream answers every request on a conn with the same bytes,
// reading and writing through fixed buffers so that it allocates nothing
// per request itself: what a test measures is the engine's.
func cannedUpstream(t *testing.T, response string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() {
		ln.Close()
		<-done
	})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf, out := make([]byte, 4096), []byte(response)
		var pending []byte
		for {
			n, err := c.Read(buf[len(pending):])
			if err != nil {
				return
			}
			pending = buf[:len(pending)+n]
			// One response per request head; GETs have no body.
			for {
				i := bytes.Index(pending, []byte("\r\n\r\n"))
				if i < 0 {
					break
				}
				if _, err := c.Write(out); err != nil {
					return
				}
				pending = pending[:copy(buf, pending[i+4:])]
			}
		}
	}()
	return ln.Addr().String()
}

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
			addr := cannedUpstream(t, tc.response)
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
			if got := testing.AllocsPerRun(200, roundTrip); got > tc.max {
				t.Errorf("%v allocs per request, want at most %v", got, tc.max)
			}
			if h, _ := e.Host(addr); h.Counters.Dials != 1 {
				t.Errorf("%d dials: the requests did not all reuse one conn", h.Counters.Dials)
			}
		})
	}
}
