// Package pool is poold's transport engine: an http.RoundTripper that keeps
// persistent upstream connections warm, one pool per scheme, host, port and
// proxy, under a policy set that can be changed while requests flow.
//
// Compared with net/http's Transport, the engine is built to be watched and
// steered from outside:
//
//   - Every connection has an id, a state and a history (Conns), every pool
//     has live counters kept as things happen (Hosts, Host), and Subscribe
//     streams what happens without ever slowing the engine down.
//   - SetPolicies swaps the policy atomically; each pool applies it at once
//     where it can (trims idle conns, wakes waiters when limits grow,
//     retires conns past a shorter lifetime, retunes TCP keep-alive on open
//     sockets) and never drops a request in flight.
//   - An idle connection costs a socket and nothing else: no goroutine, no
//     buffers, no timer. One reaper per engine expires idle conns, and a
//     non-blocking peek at checkout catches the ones the server closed.
//   - Waiting is bounded (MaxPendingRequests, the caller's deadline) and a
//     request that gives up leaves the queue at once.
//   - Errors name the phase that failed (*Error), so callers can tell a
//     full queue from a dial failure from a slow upstream.
//   - A request costs a handful of allocations. The engine writes requests
//     itself, with the bytes (*http.Request).Write would send, and parses
//     response heads in the plain form itself, giving exactly what
//     http.ReadResponse gives; heads in any other form (1xx, HTTP/1.0,
//     folded or non-ASCII fields, a body read until close) go to
//     http.ReadResponse. One difference from net/http: a request body of
//     unknown length is sent chunked whatever the method, where net/http
//     first reads a byte, with a timer, to guess whether a GET's body is
//     really empty.
//
// A request that may have reached the server is retried only when it is
// idempotent and failed on a reused connection before any response byte.
// A request the server did not process (an HTTP/2 stream it refused or
// that was above its GOAWAY's last stream id) goes again on another
// connection whatever its method, when its body can be sent again.
//
// HTTP/2: over TLS the engine offers h2 and http/1.1 by ALPN (the policy's
// Protocols field can ask for one of them only, or h2c with prior
// knowledge on plaintext), and one host pool may hold conns of both. An
// HTTP/2 conn runs golang.org/x/net/http2's client conn for framing, flow
// control and HPACK; which request takes a stream, when to dial another
// conn and when to retire one stay the pool's decisions, as for HTTP/1.1:
//
//   - A request takes a stream on the busiest conn with room (the peer's
//     SETTINGS_MAX_CONCURRENT_STREAMS, capped by MaxConcurrentStreams);
//     with none, it dials if MaxConnsPerHost allows, unless
//     StrictMaxConcurrentStreams makes it wait in the host's queue.
//   - A dial in flight counts as the streams it will likely bring, so a
//     burst to a cold host opens one conn while the burst fits, not one
//     per request; a conn takes no stream before the peer's SETTINGS.
//   - One pinger per engine PINGs conns that have read nothing for
//     H2ReadIdleTimeout and closes those that do not answer within
//     H2PingTimeout, which also bounds every write; both apply to open
//     conns when the policy changes.
//   - GOAWAY stops new streams on the conn at once; the streams below its
//     last stream id finish, and the conn closes after the last of them.
//
// Use it as any RoundTripper:
//
//	engine, err := pool.New(pool.Options{})
//	if err != nil {
//		return err
//	}
//	defer engine.Close()
//	client := &http.Client{Transport: engine}
//	resp, err := client.Get("https://api.example.com/v1/things")
//	...
//	t, _ := pool.TimingFrom(resp) // where the time went, once the body is read
//
// and change its policy while it runs:
//
//	timeout := 2 * time.Second
//	err = engine.SetPolicies(pool.PolicySet{
//		Hosts: map[string]pool.Policy{
//			"api.example.com": {ResponseHeaderTimeout: &timeout},
//		},
//	})
//
// Locking: each host pool has one mutex guarding its lists and counts;
// the global idle list's lock nests inside it. No I/O happens under either:
// conns to close are collected under the lock and closed after. x/net's
// conn locks nest inside the host pool's (a stream is reserved under it),
// and x/net never calls into the pool while holding them: the frame
// watcher on an HTTP/2 conn's reads takes the host pool's lock from
// x/net's reader, which holds none of its own there.
package pool
