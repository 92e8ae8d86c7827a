package pool

import (
	"context"
)

// wantConn is one request's claim on a connection. The request may have a
// dial of its own in flight and also wait in the host's queue; whichever
// comes first, a dial or a conn another request returns, is delivered,
// and the loser goes back to the pool ("late binding"). Every field but
// ready and ctx is guarded by the host pool's mu.
type wantConn struct {
	ctx   context.Context // the caller's, for the values a dial may use
	ready chan struct{}   // closed once c or err is set

	done    bool  // delivered or abandoned; set once
	c       *conn // the delivered conn, if any
	err     error // the delivered error, if any
	dialing bool  // a dial for this want is in flight

	queued     bool
	prev, next *wantConn
}

func newWantConn(ctx context.Context) *wantConn {
	return &wantConn{ctx: ctx, ready: make(chan struct{})}
}

// wantQueue is a FIFO of waiting requests with O(1) removal, so a request
// whose context ends leaves at once rather than when it reaches the front.
type wantQueue struct {
	head, tail *wantConn
	n          int
}

func (q *wantQueue) pushBack(w *wantConn) {
	if w.queued {
		panic("pool: internal error: want queued twice")
	}
	w.queued = true
	w.prev = q.tail
	if q.tail != nil {
		q.tail.next = w
	} else {
		q.head = w
	}
	q.tail = w
	q.n++
}

func (q *wantQueue) remove(w *wantConn) {
	if !w.queued {
		return
	}
	if w.prev != nil {
		w.prev.next = w.next
	} else {
		q.head = w.next
	}
	if w.next != nil {
		w.next.prev = w.prev
	} else {
		q.tail = w.prev
	}
	w.prev, w.next, w.queued = nil, nil, false
	q.n--
}

// enqueueLocked adds w to the queue, counting it against
// MaxPendingRequests unless it has a dial of its own.
func (hp *hostPool) enqueueLocked(w *wantConn) {
	hp.waiters.pushBack(w)
	if !w.dialing {
		hp.waitingNoDial++
	}
}

func (hp *hostPool) dequeueLocked(w *wantConn) {
	if !w.queued {
		return
	}
	hp.waiters.remove(w)
	if !w.dialing {
		hp.waitingNoDial--
	}
}

// setDialingLocked records whether w has a dial in flight, keeping the
// count of queued requests without one in step.
func (hp *hostPool) setDialingLocked(w *wantConn, dialing bool) {
	if w.dialing == dialing {
		return
	}
	if w.queued {
		if dialing {
			hp.waitingNoDial--
		} else {
			hp.waitingNoDial++
		}
	}
	w.dialing = dialing
}

// deliverLocked hands w a conn or an error, reporting false when w was
// already served or gave up.
func (hp *hostPool) deliverLocked(w *wantConn, c *conn, err error) bool {
	if w.done {
		return false
	}
	if (c == nil) == (err == nil) {
		panic("pool: internal error: deliver needs exactly one of conn and error")
	}
	hp.dequeueLocked(w)
	w.done = true
	w.c, w.err = c, err
	close(w.ready)
	return true
}

// firstWaiterLocked returns the oldest waiting request, dialing or not.
func (hp *hostPool) firstWaiterLocked() *wantConn {
	return hp.waiters.head
}

// firstWaiterWithoutDialLocked returns the oldest waiting request that has
// no dial of its own in flight.
func (hp *hostPool) firstWaiterWithoutDialLocked() *wantConn {
	if hp.waitingNoDial == 0 {
		return nil
	}
	for w := hp.waiters.head; w != nil; w = w.next {
		if !w.dialing {
			return w
		}
	}
	panic("pool: internal error: waitingNoDial out of step with the queue")
}
