package pool

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"
)

func TestResponseHeaderTimeoutIsATimeoutAndThePoolStaysUsable(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	u := newUpstream(t, stallPath("/slow", release))
	// The timer starts once the request is written, so the phase does not
	// depend on how fast the machine is; the server never answers /slow,
	// so nothing depends on the timeout being short either.
	e := newTestEngine(t, Options{}, func(p *Policy) { p.ResponseHeaderTimeout = ptr(time.Second) })

	_, err := do(e, newRequest(t, context.Background(), "GET", u.URL+"/slow", ""))
	pe := poolError(t, err, PhaseResponseHeader)
	if !pe.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("error %v: Timeout() = %v, Is(os.ErrDeadlineExceeded) = %v", err, pe.Timeout(), errors.Is(err, os.ErrDeadlineExceeded))
	}
	if r := mustGet(t, e, u.URL+"/fast"); r.body != "GET /fast 0" {
		t.Errorf("body %q", r.body)
	}
	h := hostStats(t, e, u)
	if h.Counters.Timeouts != 1 || h.Counters.TimeoutsByPhase[PhaseResponseHeader] != 1 || h.Counters.Closed[CloseError] != 1 {
		t.Errorf("counters %+v", h.Counters)
	}
}

func TestRequestTimeoutAppliesWhenTheContextHasNoDeadline(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	u := newUpstream(t, stallPath("/slow", release))
	// The request timeout also bounds the /fast request below, dial
	// included: it is a real socket's deadline, so it is long enough for
	// a loaded machine.
	e := newTestEngine(t, Options{}, func(p *Policy) { p.RequestTimeout = ptr(2 * time.Second) })

	_, err := do(e, newRequest(t, context.Background(), "GET", u.URL+"/slow", ""))
	pe := poolError(t, err, PhaseRequest)
	if !pe.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) || !errors.Is(err, ErrRequestTimeout) {
		t.Errorf("error %v: not a request timeout", err)
	}
	if n := hostStats(t, e, u).Counters.TimeoutsByPhase[PhaseRequest]; n != 1 {
		t.Errorf("timeouts[request] = %d", n)
	}

	// A caller deadline wins over the request timeout.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := do(e, newRequest(t, ctx, "GET", u.URL+"/fast", "")); err != nil {
		t.Fatal(err)
	}
}

func TestTheCallersDeadlineIsATimeoutInThePhaseItHit(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	u := newUpstream(t, stallPath("/slow", release))
	e := newTestEngine(t, Options{})
	// The deadline runs from before the dial, so the phase it hits is the
	// response header only if dialing and writing take less: a second is
	// ample on loopback, however loaded the machine.
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err := do(e, newRequest(t, ctx, "GET", u.URL+"/slow", ""))
	pe := poolError(t, err, PhaseResponseHeader)
	if !pe.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("error %v: not a deadline", err)
	}
	if n := hostStats(t, e, u).Counters.Closed[CloseCanceled]; n != 1 {
		t.Errorf("closed[canceled] = %d", n)
	}
}

func TestCancelInterruptsABodyReadAtOnce(t *testing.T) {
	u := newUpstream(t, func(s *serverConn, r *http.Request) bool {
		s.write("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
		<-s.u.done
		return false
	})
	e := newTestEngine(t, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	resp, err := e.RoundTrip(newRequest(t, ctx, "GET", u.URL, ""))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	buf := make([]byte, 7)
	if _, err := io.ReadFull(resp.Body, buf); err != nil {
		t.Fatal(err)
	}
	cancel()
	_, err = io.ReadAll(resp.Body)
	if pe := poolError(t, err, PhaseBody); !errors.Is(pe, context.Canceled) {
		t.Errorf("error %v", err)
	}
	if n := hostStats(t, e, u).Counters.Closed[CloseCanceled]; n != 1 {
		t.Errorf("closed[canceled] = %d", n)
	}
}

func TestCancelWhileQueuedFreesTheSlot(t *testing.T) {
	release := make(chan struct{})
	u := newUpstream(t, stallPath("/slow", release))
	e := newTestEngine(t, Options{}, func(p *Policy) {
		p.MaxConnsPerHost = ptr(uint32(1))
		p.MaxPendingRequests = ptr(uint32(1))
	})

	slow := make(chan error, 1)
	go func() {
		_, err := do(e, newRequest(t, context.Background(), "GET", u.URL+"/slow", ""))
		slow <- err
	}()
	eventually(t, "the slow request to hold the only conn", func() bool { return u.requests.Load() == 1 })

	ctx, cancel := context.WithCancel(context.Background())
	queued := make(chan error, 1)
	go func() {
		_, err := do(e, newRequest(t, ctx, "GET", u.URL+"/queued", ""))
		queued <- err
	}()
	eventually(t, "a request to queue", func() bool { return hostStats(t, e, u).Pending == 1 })
	cancel()
	err := <-queued
	if pe := poolError(t, err, PhaseQueue); !errors.Is(pe, context.Canceled) {
		t.Errorf("error %v", err)
	}
	if h := hostStats(t, e, u); h.Pending != 0 {
		t.Errorf("pending = %d after cancel, want 0", h.Pending)
	}
	// The freed place in the queue can be taken again.
	next := make(chan error, 1)
	go func() {
		r, err := do(e, newRequest(t, context.Background(), "GET", u.URL+"/next", ""))
		if err == nil && r.body != "GET /next 0" {
			err = errors.New("wrong body " + r.body)
		}
		next <- err
	}()
	eventually(t, "the next request to queue", func() bool { return hostStats(t, e, u).Pending == 1 })
	close(release)
	if err := <-slow; err != nil {
		t.Fatal(err)
	}
	if err := <-next; err != nil {
		t.Fatal(err)
	}
}

func TestAFailingRequestBodyIsAWriteError(t *testing.T) {
	u := newUpstream(t, respond("ok"))
	e := newTestEngine(t, Options{})
	boom := errors.New("body source broke")
	req := newRequest(t, context.Background(), "POST", u.URL, "")
	req.Body = io.NopCloser(io.MultiReader(strings.NewReader("some"), errReader{boom}))
	req.ContentLength = 100
	_, err := do(e, req)
	if pe := poolError(t, err, PhaseWrite); !errors.Is(pe, boom) {
		t.Errorf("error %v", err)
	}
	mustGet(t, e, u.URL)
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }
