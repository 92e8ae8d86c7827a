package dialer_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/poold/poold/dialer"
)

func ExampleDialer_Dial() {
	// A local listener stands in for an upstream; the kernel completes the
	// TCP handshake without an Accept.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer ln.Close()
	_, port, _ := net.SplitHostPort(ln.Addr().String())

	d := &dialer.Dialer{}
	c, err := d.Dial(context.Background(), dialer.Target{Host: "127.0.0.1", Port: port}, dialer.Options{
		DialTimeout: 5 * time.Second,
		KeepAlive:   net.KeepAliveConfig{Enable: true, Idle: 30 * time.Second, Interval: 10 * time.Second, Count: 3},
	})
	if err != nil {
		var de *dialer.Error
		if errors.As(err, &de) {
			fmt.Println("failed at", de.Step, "timeout:", de.Timeout())
		}
		return
	}
	defer c.Close()
	fmt.Println("resolved:", c.Resolved, "TLS:", c.TLS != nil)
	// Output: resolved: [127.0.0.1] TLS: false
}

func ExampleNewEgressRules() {
	rules, err := dialer.NewEgressRules(dialer.EgressConfig{
		Allow:     []string{"127.0.0.1/32"}, // a local upstream
		Deny:      []string{"10.99.0.0/16", "*.corp.example"},
		SelfAddrs: []netip.AddrPort{netip.MustParseAddrPort("[::]:7070")},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, a := range []string{"127.0.0.1:8080", "127.0.0.1:7070", "[::ffff:a9fe:a9fe]:80", "10.99.1.1:443", "10.1.1.1:443"} {
		ap := netip.MustParseAddrPort(a)
		fmt.Printf("%-22s %-14s %v\n", a, dialer.Classify(ap.Addr()), rules.CheckEgress("", ap))
	}
	// Output:
	// 127.0.0.1:8080         loopback       <nil>
	// 127.0.0.1:7070         loopback       dialer: egress denied: 127.0.0.1:7070 is poold's own listening address [::]:7070
	// [::ffff:a9fe:a9fe]:80  cloud-metadata dialer: egress denied: 169.254.169.254 matches built-in deny cloud-metadata 169.254.169.254/32
	// 10.99.1.1:443          private        dialer: egress denied: 10.99.1.1 matches deny 10.99.0.0/16
	// 10.1.1.1:443           private        <nil>
}
