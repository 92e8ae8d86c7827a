package pool

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// lateHeadClient answers a stream only once its Cancel is closed: a head
// that comes in just as the header timeout runs out.
type lateHeadClient struct{ closed atomic.Bool }

func (l *lateHeadClient) reserve() bool { return true }

func (l *lateHeadClient) roundTrip(r *http.Request) (*http.Response, error) {
	<-r.Cancel
	body := &closeRecorder{Reader: strings.NewReader("late"), closed: &l.closed}
	return &http.Response{StatusCode: 200, Header: http.Header{}, Body: body, Request: r}, nil
}

func (l *lateHeadClient) state() h2State                 { return h2State{} }
func (l *lateHeadClient) ping(context.Context) error     { return nil }
func (l *lateHeadClient) shutdown(context.Context) error { return nil }

type closeRecorder struct {
	io.Reader
	closed *atomic.Bool
}

func (c *closeRecorder) Close() error { c.closed.Store(true); return nil }

// A head that comes in as the header timeout runs out cannot be read: the
// timeout has begun to cancel its stream. The attempt fails as a header
// timeout, not later as a body cut short by a cancelled request.
func TestH2HeadAsTheHeaderTimeoutRunsOutFailsAsTheTimeout(t *testing.T) {
	eff := Effective{ResponseHeaderTimeout: time.Millisecond}
	e := &Engine{now: time.Now}
	hp := newHostPool(e, "https://h2.test", "https", "h2.test", "443", nil, nil, eff)
	// Closing: the stream given back needs nothing more of the pool.
	c := &conn{id: 1, hp: hp, state: ConnClosing, streams: 1}
	cl := &lateHeadClient{}
	h := &h2conn{c: c, cl: cl}
	req, err := http.NewRequestWithContext(t.Context(), "GET", "https://h2.test/", nil)
	if err != nil {
		t.Fatal(err)
	}
	x := newExchange(hp, req, req.Context(), eff, func() {}, time.Now())
	x.c = c

	resp, _, err := h.roundTrip(x)
	var pe *Error
	if resp != nil || !errors.As(err, &pe) || pe.Phase != PhaseResponseHeader || !pe.Timeout() {
		t.Fatalf("roundTrip = %v, %v; want a response header timeout", resp, err)
	}
	if !cl.closed.Load() {
		t.Error("the late response's body was left open")
	}
	if c.streams != 0 {
		t.Errorf("%d streams held after the attempt, want 0", c.streams)
	}
}
