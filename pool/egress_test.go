package pool

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"testing"

	"github.com/poold/poold/dialer"
)

func egressRules(t *testing.T, cfg dialer.EgressConfig) *dialer.EgressRules {
	t.Helper()
	r, err := dialer.NewEgressRules(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// Scopes are separate pools: the same origin under two rule sets gives two
// answers, and a connection one scope dialled never serves the other.
func TestEgressScopesDecideTheirOwnDialsAndShareNoConnection(t *testing.T) {
	u := newUpstream(t, respond("ok"))
	allowLo := egressRules(t, dialer.EgressConfig{Allow: []string{"127.0.0.1/32"}})
	builtIn := egressRules(t, dialer.EgressConfig{})
	e := newTestEngine(t, Options{Dialer: &dialer.Dialer{Egress: builtIn}})
	open := NewEgressScope("", allowLo)
	closed := NewEgressScope("closed", builtIn)

	get := func(s *EgressScope) error {
		_, err := do(e, newRequest(t, WithEgressScope(context.Background(), s), "GET", u.URL, ""))
		return err
	}
	for range 2 {
		if err := get(open); err != nil {
			t.Fatalf("under rules that allow loopback: %v", err)
		}
		if err := get(closed); !errors.Is(err, dialer.ErrEgressDenied) {
			t.Fatalf("under rules that deny loopback, with a conn to it idle in another scope: %v, want a denial", err)
		}
	}
	if _, ok := e.Host(u.URL); !ok {
		t.Errorf("no pool %q for the scope named \"\"", u.URL)
	}
	if h, ok := e.Host(u.URL + " egress=closed"); !ok || h.Counters.DialErrors != 2 || h.Active+h.Idle != 0 {
		t.Errorf("the closed scope's pool: %+v, %v; want both its dials denied and no conn", h, ok)
	}
	if got := u.accepted.Load(); got != 1 {
		t.Errorf("%d connections accepted, want the 1 the open scope reuses", got)
	}
}

// A rule change applies to the next request: an idle connection to an
// address the new rules deny is closed instead of taken, and the new dial
// is denied; one in flight finishes its request and is closed after it.
func TestAnEgressChangeClosesConnectionsItDeniesWhenIdle(t *testing.T) {
	release := make(chan struct{})
	u := newUpstream(t, func(s *serverConn, r *http.Request) bool {
		if r.URL.Path == "/hold" {
			<-release
		}
		return s.reply(200, "", "ok")
	})
	allowLo := egressRules(t, dialer.EgressConfig{Allow: []string{"127.0.0.1/32"}})
	denyLo := egressRules(t, dialer.EgressConfig{})
	e := newTestEngine(t, Options{})
	s := NewEgressScope("team", allowLo)
	ctx := WithEgressScope(context.Background(), s)
	key := u.URL + " egress=team"
	var once sync.Once
	letGo := func() { once.Do(func() { close(release) }) }
	t.Cleanup(letGo)

	mustGet(t, e, u.URL) // a pool outside the scope, unaffected throughout
	held := make(chan error, 1)
	go func() {
		_, err := do(e, newRequest(t, ctx, "GET", u.URL+"/hold", ""))
		held <- err
	}()
	eventually(t, "the held request to be active", func() bool {
		h, _ := e.Host(key)
		return h.Active == 1
	})
	// A second conn, left idle while the first is held.
	if _, err := do(e, newRequest(t, ctx, "GET", u.URL+"/idle", "")); err != nil {
		t.Fatal(err)
	}

	s.Set(denyLo)
	if _, err := do(e, newRequest(t, ctx, "GET", u.URL+"/after", "")); !errors.Is(err, dialer.ErrEgressDenied) {
		t.Fatalf("after the change: %v, want a denial", err)
	}
	letGo()
	if err := <-held; err != nil {
		t.Fatalf("the request in flight during the change: %v, want it finished", err)
	}
	h, _ := e.Host(key)
	if h.Active+h.Idle != 0 || h.Counters.Closed[CloseEgress] != 2 {
		t.Errorf("scope pool after the change: %d active, %d idle, %d closed for egress; want 0, 0, 2", h.Active, h.Idle, h.Counters.Closed[CloseEgress])
	}
	if h, _ := e.Host(u.URL); h.Idle != 1 {
		t.Errorf("the unscoped pool has %d idle conns, want its 1 untouched", h.Idle)
	}
}
