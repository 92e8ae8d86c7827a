package pool

import (
	"context"
	"slices"
	"testing"
)

func TestEventsDescribeAConnsLife(t *testing.T) {
	u := newUpstream(t, respond("ok"))
	e := newTestEngine(t, Options{})
	events := e.Subscribe(t.Context(), EventFilter{Host: u.host})
	mustGet(t, e, u.URL)
	mustGet(t, e, u.URL)
	e.CloseIdle("")

	want := []EventKind{EventDialed, EventIdle, EventReused, EventIdle, EventClosed}
	for i, k := range want {
		ev := <-events
		if ev.Kind != k || ev.Host != "http://"+u.host || ev.ConnID == 0 || ev.Time.IsZero() {
			t.Fatalf("event %d = %+v, want %v", i, ev, k)
		}
		if k == EventClosed && ev.Reason != string(CloseDrain) {
			t.Errorf("close reason %q", ev.Reason)
		}
	}
}

func TestASlowSubscriberGetsEventsDroppedAndNeverBlocksTheEngine(t *testing.T) {
	u := newUpstream(t, respond("ok"))
	e := newTestEngine(t, Options{EventBuffer: 2})
	events := e.Subscribe(t.Context(), EventFilter{})
	// One event goes in hand: the subscriber's goroutine holds it, blocked
	// on the channel nobody reads.
	if err := e.SetPolicies(PolicySet{}); err != nil {
		t.Fatal(err)
	}
	sub := (*e.events.subs.Load())[0]
	eventually(t, "the subscriber to take the first event", func() bool {
		sub.mu.Lock()
		defer sub.mu.Unlock()
		return len(sub.queue) == 0
	})
	// 20 requests make 40 events (1 dial, 20 idle, 19 reuse): two fit the
	// queue, the rest are dropped.
	for range 20 {
		mustGet(t, e, u.URL)
	}
	var got []EventKind
	for ev := range events {
		got = append(got, ev.Kind)
		if ev.Kind == EventsDropped {
			if ev.Dropped != 38 {
				t.Errorf("dropped = %d, want 38", ev.Dropped)
			}
			break
		}
	}
	if want := []EventKind{EventPolicyChanged, EventDialed, EventIdle, EventsDropped}; !slices.Equal(got, want) {
		t.Fatalf("events %v, want %v", got, want)
	}
	// Delivery resumes with the next event.
	e.CloseIdle("")
	if ev := <-events; ev.Kind != EventClosed {
		t.Errorf("next event %+v", ev)
	}
}

func TestADroppedCountComesBeforeTheNextEvent(t *testing.T) {
	s := &subscriber{limit: 1, notify: make(chan struct{}, 1), out: make(chan Event)}
	for i := range 4 {
		s.push(Event{Kind: EventIdle, ConnID: uint64(i)})
	}
	if qe, _ := s.pop(nowForTest); qe.ev.ConnID != 0 || qe.droppedBefore != 0 {
		t.Fatalf("first %+v", qe)
	}
	s.push(Event{Kind: EventClosed, ConnID: 9})
	qe, _ := s.pop(nowForTest)
	if qe.ev.ConnID != 9 || qe.droppedBefore != 3 {
		t.Fatalf("second %+v, want conn 9 after 3 dropped", qe)
	}
	if _, ok := s.pop(nowForTest); ok {
		t.Fatal("queue not empty")
	}
}

func TestSubscribersEndWithTheirContext(t *testing.T) {
	e := newTestEngine(t, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	events := e.Subscribe(ctx, EventFilter{})
	cancel()
	for range events {
	}
}
