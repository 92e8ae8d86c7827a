package dialer

import (
	"net"
	"syscall"
	"testing"
	"time"
)

// keepAliveOpts is what the kernel holds for a socket's keep-alive.
type keepAliveOpts struct {
	on, idle, interval, count int // idle and interval in seconds
}

func readKeepAlive(t *testing.T, c *net.TCPConn) keepAliveOpts {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var got keepAliveOpts
	var errs [4]error
	err = rc.Control(func(fd uintptr) {
		got.on, errs[0] = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_KEEPALIVE)
		got.idle, errs[1] = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE)
		got.interval, errs[2] = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_KEEPINTVL)
		got.count, errs[3] = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_KEEPCNT)
	})
	for _, e := range append(errs[:], err) {
		if e != nil {
			t.Fatalf("getsockopt: %v", e)
		}
	}
	return got
}

func TestKeepAliveIsSetAtConnectAndRetunedLive(t *testing.T) {
	ln := listen(t, "tcp4", "127.0.0.1:0")
	steps := []struct {
		name string
		cfg  net.KeepAliveConfig
		want keepAliveOpts
	}{
		{"at connect", net.KeepAliveConfig{Enable: true, Idle: 17 * time.Second, Interval: 7 * time.Second, Count: 4}, keepAliveOpts{1, 17, 7, 4}},
		{"retuned", net.KeepAliveConfig{Enable: true, Idle: 41 * time.Second, Interval: 13 * time.Second, Count: 6}, keepAliveOpts{1, 41, 13, 6}},
		{"turned off", net.KeepAliveConfig{Enable: false, Idle: 41 * time.Second, Interval: 13 * time.Second, Count: 6}, keepAliveOpts{0, 41, 13, 6}},
	}

	c, err := (&Dialer{}).Dial(testContext(t), Target{Host: "127.0.0.1", Port: portOf(ln.Addr())}, Options{KeepAlive: steps[0].cfg})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	for i, s := range steps {
		if i > 0 {
			if err := SetKeepAlive(c.TCP, s.cfg); err != nil {
				t.Fatalf("%s: %v", s.name, err)
			}
		}
		if got := readKeepAlive(t, c.TCP); got != s.want {
			t.Errorf("%s: socket has %+v, want %+v", s.name, got, s.want)
		}
	}
}

func TestZeroKeepAliveConfigDialsWithKeepAliveOff(t *testing.T) {
	ln := listen(t, "tcp4", "127.0.0.1:0")

	c, err := (&Dialer{}).Dial(testContext(t), Target{Host: "127.0.0.1", Port: portOf(ln.Addr())}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	if got := readKeepAlive(t, c.TCP); got.on != 0 {
		t.Errorf("SO_KEEPALIVE = %d, want off for the zero config", got.on)
	}
}
