package pool

import (
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// h2Upstream serves handler over HTTP/2 on loopback, TLS with ALPN h2 when
// ca is set, else h2c with prior knowledge. It reports the URL and counts
// the conns it accepted.
func h2Upstream(t testing.TB, ca *testCA, maxStreams uint32, handler http.HandlerFunc) (url string, conns *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	conns = new(atomic.Int64)
	srv := &http2.Server{MaxConcurrentStreams: maxStreams}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var open []net.Conn
	done := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			if ca != nil {
				tc := tls.Server(nc, &tls.Config{Certificates: []tls.Certificate{ca.leaf}, NextProtos: []string{"h2"}})
				if err := tc.Handshake(); err != nil {
					nc.Close()
					continue
				}
				nc = tc
			}
			mu.Lock()
			open = append(open, nc)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				srv.ServeConn(nc, &http2.ServeConnOpts{Handler: handler})
			}()
		}
	}()
	t.Cleanup(func() {
		close(done)
		ln.Close()
		mu.Lock()
		for _, c := range open {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	scheme := "http"
	if ca != nil {
		scheme = "https"
	}
	return scheme + "://" + ln.Addr().String(), conns
}

func TestHTTP2RoundTripOnOneConn(t *testing.T) {
	for _, tlsOn := range []bool{false, true} {
		t.Run(map[bool]string{false: "h2c", true: "tls"}[tlsOn], func(t *testing.T) {
			var ca *testCA
			opts := Options{}
			if tlsOn {
				ca = newTestCA(t)
				opts.Dialer = ca.dialer()
			}
			release := make(chan struct{})
			var inFlight, peak atomic.Int64
			url, conns := h2Upstream(t, ca, 250, func(w http.ResponseWriter, r *http.Request) {
				n := inFlight.Add(1)
				for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
				}
				<-release
				inFlight.Add(-1)
				io.WriteString(w, r.Proto)
			})
			e := newTestEngine(t, opts, func(p *Policy) { p.Protocols = ptr(ProtocolsH2C) })
			// A first request teaches the pool the host's stream limit:
			// before it, a dial in flight counts as 100 streams.
			warm, _ := http.NewRequest("GET", url+"/warm", nil)
			close(release)
			resp, err := e.RoundTrip(warm)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			release = make(chan struct{})
			peak.Store(0)
			const n = 200
			var wg sync.WaitGroup
			errs := make(chan error, n)
			for range n {
				wg.Add(1)
				go func() {
					defer wg.Done()
					req, _ := http.NewRequest("GET", url+"/x", nil)
					resp, err := e.RoundTrip(req)
					if err != nil {
						errs <- err
						return
					}
					b, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					if string(b) != "HTTP/2.0" || resp.ProtoMajor != 2 {
						t.Errorf("body %q proto %d", b, resp.ProtoMajor)
					}
				}()
			}
			for inFlight.Load() < n {
				select {
				case err := <-errs:
					t.Fatal(err)
				default:
				}
				time.Sleep(time.Millisecond)
			}
			cs := e.Conns(ConnFilter{})
			if len(cs) != 1 || cs[0].Protocol != "HTTP/2.0" || cs[0].ActiveStreams != n {
				t.Errorf("conns during the burst: %+v", cs)
			}
			close(release)
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			if got := conns.Load(); got != 1 {
				t.Errorf("upstream accepted %d conns, want 1", got)
			}
			if peak.Load() != n {
				t.Errorf("peak concurrency %d", peak.Load())
			}
		})
	}
}

func TestHTTP2ColdBurstOpensFewConns(t *testing.T) {
	release := make(chan struct{})
	url, conns := h2Upstream(t, nil, 10, func(w http.ResponseWriter, r *http.Request) {
		<-release
		io.WriteString(w, "ok")
	})
	e := newTestEngine(t, Options{}, func(p *Policy) { p.Protocols = ptr(ProtocolsH2C) })
	const n = 50
	var wg sync.WaitGroup
	var failed atomic.Int64
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest("GET", url+"/", nil)
			resp, err := e.RoundTrip(req)
			if err != nil {
				t.Error(err)
				failed.Add(1)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}()
	}
	// Every request reaches the upstream or is queued before the release.
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if s, _ := e.Host(url); s.Streams == n {
			break
		}
	}
	close(release)
	wg.Wait()
	s, _ := e.Host(url)
	if got := conns.Load(); got > 5 || s.Counters.Dials > 5 {
		t.Errorf("%d conns accepted, %d dials, want at most 5", got, s.Counters.Dials)
	}
	if s.Counters.RefusedStreams != 0 || s.Counters.Errors != 0 {
		t.Errorf("refused %d, errors %d", s.Counters.RefusedStreams, s.Counters.Errors)
	}
}

// freezer relays loopback TCP to target until frozen, then swallows
// everything in both directions, as a peer that went silent.
type freezer struct {
	ln     net.Listener
	frozen atomic.Bool
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  []net.Conn
}

func newFreezer(t *testing.T, target string) *freezer {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &freezer{ln: ln}
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		for {
			a, err := ln.Accept()
			if err != nil {
				return
			}
			b, err := net.Dial("tcp", target)
			if err != nil {
				a.Close()
				continue
			}
			f.mu.Lock()
			f.conns = append(f.conns, a, b)
			f.mu.Unlock()
			f.wg.Add(2)
			go f.pipe(a, b)
			go f.pipe(b, a)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		f.mu.Lock()
		for _, c := range f.conns {
			c.Close()
		}
		f.mu.Unlock()
		f.wg.Wait()
	})
	return f
}

func (f *freezer) pipe(dst, src net.Conn) {
	defer f.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !f.frozen.Load() {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			dst.Close()
			return
		}
	}
}

func TestHTTP2SilentPeerIsClosedByPing(t *testing.T) {
	url, _ := h2Upstream(t, nil, 100, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	f := newFreezer(t, url[len("http://"):])
	front := "http://" + f.ln.Addr().String()
	e := newTestEngine(t, Options{}, func(p *Policy) {
		p.Protocols = ptr(ProtocolsH2C)
		p.H2ReadIdleTimeout = ptr(time.Second)
		p.H2PingTimeout = ptr(time.Second)
	})
	get := func() error {
		req, _ := http.NewRequest("GET", front+"/", nil)
		resp, err := e.RoundTrip(req)
		if err != nil {
			return err
		}
		io.Copy(io.Discard, resp.Body)
		return resp.Body.Close()
	}
	if err := get(); err != nil {
		t.Fatal(err)
	}
	f.frozen.Store(true)
	start := time.Now()
	for {
		s, _ := e.Host(front)
		if s.Counters.Closed[ClosePingTimeout] == 1 {
			break
		}
		if time.Since(start) > 10*time.Second {
			t.Fatalf("not closed for ping_timeout: %+v", s.Counters)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("closed after %v", time.Since(start))
	f.frozen.Store(false)
	if err := get(); err != nil {
		t.Fatal(err)
	}
	if s, _ := e.Host(front); s.Counters.Dials != 2 || s.Counters.PingFailures != 1 {
		t.Errorf("dials %d ping failures %d", s.Counters.Dials, s.Counters.PingFailures)
	}
}
