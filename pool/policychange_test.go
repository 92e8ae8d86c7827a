package pool

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestAPolicyChangeDuringTrafficDropsNoRequestAndItsLimitsHoldAfterwards(t *testing.T) {
	u := newUpstream(t, echoPath())
	e := newTestEngine(t, Options{}, func(p *Policy) { p.MaxConnsPerHost = ptr(uint32(8)) })
	limits := []uint32{2, 16, 1, 0, 5, 4}

	var failures atomic.Int64
	var wg sync.WaitGroup
	var started sync.WaitGroup
	started.Add(50)
	for w := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			started.Done()
			for i := range 20 {
				path := fmt.Sprintf("/w%d/r%d", w, i)
				r, err := do(e, newRequest(t, context.Background(), "GET", u.URL+path, ""))
				if err != nil || r.body != "GET "+path+" 0" {
					failures.Add(1)
					t.Errorf("%s: %v %q", path, err, r.body)
				}
			}
		}()
	}
	started.Wait()
	for _, n := range limits {
		err := e.SetPolicies(PolicySet{Default: policy(func(p *Policy) {
			p.MaxConnsPerHost = ptr(n)
			p.IdleConnTimeout = ptr(time.Duration(n+1) * time.Second)
		})})
		if err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	if n := failures.Load(); n != 0 {
		t.Fatalf("%d of 1000 requests failed", n)
	}
	if h := hostStats(t, e, u); h.Counters.Requests != 1000 || h.Counters.Errors != 0 {
		t.Fatalf("stats %+v", h.Counters)
	}

	// The last limit, 4, holds: excess conns left as their requests ended.
	eventually(t, "at most 4 conns to remain", func() bool { return u.open.Load() <= 4 })
	if n := len(e.Conns(ConnFilter{Host: u.host})); n > 4 {
		t.Errorf("%d conns in the pool, limit 4", n)
	}
	u.resetMaxOpen()
	var burst sync.WaitGroup
	for range 40 {
		burst.Add(1)
		go func() {
			defer burst.Done()
			mustGet(t, e, u.URL+"/after")
		}()
	}
	burst.Wait()
	if m := u.maxOpen.Load(); m > 4 {
		t.Errorf("server saw %d conns at once after the change, limit 4", m)
	}
}

func TestRaisingTheConnLimitLetsParkedWaitersDial(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	u := newUpstream(t, stallPath("/slow", release))
	e := newTestEngine(t, Options{}, func(p *Policy) { p.MaxConnsPerHost = ptr(uint32(1)) })
	go do(e, newRequest(t, context.Background(), "GET", u.URL+"/slow", ""))
	eventually(t, "the only conn to be held", func() bool { return u.requests.Load() == 1 })

	done := make(chan error, 1)
	go func() {
		_, err := do(e, newRequest(t, context.Background(), "GET", u.URL+"/fast", ""))
		done <- err
	}()
	eventually(t, "the request to queue", func() bool { return hostStats(t, e, u).Pending == 1 })
	if err := e.SetPolicies(PolicySet{Default: policy(func(p *Policy) { p.MaxConnsPerHost = ptr(uint32(2)) })}); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestAShorterLifetimeRetiresIdleConnsNowAndActiveOnesAfterTheirResponse(t *testing.T) {
	release := make(chan struct{})
	u := newUpstream(t, stallPath("/slow", release))
	e := newTestEngine(t, Options{SweepInterval: time.Hour})
	slow := make(chan error, 1)
	go func() {
		_, err := do(e, newRequest(t, context.Background(), "GET", u.URL+"/slow", ""))
		slow <- err
	}()
	eventually(t, "an active conn", func() bool { return u.requests.Load() == 1 })
	mustGet(t, e, u.URL+"/idle") // a second conn, idle after this
	if h := hostStats(t, e, u); h.Active != 1 || h.Idle != 1 {
		t.Fatalf("before the change: %+v", h)
	}

	if err := e.SetPolicies(PolicySet{Default: policy(func(p *Policy) { p.MaxConnLifetime = ptr(time.Nanosecond) })}); err != nil {
		t.Fatal(err)
	}
	h := hostStats(t, e, u)
	if h.Idle != 0 || h.Active != 1 || h.Counters.Closed[CloseMaxLifetime] != 1 {
		t.Errorf("after the change: %+v", h)
	}
	if cs := e.Conns(ConnFilter{Host: u.host}); len(cs) != 1 || cs[0].State != ConnClosing {
		t.Errorf("conns %+v; want one retiring", cs)
	}
	close(release)
	if err := <-slow; err != nil {
		t.Fatalf("in-flight request failed: %v", err)
	}
	if n := hostStats(t, e, u).Counters.Closed[CloseMaxLifetime]; n != 2 {
		t.Errorf("closed[max_lifetime] = %d, want 2", n)
	}
}

func TestAnInvalidPolicySetIsRefusedAndChangesNothing(t *testing.T) {
	e := newTestEngine(t, Options{})
	before := e.Policies()
	err := e.SetPolicies(PolicySet{Default: policy(func(p *Policy) { p.DialTimeout = ptr(-time.Second) })})
	var pe *PolicyError
	if !errors.As(err, &pe) || pe.Field != "dial_timeout" {
		t.Fatalf("error %v", err)
	}
	if diff := cmp.Diff(before, e.Policies()); diff != "" {
		t.Errorf("policies changed (-before +after):\n%s", diff)
	}
}

func TestPoliciesAreCopiedInAndOut(t *testing.T) {
	e := newTestEngine(t, Options{})
	d := 7 * time.Second
	set := PolicySet{Default: Policy{DialTimeout: &d}, Hosts: map[string]Policy{"x.test": {}}}
	if err := e.SetPolicies(set); err != nil {
		t.Fatal(err)
	}
	d = time.Hour
	set.Hosts["y.test"] = Policy{}
	got := e.Policies()
	if *got.Default.DialTimeout != 7*time.Second || len(got.Hosts) != 1 {
		t.Errorf("the engine's policy changed with the caller's copy: %+v", got)
	}
	*got.Default.DialTimeout = time.Minute
	if eff := e.EffectivePolicy("http", "a.test:80"); eff.DialTimeout != 7*time.Second {
		t.Errorf("effective dial timeout %v", eff.DialTimeout)
	}
}

func TestHostOverridesApplyToTheirPoolOnly(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	a := newUpstream(t, stallPath("/slow", release))
	b := newUpstream(t, stallPath("/slow", release))
	e := newTestEngine(t, Options{})
	err := e.SetPolicies(PolicySet{Hosts: map[string]Policy{
		a.host: policy(func(p *Policy) { p.ResponseHeaderTimeout = ptr(time.Second) }),
	}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := do(e, newRequest(t, context.Background(), "GET", a.URL+"/slow", "")); !isTimeout(err) {
		t.Errorf("a: %v, want a timeout", err)
	}
	// b's only bound is the caller's deadline, later than a's header
	// timeout would fire: were a's override applied to b, b would fail
	// with a's timeout first. The deadline also covers b's dial and write,
	// which a second's margin leaves room for on a loaded machine.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err = do(e, newRequest(t, ctx, "GET", b.URL+"/slow", ""))
	if pe := poolError(t, err, PhaseResponseHeader); !errors.Is(pe, context.DeadlineExceeded) {
		t.Errorf("b: %v, want the caller's deadline", err)
	}
	if ha, hb := hostStats(t, e, a), hostStats(t, e, b); ha.Policy != a.host || hb.Policy != "default" {
		t.Errorf("policy sources %q, %q", ha.Policy, hb.Policy)
	}
}
