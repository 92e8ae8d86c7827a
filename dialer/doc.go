// Package dialer turns an address into a ready connection: it resolves the
// name, checks every resolved IP against an egress policy, connects with
// happy eyeballs under a dial timeout, sets TCP keep-alive on the new
// socket, tunnels through an HTTP proxy with CONNECT, and completes the TLS
// handshake with ALPN under its own timeout.
//
// It knows nothing about pools: the pool decides when to dial and with which
// Options, and keeps the facts a Conn reports (addresses, step timings, TLS
// state, the raw socket for retuning keep-alive with SetKeepAlive).
//
// A failure is an *Error whose Step says where the dial stopped; its
// Timeout method, errors.Is(err, os.ErrDeadlineExceeded) and
// errors.Is(err, ErrEgressDenied) answer the questions callers map to
// status codes.
//
// Usage:
//
//	tlsConf, err := dialer.NewTLSConfig("")
//	if err != nil {
//		return err
//	}
//	rules, err := dialer.NewEgressRules(dialer.EgressConfig{})
//	if err != nil {
//		return err
//	}
//	d := &dialer.Dialer{TLSConfig: tlsConf, Egress: rules}
//	c, err := d.Dial(ctx, dialer.Target{
//		Host:       "api.example.com",
//		Port:       "443",
//		TLS:        true,
//		NextProtos: []string{"http/1.1"},
//	}, dialer.Options{
//		DialTimeout:         5 * time.Second,
//		TLSHandshakeTimeout: 10 * time.Second,
//		KeepAlive:           net.KeepAliveConfig{Enable: true, Idle: 30 * time.Second, Interval: 10 * time.Second, Count: 3},
//	})
//	if err != nil {
//		return err // an *dialer.Error
//	}
//	defer c.Close()
//	log.Printf("connected to %v in %v (TLS %v)", c.RemoteAddr(), c.Connect, c.TLSHandshake)
package dialer
