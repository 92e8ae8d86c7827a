package pool

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// fullBacklogAddr returns a loopback address whose accept queue is full,
// so that a connect to it hangs until the dialer gives up: the kernel drops
// SYNs to a listener that never accepts once its backlog is used.
func fullBacklogAddr(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
		if err != nil {
			return addr
		}
		t.Cleanup(func() { c.Close() })
	}
	t.Skip("could not fill a listen backlog on this kernel")
	return ""
}

func TestRequestsThatGiveUpLeaveNoMoreDialsThanTheCap(t *testing.T) {
	addr := fullBacklogAddr(t)
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
