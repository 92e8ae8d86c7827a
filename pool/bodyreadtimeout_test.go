package pool

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// The upstream's silence is bounded, the caller's is not: a body that drips
// slower than BodyReadTimeout fails with ErrBodyReadTimeout, and a caller
// that reads slower than it from an upstream that sent everything does not.
// The drip (a byte every three seconds) is far beyond the bound (1s), and
// the caller's pauses are half as long again as the bound, so load on the
// machine moves no outcome.
func TestBodyReadTimeoutBoundsTheUpstreamNotTheCaller(t *testing.T) {
	const bound = time.Second
	drip := newUpstream(t, func(s *serverConn, _ *http.Request) bool {
		if !s.write("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nx") {
			return false
		}
		for range 9 {
			select {
			case <-time.After(3 * bound):
			case <-s.u.done:
				return false
			}
			if !s.write("x") {
				return false
			}
		}
		return true
	})
	const size = 384 << 10
	bulk := newUpstream(t, respond(strings.Repeat("y", size)))
	e := newTestEngine(t, Options{}, func(p *Policy) { p.BodyReadTimeout = ptr(bound) })

	t.Run("a dripping upstream", func(t *testing.T) {
		resp, err := e.RoundTrip(newRequest(t, context.Background(), "GET", drip.URL, ""))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		n, err := io.Copy(io.Discard, resp.Body)
		var pe *Error
		if !errors.Is(err, ErrBodyReadTimeout) || !errors.As(err, &pe) || pe.Phase != PhaseBody || !pe.Sent {
			t.Fatalf("after %d bytes: %v; want ErrBodyReadTimeout in PhaseBody, marked sent", n, err)
		}
		if n != 1 {
			t.Errorf("read %d bytes before the timeout, want the 1 sent with the head", n)
		}
	})
	t.Run("a slow caller", func(t *testing.T) {
		resp, err := e.RoundTrip(newRequest(t, context.Background(), "GET", bulk.URL, ""))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		buf := make([]byte, size/3)
		total := 0
		for {
			n, err := io.ReadFull(resp.Body, buf)
			total += n
			if err != nil {
				if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Fatalf("after %d bytes, with pauses of %v between reads: %v", total, bound+bound/2, err)
				}
				break
			}
			time.Sleep(bound + bound/2)
		}
		if total != size {
			t.Errorf("read %d bytes, want %d", total, size)
		}
	})
}
