//go:build linux

package pool

import (
	"context"
	"strings"
	"syscall"
	"testing"
	"time"
)

// keepAliveOf reads TCP keep-alive settings back from a pooled socket.
func keepAliveOf(t *testing.T, c *conn) (on bool, idle, intvl, cnt int) {
	t.Helper()
	rc, err := c.tcp.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var errs []error
	get := func(fd uintptr, level, opt int) int {
		v, err := syscall.GetsockoptInt(int(fd), level, opt)
		errs = append(errs, err)
		return v
	}
	err = rc.Control(func(fd uintptr) {
		on = get(fd, syscall.SOL_SOCKET, syscall.SO_KEEPALIVE) != 0
		idle = get(fd, syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE)
		intvl = get(fd, syscall.IPPROTO_TCP, syscall.TCP_KEEPINTVL)
		cnt = get(fd, syscall.IPPROTO_TCP, syscall.TCP_KEEPCNT)
	})
	for _, e := range append(errs, err) {
		if e != nil {
			t.Fatal(e)
		}
	}
	return on, idle, intvl, cnt
}

// pooledConns returns the pool's conns to u, straight from its lists.
func pooledConns(t *testing.T, e *Engine, u *upstream) []*conn {
	t.Helper()
	var out []*conn
	for _, hp := range e.hostList() {
		if hp.matches(u.host) {
			hp.mu.Lock()
			for c := range hp.conns {
				out = append(out, c)
			}
			hp.mu.Unlock()
		}
	}
	return out
}

func TestKeepAliveIsRetunedOnOpenSocketsWhenThePolicyChanges(t *testing.T) {
	release := make(chan struct{})
	u := newUpstream(t, stallPath("/slow", release))
	e := newTestEngine(t, Options{}, func(p *Policy) {
		p.TCPKeepAlive = TCPKeepAlive{Enabled: ptr(true), Idle: ptr(30 * time.Second), Interval: ptr(10 * time.Second), Count: ptr(uint32(3))}
	})
	slow := make(chan error, 1)
	go func() {
		_, err := do(e, newRequest(t, context.Background(), "GET", u.URL+"/slow", ""))
		slow <- err
	}()
	eventually(t, "an active conn", func() bool { return u.requests.Load() == 1 })
	mustGet(t, e, u.URL+"/idle")
	conns := pooledConns(t, e, u)
	if len(conns) != 2 {
		t.Fatalf("%d conns, want one active and one idle", len(conns))
	}
	for _, c := range conns {
		if on, idle, intvl, cnt := keepAliveOf(t, c); !on || idle != 30 || intvl != 10 || cnt != 3 {
			t.Fatalf("conn %d at dial: on=%v idle=%d interval=%d count=%d", c.id, on, idle, intvl, cnt)
		}
	}

	events := e.Subscribe(t.Context(), EventFilter{Kinds: []EventKind{EventPolicyChanged}})
	set := PolicySet{Default: policy(func(p *Policy) {
		p.TCPKeepAlive = TCPKeepAlive{Idle: ptr(77 * time.Second), Interval: ptr(13 * time.Second), Count: ptr(uint32(5))}
	})}
	if err := e.SetPolicies(set); err != nil {
		t.Fatal(err)
	}
	for _, c := range conns {
		if on, idle, intvl, cnt := keepAliveOf(t, c); !on || idle != 77 || intvl != 13 || cnt != 5 {
			t.Errorf("conn %d after the change: on=%v idle=%d interval=%d count=%d", c.id, on, idle, intvl, cnt)
		}
	}
	if ev := <-events; !strings.Contains(ev.Detail, "retuned=2") {
		t.Errorf("first change: %q, want 2 sockets retuned", ev.Detail)
	}
	// The same keep-alive again touches no socket.
	if err := e.SetPolicies(set); err != nil {
		t.Fatal(err)
	}
	if ev := <-events; !strings.Contains(ev.Detail, "retuned=0") {
		t.Errorf("unchanged keep-alive: %q, want no socket retuned", ev.Detail)
	}
	close(release)
	if err := <-slow; err != nil {
		t.Fatal(err)
	}
}
