package pool

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// EventKind is what happened.
type EventKind int

// The kinds of events.
const (
	EventDialed        EventKind = iota + 1 // a connection was established
	EventDialFailed                         // a dial failed; Detail has the error
	EventReused                             // an idle connection was taken for a request
	EventIdle                               // a connection went back to the idle list
	EventClosed                             // a connection was closed; Reason says why
	EventQueued                             // a request started waiting for a connection
	EventQueueOverflow                      // a request was refused with ErrQueueFull
	EventPolicyChanged                      // SetPolicies applied a new policy set
	EventsDropped                           // Dropped events did not fit the subscriber's buffer
	EventGoAway                             // an HTTP/2 conn received GOAWAY; Detail has the code
	EventPingFailed                         // an HTTP/2 PING went unanswered; the conn is closed
	EventRefusedStream                      // the peer refused a stream; the request is retried if it can be
)

// String returns the lower_snake name, as used in the API.
func (k EventKind) String() string {
	switch k {
	case EventDialed:
		return "dialed"
	case EventDialFailed:
		return "dial_failed"
	case EventReused:
		return "reused"
	case EventIdle:
		return "idle"
	case EventClosed:
		return "closed"
	case EventQueued:
		return "queued"
	case EventQueueOverflow:
		return "queue_overflow"
	case EventPolicyChanged:
		return "policy_changed"
	case EventsDropped:
		return "events_dropped"
	case EventGoAway:
		return "goaway"
	case EventPingFailed:
		return "ping_failed"
	case EventRefusedStream:
		return "refused_stream"
	}
	return "unknown"
}

// Event is one thing that happened in the engine.
type Event struct {
	Time    time.Time
	Kind    EventKind
	Host    string // host pool key; "" for engine-wide events
	ConnID  uint64
	Reason  string // the CloseReason of EventClosed
	Detail  string
	Dropped uint64 // for EventsDropped: how many events were lost
}

// EventFilter selects events for a subscriber.
type EventFilter struct {
	Host  string      // matched like Engine.Host's key; "" = all. Engine-wide events always pass.
	Kinds []EventKind // empty = all kinds. EventsDropped is always delivered.
}

// eventHub fans events out to subscribers. Publishing never blocks: each
// subscriber has a bounded queue, and what does not fit is counted.
type eventHub struct {
	subs atomic.Pointer[[]*subscriber] // copy-on-write, so publishing takes no hub lock
	mu   sync.Mutex                    // serialises changes to subs
}

// subscriber is one Subscribe call. Its goroutine moves events from the
// queue to out and ends when the subscriber's context or the engine ends.
type subscriber struct {
	filter EventFilter
	limit  int
	notify chan struct{} // capacity 1: "the queue changed"
	out    chan Event

	mu      sync.Mutex // guards queue and dropped
	queue   []queuedEvent
	dropped uint64 // events lost since the last one queued
}

// queuedEvent remembers how many events were lost just before it, so the
// subscriber learns of the gap at the point where it happened.
type queuedEvent struct {
	ev            Event
	droppedBefore uint64
}

func (h *eventHub) add(s *subscriber) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var next []*subscriber
	if cur := h.subs.Load(); cur != nil {
		next = slices.Clone(*cur)
	}
	next = append(next, s)
	h.subs.Store(&next)
}

func (h *eventHub) remove(s *subscriber) {
	h.mu.Lock()
	defer h.mu.Unlock()
	cur := h.subs.Load()
	if cur == nil {
		return
	}
	next := slices.DeleteFunc(slices.Clone(*cur), func(x *subscriber) bool { return x == s })
	h.subs.Store(&next)
}

// publish queues ev for every subscriber that wants it. hp is the pool the
// event is about (nil for engine-wide events), used for host filters.
func (h *eventHub) publish(hp *hostPool, ev Event) {
	subs := h.subs.Load()
	if subs == nil {
		return
	}
	for _, s := range *subs {
		if s.wants(hp, ev.Kind) {
			s.push(ev)
		}
	}
}

func (h *eventHub) active() bool {
	subs := h.subs.Load()
	return subs != nil && len(*subs) > 0
}

func (s *subscriber) wants(hp *hostPool, k EventKind) bool {
	if len(s.filter.Kinds) > 0 && !slices.Contains(s.filter.Kinds, k) {
		return false
	}
	return s.filter.Host == "" || hp == nil || hp.matches(s.filter.Host)
}

func (s *subscriber) push(ev Event) {
	s.mu.Lock()
	if len(s.queue) >= s.limit {
		s.dropped++
	} else {
		s.queue = append(s.queue, queuedEvent{ev: ev, droppedBefore: s.dropped})
		s.dropped = 0
	}
	s.mu.Unlock()
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

// pop takes the next thing to deliver: a queued event, or a trailing
// EventsDropped when events were lost after the last queued one.
func (s *subscriber) pop(now func() time.Time) (qe queuedEvent, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.queue) > 0 {
		qe = s.queue[0]
		s.queue[0] = queuedEvent{}
		s.queue = s.queue[1:]
		if len(s.queue) == 0 {
			s.queue = nil // let the backing array go
		}
		return qe, true
	}
	if s.dropped > 0 {
		qe = queuedEvent{ev: Event{Time: now(), Kind: EventsDropped, Dropped: s.dropped}}
		s.dropped = 0
		return qe, true
	}
	return queuedEvent{}, false
}

// run delivers events until ctx or the engine ends; it owns s.out and
// closes it.
func (s *subscriber) run(ctx, engineCtx context.Context, now func() time.Time) {
	defer close(s.out)
	send := func(ev Event) bool {
		select {
		case s.out <- ev:
			return true
		case <-ctx.Done():
		case <-engineCtx.Done():
		}
		return false
	}
	for {
		qe, ok := s.pop(now)
		if !ok {
			select {
			case <-s.notify:
				continue
			case <-ctx.Done():
				return
			case <-engineCtx.Done():
				return
			}
		}
		if qe.droppedBefore > 0 && !send(Event{Time: qe.ev.Time, Kind: EventsDropped, Dropped: qe.droppedBefore}) {
			return
		}
		if !send(qe.ev) {
			return
		}
	}
}

// Subscribe streams engine events matching f until ctx ends or the engine
// closes; then the channel is closed. The engine never waits for a slow
// subscriber: beyond Options.EventBuffer queued events, events are counted
// and reported as one EventsDropped before the next delivered event.
func (e *Engine) Subscribe(ctx context.Context, f EventFilter) <-chan Event {
	s := &subscriber{
		filter: EventFilter{Host: f.Host, Kinds: slices.Clone(f.Kinds)},
		limit:  e.eventBuffer,
		notify: make(chan struct{}, 1),
		out:    make(chan Event),
	}
	e.mu.RLock()
	defer e.mu.RUnlock()
	if e.closed {
		close(s.out)
		return s.out
	}
	e.events.add(s)
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		defer e.events.remove(s)
		s.run(ctx, e.ctx, e.now)
	}()
	return s.out
}

// emit stamps and publishes an event; cheap when nobody listens.
func (e *Engine) emit(hp *hostPool, kind EventKind, connID uint64, reason CloseReason, detail string) {
	if !e.events.active() {
		return
	}
	ev := Event{Time: e.now(), Kind: kind, ConnID: connID, Reason: string(reason), Detail: detail}
	if hp != nil {
		ev.Host = hp.key
	}
	e.events.publish(hp, ev)
}
