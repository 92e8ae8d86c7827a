package dialer

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestHappyEyeballsMovesOnWhenTheFirstAddressIsRefused(t *testing.T) {
	ln := listen(t, "tcp4", "127.0.0.1:0")
	serve(t, ln, echo)
	// Nothing listens on ::1 at this port (or there is no ::1): the first
	// attempt fails at once and the second must start without waiting. The
	// attempt delay outlasts the dial timeout, so waiting for it would fail.
	d := &Dialer{
		Resolver: &fakeResolver{hosts: map[string][]netip.Addr{
			"example.test": addrs("::1", "127.0.0.1"),
		}},
		attemptDelay: time.Hour,
	}

	c, err := d.Dial(testContext(t), Target{Host: "example.test", Port: portOf(ln.Addr())}, Options{DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	roundTrip(t, c, "second address")
	if got := c.RemoteAddr().(*net.TCPAddr).IP.String(); got != "127.0.0.1" {
		t.Errorf("connected to %s, want 127.0.0.1", got)
	}
}

func TestHappyEyeballsStartsTheNextAttemptAfterTheDelay(t *testing.T) {
	// ::1 never answers; 127.0.0.1 on the same port does.
	silent := blackhole(t, "tcp6", "[::1]:0")
	port := portOf(silent.Addr())
	ln, err := net.Listen("tcp4", "127.0.0.1:"+port)
	if err != nil {
		t.Skipf("127.0.0.1:%s is taken: %v", port, err)
	}
	t.Cleanup(func() { ln.Close() })
	serve(t, ln, echo)
	d := &Dialer{Resolver: &fakeResolver{hosts: map[string][]netip.Addr{
		"example.test": addrs("::1", "127.0.0.1"),
	}}}

	c, err := d.Dial(testContext(t), Target{Host: "example.test", Port: port}, Options{DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	roundTrip(t, c, "after the delay")
	if got := c.RemoteAddr().(*net.TCPAddr).IP.String(); got != "127.0.0.1" {
		t.Errorf("connected to %s, want 127.0.0.1", got)
	}
	if c.Connect < defaultAttemptDelay {
		t.Errorf("Connect = %v, want at least the %v attempt delay", c.Connect, defaultAttemptDelay)
	}
}

func TestHappyEyeballsReportsTheFirstFailureWhenEveryAddressFails(t *testing.T) {
	port := closedPort(t)
	d := &Dialer{Resolver: &fakeResolver{hosts: map[string][]netip.Addr{
		"example.test": addrs("127.0.0.1", "::1"),
	}}}

	_, err := d.Dial(testContext(t), Target{Host: "example.test", Port: port}, Options{DialTimeout: 5 * time.Second})

	de := dialError(t, err, StepConnect)
	if de.Addr != "127.0.0.1:"+port {
		t.Errorf("Addr = %q, want the first address tried", de.Addr)
	}
}

func TestInterleaveAlternatesFamiliesStartingWithTheFirstAnswer(t *testing.T) {
	tests := []struct {
		name string
		in   []string
		want []string
	}{
		{"empty", nil, nil},
		{"one", []string{"::1"}, []string{"::1"}},
		{"IPv6 first", []string{"2001:db8::1", "2001:db8::2", "192.0.2.1", "192.0.2.2"},
			[]string{"2001:db8::1", "192.0.2.1", "2001:db8::2", "192.0.2.2"}},
		{"IPv4 first", []string{"192.0.2.1", "2001:db8::1", "2001:db8::2", "2001:db8::3"},
			[]string{"192.0.2.1", "2001:db8::1", "2001:db8::2", "2001:db8::3"}},
		{"one family keeps its order", []string{"192.0.2.3", "192.0.2.1", "192.0.2.2"},
			[]string{"192.0.2.3", "192.0.2.1", "192.0.2.2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			for _, a := range interleave(addrs(tt.in...)) {
				got = append(got, a.String())
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("interleave (-want +got):\n%s", diff)
			}
		})
	}
}
