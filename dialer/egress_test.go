package dialer

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// denyList is an EgressChecker that denies the listed IPs and records every
// question.
type denyList struct {
	deny    []netip.Addr
	wrapErr bool // deny with an error that forgets ErrEgressDenied

	mu    sync.Mutex
	asked []string
}

func (l *denyList) CheckEgress(host string, addr netip.AddrPort) error {
	l.mu.Lock()
	l.asked = append(l.asked, host+" "+addr.String())
	l.mu.Unlock()
	if !slices.Contains(l.deny, addr.Addr()) {
		return nil
	}
	if l.wrapErr {
		return fmt.Errorf("%s is off limits", addr.Addr())
	}
	return fmt.Errorf("%w: %s is off limits", ErrEgressDenied, addr.Addr())
}

func (l *denyList) questions() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.asked...)
}

func TestEgressDenyingEveryAddressFailsBeforeConnecting(t *testing.T) {
	tests := []struct {
		name    string
		wrapErr bool
	}{
		{"checker wraps ErrEgressDenied", false},
		{"checker forgets ErrEgressDenied", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ln := listen(t, "tcp4", "127.0.0.1:0")
			serve(t, ln, echo)
			port := portOf(ln.Addr())
			check := &denyList{deny: addrs("127.0.0.1"), wrapErr: tt.wrapErr}
			d := &Dialer{
				Resolver: &fakeResolver{hosts: map[string][]netip.Addr{"example.test": addrs("127.0.0.1")}},
				Egress:   check,
			}

			_, err := d.Dial(testContext(t), Target{Host: "example.test", Port: port}, Options{DialTimeout: time.Second})

			de := dialError(t, err, StepEgress)
			if !errors.Is(err, ErrEgressDenied) {
				t.Errorf("err = %v, want ErrEgressDenied in the chain", err)
			}
			if de.Addr != "127.0.0.1:"+port || de.Timeout() {
				t.Errorf("Addr = %q, Timeout() = %v", de.Addr, de.Timeout())
			}
			if want := []string{"example.test 127.0.0.1:" + port}; !slices.Equal(check.questions(), want) {
				t.Errorf("checker asked %v, want %v", check.questions(), want)
			}
		})
	}
}

func TestEgressSkipsADeniedAddressAndDialsTheNext(t *testing.T) {
	ln := listen(t, "tcp4", "127.0.0.1:0")
	serve(t, ln, echo)
	port := portOf(ln.Addr())
	check := &denyList{deny: addrs("::1")}
	d := &Dialer{
		Resolver: &fakeResolver{hosts: map[string][]netip.Addr{"example.test": addrs("::1", "127.0.0.1")}},
		Egress:   check,
	}

	c, err := d.Dial(testContext(t), Target{Host: "example.test", Port: port}, Options{DialTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	if got := c.RemoteAddr().(*net.TCPAddr).IP.String(); got != "127.0.0.1" {
		t.Errorf("connected to %s, want 127.0.0.1", got)
	}
	want := []string{"example.test [::1]:" + port, "example.test 127.0.0.1:" + port}
	if !slices.Equal(check.questions(), want) {
		t.Errorf("checker asked %v, want every resolved address %v", check.questions(), want)
	}
}

func TestEgressRulesDenyLoopbackByDefault(t *testing.T) {
	ln := listen(t, "tcp4", "127.0.0.1:0")
	rules, err := NewEgressRules(EgressConfig{})
	if err != nil {
		t.Fatal(err)
	}
	d := &Dialer{Egress: rules}

	_, err = d.Dial(testContext(t), Target{Host: "127.0.0.1", Port: portOf(ln.Addr())}, Options{DialTimeout: time.Second})

	dialError(t, err, StepEgress)
	want := "dialer: egress denied: 127.0.0.1 matches built-in deny loopback 127.0.0.0/8"
	if !errors.Is(err, ErrEgressDenied) || !strings.Contains(err.Error(), want) {
		t.Errorf("err = %v, want it to wrap %q", err, want)
	}
}

// A checker in the dial's context replaces the Dialer's own: each caller's
// rules decide its dials.
func TestWithEgressReplacesTheDialersChecker(t *testing.T) {
	ln := listen(t, "tcp4", "127.0.0.1:0")
	serve(t, ln, echo)
	allowLo, err := NewEgressRules(EgressConfig{Allow: []string{"127.0.0.1/32"}})
	if err != nil {
		t.Fatal(err)
	}
	builtIn, err := NewEgressRules(EgressConfig{})
	if err != nil {
		t.Fatal(err)
	}
	d := &Dialer{Egress: allowLo}
	target := Target{Host: "127.0.0.1", Port: portOf(ln.Addr())}
	c, err := d.Dial(testContext(t), target, Options{})
	if err != nil {
		t.Fatalf("the Dialer's own rules allow loopback: %v", err)
	}
	c.Close()
	if _, err := d.Dial(WithEgress(testContext(t), builtIn), target, Options{}); !errors.Is(err, ErrEgressDenied) {
		t.Fatalf("under rules that deny loopback: %v, want a denial", err)
	}
}
