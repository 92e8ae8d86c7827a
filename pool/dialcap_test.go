package pool

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/poold/poold/dialer/dialertest"
)

func TestRequestsThatGiveUpLeaveNoMoreDialsThanTheCap(t *testing.T) {
	addr := dialertest.Blackhole(t, "tcp4", "127.0.0.1:0").Addr().String()
	dialTimeout := 3 * time.Second
	e, err := New(Options{MaxDialsPerHost: 2, Policies: PolicySet{Default: Policy{DialTimeout: &dialTimeout}}})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()

	var wg sync.WaitGroup
	for range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+addr+"/", nil)
			if resp, err := e.RoundTrip(req); err == nil {
				resp.Body.Close()
				t.Error("a request to an address that never accepts succeeded")
			}
		}()
	}
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

func TestABurstBeyondTheDialCapWaitsForSlotsInsteadOfOverflowing(t *testing.T) {
	release := make(chan struct{})
	srv := newHoldingServer(t, release)
	zero := uint32(0)
	e, err := New(Options{MaxDialsPerHost: 2, Policies: PolicySet{Default: Policy{MaxPendingRequests: &zero}}})
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
	h, _ := e.Host(strings.TrimPrefix(srv, "http://"))
	if h.Counters.QueueOverflows != 0 {
		t.Errorf("queue overflows = %d, want 0: max_pending_requests bounds waiting for a full host, not for a dial slot", h.Counters.QueueOverflows)
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
