package pool_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/poold/poold/pool"
)

// TestH2PoolStressCancelAndLimits mixes cancelled, timed-out, reset and
// finished streams over a few conns with a small stream limit, and checks
// that the pool's count of streams comes back to zero and every conn goes
// idle.
func TestH2PoolStressCancelAndLimits(t *testing.T) {
	u := newH2Upstream(t, nil, 4, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/slow":
			select {
			case <-r.Context().Done():
			case <-time.After(50 * time.Millisecond):
			}
		case "/reset":
			panic(http.ErrAbortHandler)
		}
		io.WriteString(w, "ok")
	}))
	e := newH2Engine(t, nil, pool.Policy{Protocols: new(pool.ProtocolsH2C), MaxConnsPerHost: new(uint32(3))})
	var wg sync.WaitGroup
	for g := range 30 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 40 {
				path := [...]string{"/", "/slow", "/reset", "/"}[(g+i)%4]
				ctx, cancel := context.WithTimeout(context.Background(), time.Duration((g*7+i)%20)*time.Millisecond)
				req, _ := http.NewRequestWithContext(ctx, "GET", u.URL+path, nil)
				resp, err := e.RoundTrip(req)
				if err == nil {
					if i%3 != 0 {
						io.Copy(io.Discard, resp.Body)
					}
					resp.Body.Close()
				}
				cancel()
			}
		}()
	}
	wg.Wait()
	waitFor(t, 10*time.Second, "every stream back and every conn idle", func() bool {
		s := h2Host(t, e, u.Host)
		return s.Streams == 0 && s.Active == 0 && s.Pending == 0
	})
}

// The header timeout and the body read gap each end an HTTP/2 stream with
// their own error, though one timer per stream serves both.
func TestH2PoolHeaderAndBodyTimeoutsSayWhichRanOut(t *testing.T) {
	u := newH2Upstream(t, nil, 0, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/drip" {
			w.WriteHeader(200)
			w.(http.Flusher).Flush()
		}
		<-r.Context().Done()
	}))
	e := newH2Engine(t, nil, pool.Policy{
		Protocols:             new(pool.ProtocolsH2C),
		ResponseHeaderTimeout: new(300 * time.Millisecond),
		BodyReadTimeout:       new(300 * time.Millisecond),
	})
	ctx := testContext(t)

	req, _ := http.NewRequestWithContext(ctx, "GET", u.URL+"/stall", nil)
	_, err := e.RoundTrip(req)
	var pe *pool.Error
	if !errors.As(err, &pe) || pe.Phase != pool.PhaseResponseHeader || !pe.Timeout() {
		t.Errorf("stalled head: %v, want a response header timeout", err)
	}

	req, _ = http.NewRequestWithContext(ctx, "GET", u.URL+"/drip", nil)
	resp, err := e.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.ReadAll(resp.Body)
	resp.Body.Close()
	if !errors.Is(err, pool.ErrBodyReadTimeout) {
		t.Errorf("stalled body: %v, want pool.ErrBodyReadTimeout", err)
	}
}
