package etcdtest

import (
	"io"
	"net"
	"sync"
	"testing"
)

// Proxy relays TCP connections to one address, and can cut every
// connection it relays while the cluster stays up: what a client sees when
// the network between it and etcd fails for a moment, not etcd itself.
type Proxy struct {
	ln     net.Listener
	target string

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

// NewProxy listens on loopback and relays to target until the test ends.
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	p.wg.Go(p.accept)
	t.Cleanup(func() {
		ln.Close()
		p.Cut()
		p.wg.Wait()
	})
	return p
}

// Addr is the address to give a client in place of the target's.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Cut closes every connection relayed so far; new ones are relayed again.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
	}
}

func (p *Proxy) accept() {
	for {
		in, err := p.ln.Accept()
		if err != nil {
			return
		}
		out, err := net.Dial("tcp", p.target)
		if err != nil {
			in.Close()
			continue
		}
		p.mu.Lock()
		p.conns[in], p.conns[out] = struct{}{}, struct{}{}
		p.mu.Unlock()
		p.wg.Go(func() { p.relay(out, in) })
		p.wg.Go(func() { p.relay(in, out) })
	}
}

// relay copies one direction; when it ends, both ends close, so the other
// direction ends too, and the proxy forgets them.
func (p *Proxy) relay(dst, src net.Conn) {
	_, _ = io.Copy(dst, src)
	dst.Close()
	src.Close()
	p.mu.Lock()
	delete(p.conns, dst)
	delete(p.conns, src)
	p.mu.Unlock()
}
