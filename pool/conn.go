package pool

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/poold/poold/dialer"
)

// protoConn is the protocol spoken on a pooled connection. HTTP/1.1 carries
// one request at a time; a multiplexed protocol would take requests while
// it has stream capacity, and would stay shareable while active.
type protoConn interface {
	// roundTrip runs one exchange. On error it has already given the conn
	// back to its pool (or closed it); retryable says the request never
	// reached the server in a way that matters.
	roundTrip(x *exchange) (resp *http.Response, retryable bool, err error)
	// canTakeRequestLocked and activeStreamsLocked need the host pool's mu.
	canTakeRequestLocked() bool
	activeStreamsLocked() int
	protocol() string
}

// conn is one upstream connection and the facts the pool keeps about it.
type conn struct {
	id      uint64
	hp      *hostPool
	created time.Time

	// Set by setDialed under hp.mu when the dial completes; read-only after
	// that, so whoever got the conn through the pool may read them freely.
	nc       net.Conn     // *tls.Conn for TLS
	tcp      *net.TCPConn // the socket under nc, for peeks and keep-alive
	tlsState *tls.ConnectionState
	local    string
	remote   string
	remoteAP netip.AddrPort // remote parsed, for egress re-checks; zero for a proxied or odd address
	// egressGen is 1 + the generation of its scope's rules that last
	// allowed it; 0 until checked. Guarded by hp.mu.
	egressGen uint64
	dialStart time.Time // when the dial began, by the wall clock, for tracing
	dns       time.Duration
	connect   time.Duration
	tlsTime   time.Duration
	proto     protoConn

	requests     atomic.Uint64 // requests started on it
	bytesRead    atomic.Uint64
	bytesWritten atomic.Uint64

	// Guarded by hp.mu.
	state       ConnState
	lastUsed    time.Time
	idleSince   time.Time
	retire      CloseReason         // close after the current request, for this reason
	keepAlive   net.KeepAliveConfig // what the socket is set to
	closeReason CloseReason

	// Guarded by hp.e.idle.mu: the conn's place in the engine-wide idle
	// list, linked through the conns themselves so going idle allocates
	// nothing.
	lruPrev, lruNext *conn
	inLRU            bool

	closeOnce sync.Once

	// Owned by the request holding the conn; nil while idle, so an idle
	// conn holds no buffers.
	br *bufio.Reader
	bw *bufio.Writer
	rd connReader
	wr connWriter

	// ixMu guards owner. A context's AfterFunc may fire on any goroutine
	// at any time; it may only interrupt the exchange that armed it, never
	// a later one on the same conn.
	ixMu  sync.Mutex
	owner *exchange

	// HTTP/2 only; h2 is set with proto before the conn is offered.
	h2 *h2conn
	// Guarded by hp.mu: the streams the pool has handed out now and in
	// all, whether
	// x/net refused one the count had room for, and whether the GOAWAY
	// was counted.
	streams         int
	h2Taken         uint64 // streams handed out over the conn's life
	h2Blocked       bool
	h2GoAwayCounted bool
	// Written by the conn's frame watcher: the peer's stream limit and
	// GOAWAY code, each with a "seen" bit.
	h2PeerMax atomic.Uint64
	h2GoAway  atomic.Uint64
	// h2Settings is closed when the peer's first SETTINGS arrives.
	h2Settings chan struct{}
}

// setDialed records the result of the dial that began at start on a
// placeholder conn; hp.mu is held.
func (c *conn) setDialed(dc *dialer.Conn, ka net.KeepAliveConfig, start time.Time) {
	c.nc = dc.Conn
	c.tcp = dc.TCP
	c.tlsState = dc.TLS
	c.local = dc.LocalAddr().String()
	c.remote = dc.RemoteAddr().String()
	if ap, err := netip.ParseAddrPort(c.remote); err == nil {
		c.remoteAP = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	c.dialStart = start
	c.dns, c.connect, c.tlsTime = dc.DNS, dc.Connect, dc.TLSHandshake
	c.keepAlive = ka
	c.proto = &http1{c: c}
	c.rd.c, c.wr.c = c, c
}

// closeNow closes the socket once; the pool accounts for it separately.
// A close error has nobody to go to: the pool is done with the conn either
// way, and the kernel releases the socket.
func (c *conn) closeNow() {
	c.closeOnce.Do(func() {
		switch {
		case c.h2 != nil:
			// What x/net queued last (an RST_STREAM, a GOAWAY) goes
			// out first.
			c.h2.w.closeSoon()
		case c.nc != nil:
			_ = c.nc.Close()
		}
	})
}

// infoLocked snapshots c; hp.mu is held.
func (c *conn) infoLocked() ConnInfo {
	st := c.state
	if st == ConnActive && c.retire != "" {
		st = ConnClosing
	}
	ci := ConnInfo{
		ID: c.id, Host: c.hp.key, State: st,
		LocalAddr: c.local, RemoteAddr: c.remote,
		Created: c.created, LastUsed: c.lastUsed,
		Requests: c.requests.Load(), BytesRead: c.bytesRead.Load(), BytesWritten: c.bytesWritten.Load(),
	}
	if c.proto != nil {
		ci.Protocol = c.proto.protocol()
		ci.ActiveStreams = c.proto.activeStreamsLocked()
	}
	if c.h2 != nil {
		ci.MaxStreams = uint32(c.hp.streamLimitLocked(c))
		if v := c.h2PeerMax.Load(); v&h2PeerMaxSeen != 0 {
			ci.PeerMaxStreams = uint32(v)
		}
		if g := c.h2GoAway.Load(); g != 0 {
			ci.GoAway, ci.GoAwayCode = true, uint32(g)
		}
		ci.PendingStreams = c.h2.cl.state().Pending
		ci.LastPingRTT = c.h2.pingRTT()
	}
	if c.tlsState != nil {
		ci.TLSVersion = c.tlsState.Version
		ci.TLSCipherSuite = c.tlsState.CipherSuite
		ci.ALPN = c.tlsState.NegotiatedProtocol
	}
	return ci
}

// checkAlive peeks at an idle conn before reuse. An idle HTTP/1 conn must
// have nothing to read: EOF means the server closed it, bytes mean it sent
// something unasked.
func (c *conn) checkAlive() (CloseReason, bool) {
	if c.h2 != nil {
		return c.h2.checkAlive()
	}
	if c.tcp == nil {
		return "", true
	}
	switch peekSocket(c.tcp) {
	case peekEmpty:
		return "", true
	case peekEOF, peekReset:
		return CloseServerClosed, false
	case peekData:
		if c.tlsState != nil {
			return c.probeTLS()
		}
		return CloseUnusable, false
	}
	return CloseUnusable, false
}

// tlsProbeWait bounds probeTLS. The bytes are already in the socket buffer,
// so processing them takes microseconds; the wait only has to outlast that.
const tlsProbeWait = 5 * time.Millisecond

// probeTLS reads pending records on an idle TLS conn. TLS 1.3 servers send
// resumption data in post-handshake messages, which sit unread on a conn
// that has not served yet; crypto/tls consumes them silently. A
// close_notify gives EOF, application data gives bytes: both rule the conn
// out. A timeout means only handshake messages were there, and the conn is
// fine (a read timeout does not poison a tls.Conn).
func (c *conn) probeTLS() (CloseReason, bool) {
	var b [1]byte
	if err := c.nc.SetReadDeadline(time.Now().Add(tlsProbeWait)); err != nil {
		return CloseError, false
	}
	n, err := c.nc.Read(b[:])
	if n == 0 && isTimeout(err) {
		if err := c.nc.SetReadDeadline(time.Time{}); err != nil {
			return CloseError, false
		}
		return "", true
	}
	if n > 0 {
		return CloseUnusable, false
	}
	return CloseServerClosed, false
}

// connReader counts bytes and bounds the response head.
type connReader struct {
	c       *conn
	limit   int64 // bytes the head may still take; < 0 = no bound
	tripped bool  // the head bound was hit

	// While a body is read, gap is its BodyReadTimeout and x its exchange:
	// each socket read gets that long, so the bound is on the upstream's
	// silence, not on how long the caller takes between reads.
	gap time.Duration
	x   *exchange
}

func (r *connReader) Read(p []byte) (int, error) {
	if r.gap > 0 {
		// An interrupted exchange keeps its deadline in the past.
		r.x.setBodyDeadline(time.Now().Add(r.gap))
	}
	if r.limit == 0 {
		r.tripped = true
		return 0, errHeaderTooLarge
	}
	if r.limit > 0 && int64(len(p)) > r.limit {
		p = p[:r.limit]
	}
	n, err := r.c.nc.Read(p)
	if r.limit > 0 {
		r.limit -= int64(n)
	}
	r.c.bytesRead.Add(uint64(n))
	return n, err
}

// connWriter counts bytes and remembers a socket write error, which tells a
// broken conn apart from a failing request body.
type connWriter struct {
	c   *conn
	err error
}

func (w *connWriter) Write(p []byte) (int, error) {
	n, err := w.c.nc.Write(p)
	w.c.bytesWritten.Add(uint64(n))
	if err != nil && w.err == nil {
		w.err = err
	}
	return n, err
}

var (
	readerPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4<<10) }}
	writerPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 4<<10) }}
)

// takeBuffers gives the conn its buffers for one exchange.
func (c *conn) takeBuffers() {
	if c.br != nil || c.bw != nil {
		panic(fmt.Sprintf("pool: internal error: conn %d checked out with buffers", c.id))
	}
	c.rd.limit, c.rd.tripped, c.rd.gap, c.rd.x = -1, false, 0, nil
	c.wr.err = nil
	c.br = readerPool.Get().(*bufio.Reader)
	c.br.Reset(&c.rd)
	c.bw = writerPool.Get().(*bufio.Writer)
	c.bw.Reset(&c.wr)
}

// returnBuffers gives the buffers back; keepWriter is false when a writer
// goroutine may still be using bw, which is then left to the collector.
func (c *conn) returnBuffers(keepWriter bool) {
	if c.br != nil {
		c.br.Reset(nil)
		readerPool.Put(c.br)
		c.br = nil
	}
	if c.bw != nil {
		if keepWriter {
			c.bw.Reset(nil)
			writerPool.Put(c.bw)
		}
		c.bw = nil
	}
}

// idleLRU orders the idle conns of every host by when they went idle, so
// MaxIdleConns evicts the least recently used across hosts. mu is taken
// inside hostPool.mu, never the other way round.
type idleLRU struct {
	mu         sync.Mutex
	head, tail *conn // oldest first
	n          int
}

func (u *idleLRU) add(c *conn) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if c.inLRU {
		panic(fmt.Sprintf("pool: internal error: conn %d idle twice", c.id))
	}
	c.inLRU, c.lruPrev, c.lruNext = true, u.tail, nil
	if u.tail != nil {
		u.tail.lruNext = c
	} else {
		u.head = c
	}
	u.tail = c
	u.n++
}

func (u *idleLRU) remove(c *conn) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if !c.inLRU {
		return
	}
	if c.lruPrev != nil {
		c.lruPrev.lruNext = c.lruNext
	} else {
		u.head = c.lruNext
	}
	if c.lruNext != nil {
		c.lruNext.lruPrev = c.lruPrev
	} else {
		u.tail = c.lruPrev
	}
	c.inLRU, c.lruPrev, c.lruNext = false, nil, nil
	u.n--
}

// oldestOver returns the least recently used idle conn if there are more
// than limit.
func (u *idleLRU) oldestOver(limit int) *conn {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.n <= limit {
		return nil
	}
	return u.head
}

// evictIdle enforces MaxIdleConns. The victim's own pool lock decides: if
// it was checked out meanwhile it has left the list, and the next oldest
// is tried.
func (e *Engine) evictIdle() {
	limit := int(e.snap.Load().maxIdleConns)
	if limit == 0 {
		return
	}
	for {
		c := e.idle.oldestOver(limit)
		if c == nil {
			return
		}
		hp := c.hp
		hp.mu.Lock()
		evicted := c.state == ConnIdle
		if evicted {
			hp.removeLocked(c, CloseIdleLimit)
		}
		hp.mu.Unlock()
		if evicted {
			c.closeNow()
		}
	}
}
