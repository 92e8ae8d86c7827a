package pool

import (
	"testing"
	"time"
)

// A tracer draws the phases from these instants, so they must lie where
// the durations say: the dial's steps inside the checkout, the write after
// it.
func TestTimingPlacesEachPhaseOnTheClock(t *testing.T) {
	ca := newTestCA(t)
	u := newTLSUpstream(t, ca, respond("secure"))
	e := newTestEngine(t, Options{Dialer: ca.dialer()})

	before := time.Now()
	fresh := mustGet(t, e, u.URL).timing
	reused := mustGet(t, e, u.URL).timing
	after := time.Now()

	if fresh.Reused || !reused.Reused {
		t.Fatalf("reused %v then %v, want a fresh conn then the same one again", fresh.Reused, reused.Reused)
	}
	if want := "https://" + u.host; fresh.PoolKey != want || reused.PoolKey != want {
		t.Errorf("pool keys %q, %q, want %q", fresh.PoolKey, reused.PoolKey, want)
	}
	dialEnd := fresh.DialStart.Add(fresh.DNS + fresh.Connect + fresh.TLSHandshake)
	for _, c := range []struct {
		what        string
		early, late time.Time
	}{
		{"the dial begins after the request", before, fresh.DialStart},
		{"the dial's steps end before the conn is handed over", dialEnd, fresh.GotConn},
		{"the checkout ends where Queued says", fresh.GotConn.Add(-fresh.Queued), fresh.GotConn},
		{"the write begins after the checkout", fresh.GotConn, fresh.WriteStart},
		{"the first byte comes after the write began", fresh.WriteStart, fresh.WriteStart.Add(fresh.TimeToFirstByte)},
		{"the second request follows the first", fresh.WriteStart.Add(fresh.TimeToFirstByte), reused.GotConn},
		{"the second write begins after its checkout", reused.GotConn, reused.WriteStart},
		{"the second first byte comes before the test ends", reused.WriteStart.Add(reused.TimeToFirstByte), after},
	} {
		if c.early.IsZero() || c.late.IsZero() || c.late.Before(c.early) {
			t.Errorf("%s: %v is not at or after %v", c.what, c.late, c.early)
		}
	}
	if fresh.TLSHandshake <= 0 || fresh.Connect <= 0 {
		t.Errorf("fresh conn: connect %v, TLS %v, want both measured", fresh.Connect, fresh.TLSHandshake)
	}
	if !reused.DialStart.IsZero() {
		t.Errorf("reused conn has a dial start %v; it was not dialed for this request", reused.DialStart)
	}
}
