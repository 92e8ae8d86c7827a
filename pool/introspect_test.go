package pool

import (
	"context"
	"errors"
	"net"
	"net/http"
	"sync"
	"testing"

	"github.com/poold/poold/dialer"
)

// openConns makes n conns to u at once and leaves them idle.
func openConns(t *testing.T, e *Engine, u *upstream, n int) {
	t.Helper()
	release := make(chan struct{})
	u.setHandler(stallPath("/hold", release))
	before := u.requests.Load()
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			mustGet(t, e, u.URL+"/hold")
		}()
	}
	eventually(t, "the conns to open", func() bool { return u.requests.Load() == before+int64(n) })
	close(release)
	wg.Wait()
}

func TestCloseIdleClosesIdleConnsAndCountsThemAsDrain(t *testing.T) {
	u := newUpstream(t, respond("ok"))
	e := newTestEngine(t, Options{})
	openConns(t, e, u, 3)
	if n := e.CloseIdle("127.0.0.1"); n != 3 {
		t.Errorf("CloseIdle = %d, want 3", n)
	}
	h := hostStats(t, e, u)
	if h.Idle != 0 || h.Counters.Closed[CloseDrain] != 3 {
		t.Errorf("stats %+v", h)
	}
	if n := e.CloseIdle(""); n != 0 {
		t.Errorf("second CloseIdle = %d", n)
	}
	mustGet(t, e, u.URL) // the pool still works
}

func TestDrainClosesIdleConnsNowAndActiveOnesAfterTheirResponse(t *testing.T) {
	u := newUpstream(t, respond("ok"))
	e := newTestEngine(t, Options{})
	openConns(t, e, u, 2)
	release := make(chan struct{})
	u.setHandler(stallPath("/slow", release))
	slow := make(chan error, 1)
	go func() {
		_, err := do(e, newRequest(t, context.Background(), "GET", u.URL+"/slow", ""))
		slow <- err
	}()
	eventually(t, "one active conn", func() bool { return hostStats(t, e, u).Active == 1 })

	idle, draining := e.Drain(u.host)
	if idle != 1 || draining != 1 {
		t.Errorf("Drain = %d, %d; want 1, 1", idle, draining)
	}
	if cs := e.Conns(ConnFilter{Host: u.host, State: ConnClosing}); len(cs) != 1 {
		t.Errorf("closing conns %+v", cs)
	}
	close(release)
	if err := <-slow; err != nil {
		t.Fatalf("the draining conn's request failed: %v", err)
	}
	h := hostStats(t, e, u)
	if h.Active != 0 || h.Idle != 0 || h.Counters.Closed[CloseDrain] != 2 {
		t.Errorf("stats %+v", h)
	}
}

func TestHostFindsPoolsByKeyHostPortAndNamePreferringHTTPS(t *testing.T) {
	ca := newTestCA(t)
	secure := newTLSUpstream(t, ca, respond("ok"))
	plain := newUpstream(t, respond("ok"))
	e := newTestEngine(t, Options{Dialer: ca.dialer()})
	mustGet(t, e, plain.URL)
	mustGet(t, e, secure.URL)

	tests := []struct {
		key, want string
	}{
		{plain.URL, plain.URL},
		{plain.host, plain.URL},
		{secure.host, secure.URL},
		{"127.0.0.1", secure.URL},
		{"[127.0.0.1]", secure.URL},
	}
	for _, tt := range tests {
		h, ok := e.Host(tt.key)
		if !ok || h.Key != tt.want {
			t.Errorf("Host(%q) = %q, %v; want %q", tt.key, h.Key, ok, tt.want)
		}
	}
	if _, ok := e.Host("127.0.0.2"); ok {
		t.Error("Host found a pool for an unknown host")
	}
	if hs := e.Hosts(); len(hs) != 2 || hs[0].Key > hs[1].Key {
		t.Errorf("Hosts = %+v, want two sorted by key", hs)
	}
	if cs := e.Conns(ConnFilter{State: ConnIdle}); len(cs) != 2 || cs[0].ID >= cs[1].ID {
		t.Errorf("Conns = %+v, want two sorted by ID", cs)
	}
}

func TestCloseFailsInFlightAndWaitingRequestsAndLaterOnesWithErrClosed(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	u := newUpstream(t, stallPath("/slow", release))
	e := newTestEngine(t, Options{}, func(p *Policy) { p.MaxConnsPerHost = ptr(uint32(1)) })
	inflight, waiting := make(chan error, 1), make(chan error, 1)
	go func() {
		_, err := do(e, newRequest(t, context.Background(), "GET", u.URL+"/slow", ""))
		inflight <- err
	}()
	eventually(t, "the conn to be held", func() bool { return u.requests.Load() == 1 })
	go func() {
		_, err := do(e, newRequest(t, context.Background(), "GET", u.URL+"/queued", ""))
		waiting <- err
	}()
	eventually(t, "a waiter", func() bool { return hostStats(t, e, u).Pending == 1 })

	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-waiting; !errors.Is(err, ErrClosed) {
		t.Errorf("waiting request: %v", err)
	}
	if err := <-inflight; !errors.Is(err, ErrClosed) {
		t.Errorf("in-flight request: %v", err)
	}
	if _, err := do(e, newRequest(t, context.Background(), "GET", u.URL, "")); !errors.Is(err, ErrClosed) {
		t.Errorf("request after Close: %v", err)
	}
	if n := hostStats(t, e, u).Counters.Closed[CloseShutdown]; n != 1 {
		t.Errorf("closed[shutdown] = %d", n)
	}
	if _, ok := <-e.Subscribe(context.Background(), EventFilter{}); ok {
		t.Error("Subscribe after Close delivered an event")
	}
	if err := e.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestDialFailuresNameTheirPhaseAndWrapTheDialerError(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := "http://" + ln.Addr().String()
	ln.Close()
	ca, otherCA := newTestCA(t), newTestCA(t)
	untrusted := newTLSUpstream(t, otherCA, respond("ok"))

	tests := []struct {
		name  string
		url   string
		phase Phase
		step  dialer.Step
	}{
		{"connection refused", refused, PhaseDial, dialer.StepConnect},
		{"certificate from an unknown CA", untrusted.URL, PhaseTLS, dialer.StepTLS},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newTestEngine(t, Options{Dialer: ca.dialer()})
			events := e.Subscribe(t.Context(), EventFilter{Kinds: []EventKind{EventDialFailed}})
			_, err := do(e, newRequest(t, context.Background(), "GET", tt.url, ""))
			poolError(t, err, tt.phase)
			var de *dialer.Error
			if !errors.As(err, &de) || de.Step != tt.step {
				t.Errorf("error %v: dialer step %v, want %v", err, de, tt.step)
			}
			if ev := <-events; ev.Kind != EventDialFailed || ev.Detail == "" {
				t.Errorf("event %+v", ev)
			}
			h := e.Hosts()[0]
			if h.Counters.Dials != 1 || h.Counters.DialErrors != 1 || h.Counters.Errors != 1 || h.Dialing != 0 {
				t.Errorf("counters %+v", h)
			}
		})
	}
}

func TestRequestsThatCannotBeFramedAreRefused(t *testing.T) {
	e := newTestEngine(t, Options{})
	bad := func(edit func(r *http.Request)) *http.Request {
		r := newRequest(t, context.Background(), "GET", "http://127.0.0.1:1/", "")
		edit(r)
		return r
	}
	tests := map[string]*http.Request{
		"no URL":              bad(func(r *http.Request) { r.URL = nil }),
		"ftp scheme":          bad(func(r *http.Request) { r.URL.Scheme = "ftp" }),
		"no host":             bad(func(r *http.Request) { r.URL.Host = "" }),
		"newline in a name":   bad(func(r *http.Request) { r.Header["X-A\r\nX-B"] = []string{"1"} }),
		"newline in a value":  bad(func(r *http.Request) { r.Header["X-A"] = []string{"1\r\nX-B: 2"} }),
		"space in the method": bad(func(r *http.Request) { r.Method = "GET /x" }),
	}
	for name, req := range tests {
		if _, err := e.RoundTrip(req); !errors.Is(err, ErrInvalidRequest) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if len(e.Hosts()) != 0 {
		t.Errorf("pools made for refused requests: %+v", e.Hosts())
	}
}
