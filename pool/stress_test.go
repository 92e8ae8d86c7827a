package pool

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// stressDuration is how long TestStress runs: POOLD_STRESS_DURATION (a Go
// duration), 2s by default.
func stressDuration(t *testing.T) time.Duration {
	s := os.Getenv("POOLD_STRESS_DURATION")
	if s == "" {
		return 2 * time.Second
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		t.Fatalf("POOLD_STRESS_DURATION: %v", err)
	}
	return d
}

// stressUpstream answers by path: /ok, /echo (the request body back),
// /close (then drops the conn), /big (a body too large to drain), /slow.
func stressUpstream(t *testing.T) *upstream {
	big := strings.Repeat("b", 1<<20)
	return newUpstream(t, func(s *serverConn, r *http.Request) bool {
		switch r.URL.Path {
		case "/echo":
			b, err := io.ReadAll(r.Body)
			if err != nil {
				return false
			}
			return s.reply(200, "", string(b))
		case "/close":
			s.reply(200, "", "bye")
			return false
		case "/big":
			return s.reply(200, "", big)
		case "/slow":
			select {
			case <-time.After(time.Duration(rand.IntN(5)) * time.Millisecond):
			case <-s.u.done:
				return false
			}
		}
		return s.reply(200, "", "ok")
	})
}

func TestStress(t *testing.T) {
	const (
		workers = 16
		maxOps  = 50000 // per run, whatever the duration
	)
	u := stressUpstream(t)
	// The short sweep interval, idle timeouts and pauses below, like the
	// upstream's /slow delay and stressOp's early cancels, are load shapes
	// on the real clock: they make conns expire, get swept and get
	// canceled mid-flight while traffic runs. No check depends on when any
	// of them fires.
	e := newTestEngine(t, Options{SweepInterval: 5 * time.Millisecond}, func(p *Policy) {
		p.MaxRetries = ptr(uint32(3))
		p.IdleConnTimeout = ptr(50 * time.Millisecond)
	})
	deadline := time.Now().Add(stressDuration(t))
	var ops, canceled, serverClosed atomic.Int64
	fail := func(format string, args ...any) { t.Errorf(format, args...) }

	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) && ops.Add(1) <= maxOps {
				stressOp(t, e, u, &canceled, &serverClosed, fail)
			}
		}()
	}
	// One goroutine churns the policy and the pool while traffic runs.
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; time.Now().Before(deadline); i++ {
			switch i % 4 {
			case 0, 1:
				set := PolicySet{Default: policy(func(p *Policy) {
					p.MaxConnsPerHost = ptr(uint32(rand.IntN(8)))
					p.MaxIdleConnsPerHost = ptr(uint32(rand.IntN(5)))
					p.MaxRetries = ptr(uint32(3))
					p.IdleConnTimeout = ptr(time.Duration(1+rand.IntN(100)) * time.Millisecond)
					p.MaxRequestsPerConn = ptr(uint32(rand.IntN(10)))
					p.TCPKeepAlive.Idle = ptr(time.Duration(10+rand.IntN(50)) * time.Second)
				})}
				if err := e.SetPolicies(set); err != nil {
					fail("SetPolicies: %v", err)
				}
			case 2:
				e.CloseIdle("")
			case 3:
				e.Drain(u.host)
			}
			e.Hosts()
			e.Conns(ConnFilter{})
			select {
			case <-time.After(time.Millisecond):
			case <-t.Context().Done():
				return
			}
		}
	}()
	wg.Wait()

	n := min(ops.Load(), maxOps)
	h := hostStats(t, e, u)
	t.Logf("%d ops in %v: %d canceled, %d lost to server closes; counters %+v",
		n, stressDuration(t), canceled.Load(), serverClosed.Load(), h.Counters)
	// Every request finished, so nothing may be checked out or waiting.
	eventually(t, "the pool to settle", func() bool {
		h := hostStats(t, e, u)
		return h.Active == 0 && h.Dialing == 0 && h.Pending == 0
	})
	// A tenth of the requests make the server drop their conn, so a POST
	// (never retried) sometimes meets a conn whose FIN is still in flight;
	// anything near that tenth means dead conns are not being caught.
	if c := serverClosed.Load(); c*20 > n {
		t.Errorf("%d of %d requests lost to server closes", c, n)
	}
	if idle := hostStats(t, e, u).Idle; len(e.Conns(ConnFilter{})) != idle {
		t.Errorf("conns %d, idle %d", len(e.Conns(ConnFilter{})), idle)
	}
}

// stressOp runs one random operation and checks its outcome.
func stressOp(t *testing.T, e *Engine, u *upstream, canceled, serverClosed *atomic.Int64, fail func(string, ...any)) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var req *http.Request
	want := "ok"
	cancelSoon, closeEarly := false, false
	switch rand.IntN(10) {
	case 0, 1, 2:
		req = newRequest(t, ctx, "GET", u.URL+"/ok", "")
	case 3, 4:
		payload := fmt.Sprintf("payload-%d", rand.IntN(1e6))
		req, want = newRequest(t, ctx, "POST", u.URL+"/echo", payload), payload
	case 5:
		req, want = newRequest(t, ctx, "GET", u.URL+"/close", ""), "bye"
	case 6:
		req, closeEarly = newRequest(t, ctx, "GET", u.URL+"/big", ""), true
	case 7, 8:
		req, cancelSoon = newRequest(t, ctx, "GET", u.URL+"/slow", ""), true
	case 9:
		req = newRequest(t, ctx, "GET", u.URL+"/slow", "")
	}
	if cancelSoon {
		stop := time.AfterFunc(time.Duration(rand.IntN(3000))*time.Microsecond, cancel)
		defer stop.Stop()
	}
	resp, err := e.RoundTrip(req)
	if err == nil {
		var b []byte
		if closeEarly {
			b = make([]byte, 100)
			_, err = io.ReadFull(resp.Body, b)
			resp.Body.Close()
			if err == nil && string(b) != strings.Repeat("b", 100) {
				fail("big body starts %q", b)
			}
			return
		}
		b, err = io.ReadAll(resp.Body)
		resp.Body.Close()
		if err == nil {
			if resp.StatusCode != 200 || string(b) != want {
				fail("%s %s: %d %q, want %q", req.Method, req.URL.Path, resp.StatusCode, b, want)
			}
			return
		}
	}
	switch {
	case cancelSoon && errors.Is(err, context.Canceled):
		canceled.Add(1)
	case errors.Is(err, errServerClosed) || isConnReset(err):
		// A conn the server dropped just as it was reused; only
		// idempotent requests are retried.
		serverClosed.Add(1)
	default:
		fail("%s %s: %v", req.Method, req.URL.Path, err)
	}
}
