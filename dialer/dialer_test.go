package dialer

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestDialConnectsToALoopbackListener(t *testing.T) {
	tests := []struct {
		name    string
		network string
		host    string
	}{
		{"IPv4 literal", "tcp4", "127.0.0.1"},
		{"IPv6 literal", "tcp6", "::1"},
		{"IPv6 literal in brackets", "tcp6", "[::1]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ln := listen(t, tt.network, net.JoinHostPort(trimBrackets(tt.host), "0"))
			serve(t, ln, echo)
			res := &fakeResolver{}
			d := &Dialer{Resolver: res}

			c, err := d.Dial(testContext(t), Target{Host: tt.host, Port: portOf(ln.Addr())}, Options{DialTimeout: time.Second})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()

			roundTrip(t, c, "hello")
			if c.TCP == nil || c.TLS != nil {
				t.Errorf("TCP = %v, TLS = %v; want a socket and no TLS state", c.TCP, c.TLS)
			}
			if diff := cmp.Diff(addrs(trimBrackets(tt.host)), c.Resolved, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
				t.Errorf("Resolved (-want +got):\n%s", diff)
			}
			if q := res.questions(); len(q) != 0 {
				t.Errorf("an IP literal was resolved: %v", q)
			}
			if c.DNS != 0 {
				t.Errorf("DNS = %v for an IP literal, want 0", c.DNS)
			}
		})
	}
}

func TestDialToAClosedPortFailsAtConnect(t *testing.T) {
	port := closedPort(t)
	d := &Dialer{}

	_, err := d.Dial(testContext(t), Target{Host: "127.0.0.1", Port: port}, Options{DialTimeout: time.Second})

	de := dialError(t, err, StepConnect)
	if de.Host != "127.0.0.1:"+port || de.Addr != "127.0.0.1:"+port {
		t.Errorf("Host, Addr = %q, %q", de.Host, de.Addr)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("err = %v, want ECONNREFUSED in the chain", err)
	}
	if de.Timeout() || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("a refused connect reads as a timeout: %v", err)
	}
}

func TestDialThatRunsOutOfTimeIsATimeout(t *testing.T) {
	tests := []struct {
		name string
		// setup returns the dialer and target whose dial never finishes.
		setup func(t *testing.T) (*Dialer, Target)
		step  Step
	}{
		{
			name: "connect to a listener with a full backlog",
			setup: func(t *testing.T) (*Dialer, Target) {
				ln := blackhole(t, "tcp4", "127.0.0.1:0")
				return &Dialer{}, Target{Host: "127.0.0.1", Port: portOf(ln.Addr())}
			},
			step: StepConnect,
		},
		{
			name: "resolver that blocks until the deadline",
			setup: func(t *testing.T) (*Dialer, Target) {
				return &Dialer{Resolver: &fakeResolver{block: true}}, Target{Host: "example.test", Port: "80"}
			},
			step: StepResolve,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, target := tt.setup(t)

			_, err := d.Dial(testContext(t), target, Options{DialTimeout: 100 * time.Millisecond})

			de := dialError(t, err, tt.step)
			if !de.Timeout() {
				t.Errorf("Timeout() = false for %v", err)
			}
			if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("err = %v, want os.ErrDeadlineExceeded and context.DeadlineExceeded in the chain", err)
			}
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Timeout() {
				t.Errorf("err = %v is not a net.Error timeout", err)
			}
		})
	}
}

func TestDialCanceledByTheCallerIsNotATimeout(t *testing.T) {
	ctx, cancel := context.WithCancel(testContext(t))
	d := &Dialer{Resolver: &cancelingResolver{cancel: cancel}}

	_, err := d.Dial(ctx, Target{Host: "example.test", Port: "80"}, Options{DialTimeout: time.Second})

	de := dialError(t, err, StepResolve)
	if de.Timeout() || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("a cancellation reads as a timeout: %v", err)
	}
	if !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v, want context.Canceled in the chain", err)
	}
}

// cancelingResolver cancels the dial from inside the lookup, so the test
// knows the dial is in flight when the cancellation lands.
type cancelingResolver struct{ cancel context.CancelFunc }

func (r *cancelingResolver) LookupNetIP(ctx context.Context, _, _ string) ([]netip.Addr, error) {
	r.cancel()
	<-ctx.Done()
	return nil, ctx.Err()
}

func TestDialUsesTheResolverHook(t *testing.T) {
	ln := listen(t, "tcp4", "127.0.0.1:0")
	serve(t, ln, echo)
	res := &fakeResolver{hosts: map[string][]netip.Addr{
		// IPv4-mapped, as net.Resolver returns IPv4 answers.
		"example.test": addrs("::ffff:127.0.0.1"),
	}}
	d := &Dialer{Resolver: res}

	c, err := d.Dial(testContext(t), Target{Host: "example.test", Port: portOf(ln.Addr())}, Options{DialTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	roundTrip(t, c, "via the hook")
	if diff := cmp.Diff([]string{"ip example.test"}, res.questions()); diff != "" {
		t.Errorf("questions (-want +got):\n%s", diff)
	}
	if len(c.Resolved) != 1 || c.Resolved[0] != netip.MustParseAddr("127.0.0.1") {
		t.Errorf("Resolved = %v, want [127.0.0.1] unmapped", c.Resolved)
	}
}

func TestDialFailsAtResolveWhenTheNameDoesNotResolve(t *testing.T) {
	tests := []struct {
		name    string
		res     *fakeResolver
		wantErr error
	}{
		{"resolver error", &fakeResolver{err: errors.New("dns is down")}, nil},
		{"unknown name", &fakeResolver{}, nil},
		{"empty answer", &fakeResolver{hosts: map[string][]netip.Addr{"example.test": nil}}, errNoAddresses},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := &Dialer{Resolver: tt.res}

			_, err := d.Dial(testContext(t), Target{Host: "example.test", Port: "443"}, Options{DialTimeout: time.Second})

			de := dialError(t, err, StepResolve)
			if de.Host != "example.test:443" || de.Timeout() {
				t.Errorf("Host = %q, Timeout() = %v", de.Host, de.Timeout())
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("err = %v, want %v in the chain", err, tt.wantErr)
			}
		})
	}
}

func TestDialRejectsATargetWithoutHostOrPort(t *testing.T) {
	for _, target := range []Target{{Port: "80"}, {Host: "127.0.0.1"}, {Host: "127.0.0.1", Port: "no-such-service"}} {
		_, err := (&Dialer{}).Dial(testContext(t), target, Options{})
		dialError(t, err, StepResolve)
	}
}

func TestErrorMessageNamesTheStepHostAndAddress(t *testing.T) {
	tests := []struct {
		err  *Error
		want string
	}{
		{&Error{Step: StepConnect, Host: "example.test:443", Addr: "127.0.0.1:443", Err: syscall.ECONNREFUSED},
			"dialer: connect example.test:443 (127.0.0.1:443): connection refused"},
		{&Error{Step: StepResolve, Host: "example.test:443", Err: errNoAddresses},
			"dialer: resolve example.test:443: no addresses"},
		{&Error{Step: StepConnect, Host: "127.0.0.1:80", Addr: "127.0.0.1:80", Err: syscall.ECONNREFUSED},
			"dialer: connect 127.0.0.1:80: connection refused"},
	}
	for _, tt := range tests {
		if got := tt.err.Error(); got != tt.want {
			t.Errorf("Error() = %q, want %q", got, tt.want)
		}
		if !errors.Is(tt.err, tt.err.Err) {
			t.Errorf("%v does not unwrap to its cause", tt.err)
		}
	}
}
