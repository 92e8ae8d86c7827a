package pool

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/poold/poold/dialer/dialertest"
)

func TestRequestsThatGiveUpLeaveNoMoreDialsThanTheCap(t *testing.T) {
	addr := dialertest.Blackhole(t, "tcp4", "127.0.0.1:0").Addr().String()
	dialTimeout := time.Minute // no dial ends while the test runs
	e, err := New(Options{MaxDialsPerHost: 2, Policies: PolicySet{Default: Policy{DialTimeout: &dialTimeout}}})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()

	// All 40 wait, two of them with a dial, and then all give up at once.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	for range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+addr+"/", nil)
			if resp, err := e.RoundTrip(req); err == nil {
				resp.Body.Close()
				t.Error("a request to an address that never accepts succeeded")
			}
		}()
	}
	eventually(t, "40 requests to wait", func() bool {
		h, _ := e.Host(addr)
		return h.Pending == 40
	})
	if h, _ := e.Host(addr); h.Dialing != 2 {
		t.Errorf("%d dialing with 40 requests waiting, want the cap of 2", h.Dialing)
	}
	cancel()
	wg.Wait()
	h, ok := e.Host(addr)
	if !ok {
		t.Fatal("no host stats")
	}
	if h.Dialing > 2 || h.Counters.Dials > 2 {
		t.Errorf("after 40 requests gave up: %d dialing, %d dials started; want at most 2", h.Dialing, h.Counters.Dials)
	}
	if h.Pending != 0 {
		t.Errorf("pending = %d after every request gave up, want 0", h.Pending)
	}
}

// A burst to a cold host waits for dial slots, within max_pending_requests.
func TestABurstBeyondTheDialCapWaitsForSlots(t *testing.T) {
	release := make(chan struct{})
	srv := newHoldingServer(t, release)
	pending := uint32(64)
	e, err := New(Options{MaxDialsPerHost: 2, Policies: PolicySet{Default: Policy{MaxPendingRequests: &pending}}})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()

	const burst = 30
	var wg sync.WaitGroup
	errs := make(chan error, burst)
	for range burst {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest("GET", srv, nil)
			resp, err := e.RoundTrip(req)
			if err == nil {
				resp.Body.Close()
			}
			errs <- err
		}()
	}
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("request in a burst to a cold host: %v; want it to wait for a dial slot", err)
		}
	}
}

// Against an upstream that never accepts, the dial cap stays full for a
// whole dial timeout; max_pending_requests still bounds what waits behind
// it, and the excess fails at once.
func TestThePendingBoundHoldsWhileTheDialCapIsFull(t *testing.T) {
	addr := dialertest.Blackhole(t, "tcp4", "127.0.0.1:0").Addr().String()
	const dials, pending, callers = 2, 4, 40 // 10× max_pending_requests
	maxPending := uint32(pending)
	dialTimeout := time.Minute // no dial ends while the test runs
	e, err := New(Options{MaxDialsPerHost: dials, Policies: PolicySet{Default: Policy{
		DialTimeout:        &dialTimeout,
		MaxPendingRequests: &maxPending,
	}}})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	errs := make(chan error, callers)
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+addr+"/", nil)
			resp, err := e.RoundTrip(req)
			if err == nil {
				resp.Body.Close()
			}
			errs <- err
		}()
	}
	// Those over the bound fail without waiting for anything; those within
	// it are still waiting, each with its dial or for a slot.
	const excess = callers - dials - pending
	for i := range excess {
		if err := <-errs; !errors.Is(err, ErrQueueFull) {
			t.Fatalf("failure %d of the %d over the bound: %v, want ErrQueueFull", i+1, excess, err)
		}
	}
	h, _ := e.Host(addr)
	if h.Dialing != dials || h.Pending != dials+pending || h.Counters.QueueOverflows != excess {
		t.Errorf("dialing %d, pending %d, overflows %d; want %d, %d, %d", h.Dialing, h.Pending, h.Counters.QueueOverflows, dials, dials+pending, excess)
	}
	cancel()
	for range dials + pending {
		if err := <-errs; errors.Is(err, ErrQueueFull) || !errors.Is(err, context.Canceled) {
			t.Errorf("a request within the bound ended with %v, want its cancellation", err)
		}
	}
}

// newHoldingServer serves "ok" to requests once release is closed.
func newHoldingServer(t *testing.T, release chan struct{}) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-release
		io.WriteString(w, "ok")
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}
