// Package h2script is a scripted HTTP/2 server for tests. It listens on
// loopback, speaking h2c with prior knowledge or TLS with ALPN "h2", and
// hands every accepted connection to the test's script, which reads and
// writes frames one at a time: the server does exactly what the script
// says, misbehaviour included, so a test can pin a client's answer to a
// GOAWAY, a reset stream or a silent peer.
//
//	srv := h2script.NewServer(t, func(c *h2script.Conn) {
//		c.Greet(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 10})
//		st := c.WantHeaders()
//		if c.Index == 0 {
//			c.WriteGoAway(0, http2.ErrCodeNo, "")
//			c.WantClosed()
//			return
//		}
//		c.Respond(st.ID, 200, "hello")
//		c.WantClosed()
//	})
//	// srv.URL is http://127.0.0.1:port
//
// A script runs in a goroutine of its own and must not call t.Fatal; it
// fails the test with Conn.Errorf. A read or write that fails because the
// client or the server closed the conn ends the script quietly. Closing
// the server (Server.Close, or the test's cleanup) closes every conn, so
// every goroutine the package starts has ended when Close returns.
package h2script

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/poold/poold/dialer/dialertest"
)

// Script plays the server's side of one connection. When it returns, the
// connection is closed.
type Script func(c *Conn)

// Server accepts connections and runs a Script on each.
type Server struct {
	// URL is "http://127.0.0.1:port" for h2c, "https://127.0.0.1:port"
	// for TLS.
	URL string
	// Addr is the listener's host:port.
	Addr string
	// RootCAs trusts the TLS server's certificate (issued for 127.0.0.1
	// and localhost by a CA made for the test); nil for h2c.
	RootCAs *x509.CertPool

	t         testing.TB
	ln        net.Listener
	tlsConfig *tls.Config // nil for h2c
	script    Script
	accepted  atomic.Int64
	done      chan struct{} // closed by Close: scripts waiting in Await give up
	closeOnce sync.Once
	wg        sync.WaitGroup // the accept loop and every conn

	mu   sync.Mutex // guards live
	live map[net.Conn]struct{}
}

// NewServer starts an h2c server (HTTP/2 with prior knowledge over plain
// TCP) on 127.0.0.1. It is closed when the test ends.
func NewServer(t testing.TB, script Script) *Server {
	t.Helper()
	return start(t, script, nil)
}

// NewTLSServer starts a TLS server on 127.0.0.1 that offers only "h2" by
// ALPN, with a certificate from a CA made for the test: trust
// Server.RootCAs. It is closed when the test ends.
func NewTLSServer(t testing.TB, script Script) *Server {
	t.Helper()
	ca := dialertest.NewCA(t)
	cfg := &tls.Config{
		Certificates: []tls.Certificate{ca.Certificate(t, 2, "127.0.0.1", "localhost")},
		NextProtos:   []string{http2.NextProtoTLS},
		MinVersion:   tls.VersionTLS12,
	}
	s := start(t, script, cfg)
	s.RootCAs = ca.Pool
	return s
}

func start(t testing.TB, script Script, cfg *tls.Config) *Server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{
		Addr: ln.Addr().String(), t: t, ln: ln, tlsConfig: cfg, script: script,
		done: make(chan struct{}), live: make(map[net.Conn]struct{}),
	}
	s.URL = "http://" + s.Addr
	if cfg != nil {
		s.URL = "https://" + s.Addr
	}
	s.wg.Add(1)
	go s.accept()
	t.Cleanup(s.Close)
	return s
}

// Accepted returns how many connections the server has accepted.
func (s *Server) Accepted() int { return int(s.accepted.Load()) }

// Close stops accepting, closes every connection and waits for every
// script to return. It may be called more than once.
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		close(s.done)
		s.ln.Close()
		s.mu.Lock()
		for c := range s.live {
			c.Close()
		}
		s.mu.Unlock()
	})
	s.wg.Wait()
}

func (s *Server) accept() {
	defer s.wg.Done()
	for {
		nc, err := s.ln.Accept()
		if err != nil {
			return
		}
		index := int(s.accepted.Add(1) - 1)
		s.mu.Lock()
		select {
		case <-s.done:
			// Close already swept the live set; this conn would be missed.
			s.mu.Unlock()
			nc.Close()
			return
		default:
		}
		s.live[nc] = struct{}{}
		s.mu.Unlock()
		s.wg.Add(1)
		go s.serve(nc, index)
	}
}

// abort carries a script's end out of a read or write that failed; serve
// recovers it.
type abort struct{ err error }

func (s *Server) serve(nc net.Conn, index int) {
	defer s.wg.Done()
	defer func() {
		nc.Close()
		s.mu.Lock()
		delete(s.live, nc)
		s.mu.Unlock()
	}()
	c := &Conn{Index: index, AnswerPings: true, s: s, nc: nc, streams: make(map[uint32]*Stream)}
	if s.tlsConfig != nil {
		tc := tls.Server(nc, s.tlsConfig)
		if err := tc.Handshake(); err != nil {
			s.logf("conn %d: TLS handshake: %v", index, err)
			return
		}
		c.ALPN = tc.ConnectionState().NegotiatedProtocol
		c.nc = tc
	}
	c.fr = http2.NewFramer(c.nc, c.nc)
	c.fr.AllowIllegalWrites = true
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.enc = hpack.NewEncoder(&c.encBuf)
	defer func() {
		if r := recover(); r != nil {
			a, ok := r.(abort)
			if !ok {
				panic(r)
			}
			if a.err != nil {
				s.logf("conn %d: script ended: %v", index, a.err)
			}
		}
	}()
	s.script(c)
}

func (s *Server) logf(format string, args ...any) {
	select {
	case <-s.done:
		// Shutting down: every conn fails now, and says nothing new.
	default:
		s.t.Logf("h2script: "+format, args...)
	}
}

// Conn is the server's side of one connection, driven by a Script from
// one goroutine. Reads act on the client's frames as a plain server
// would, unless told otherwise: they acknowledge SETTINGS, answer PINGs
// while AnswerPings is set, give DATA its flow-control credit back, and
// record what each stream brought (see Stream). Every read and write
// that fails ends the script.
type Conn struct {
	// Index numbers the server's conns from 0, in the order accepted.
	Index int
	// ALPN is the protocol TLS negotiated; "" for h2c.
	ALPN string
	// AnswerPings makes reads acknowledge the client's PINGs. It starts
	// true; clear it to leave PINGs unanswered while still serving.
	AnswerPings bool
	// Pings counts the PINGs (not acks) the client has sent.
	Pings int
	// GoAway is the client's GOAWAY, if it sent one.
	GoAway *GoAway

	s       *Server
	nc      net.Conn
	fr      *http2.Framer
	enc     *hpack.Encoder
	encBuf  bytes.Buffer
	silent  bool
	streams map[uint32]*Stream
}

// GoAway is a GOAWAY frame's content.
type GoAway struct {
	LastStreamID uint32
	Code         http2.ErrCode
	Debug        string
}

// Stream is what the client sent on one stream, so far.
type Stream struct {
	ID uint32
	// Header holds the request's header fields, pseudo-headers first, as
	// decoded; Trailer, the trailer fields if any came.
	Header, Trailer []hpack.HeaderField
	// Body is the DATA received.
	Body []byte
	// Ended says the client sent END_STREAM.
	Ended bool
	// Reset says the client sent RST_STREAM, with ResetCode.
	Reset     bool
	ResetCode http2.ErrCode
}

// Get returns the first value of the named header field ("" if absent);
// names are lowercase, as HTTP/2 sends them.
func (st *Stream) Get(name string) string {
	for _, f := range st.Header {
		if f.Name == name {
			return f.Value
		}
	}
	return ""
}

// Method returns the :method pseudo-header.
func (st *Stream) Method() string { return st.Get(":method") }

// Path returns the :path pseudo-header.
func (st *Stream) Path() string { return st.Get(":path") }

// Errorf fails the test and ends the script.
func (c *Conn) Errorf(format string, args ...any) {
	c.s.t.Errorf("h2script: conn %d: %s", c.Index, fmt.Sprintf(format, args...))
	panic(abort{})
}

// Done is closed when the server closes.
func (c *Conn) Done() <-chan struct{} { return c.s.done }

// Await blocks until ch yields or is closed. If the server closes first,
// the script ends.
func (c *Conn) Await(ch <-chan struct{}) {
	select {
	case <-ch:
	case <-c.s.done:
		panic(abort{})
	}
}

// Greet plays the start of a connection: it sends the server's SETTINGS
// (those given; say MAX_CONCURRENT_STREAMS here), reads the client's
// preface and first SETTINGS and acknowledges them.
func (c *Conn) Greet(settings ...http2.Setting) {
	c.WriteSettings(settings...)
	preface := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(c.nc, preface); err != nil {
		panic(abort{fmt.Errorf("reading the client preface: %w", err)})
	}
	if string(preface) != http2.ClientPreface {
		c.Errorf("client preface %q, want %q", preface, http2.ClientPreface)
	}
	f := c.ReadFrame()
	if sf, ok := f.(*http2.SettingsFrame); !ok || sf.IsAck() {
		c.Errorf("first frame after the preface is %v, want SETTINGS", f.Header())
	}
}

// ReadFrame reads the next frame and acts on it as described at Conn.
// HEADERS come as *http2.MetaHeadersFrame, CONTINUATIONs merged in. The
// frame is valid until the next read.
func (c *Conn) ReadFrame() http2.Frame {
	f, err := c.fr.ReadFrame()
	if err != nil {
		panic(abort{fmt.Errorf("read: %w", err)})
	}
	c.handle(f)
	return f
}

func (c *Conn) handle(f http2.Frame) {
	switch f := f.(type) {
	case *http2.SettingsFrame:
		if !f.IsAck() && !c.silent {
			c.write(c.fr.WriteSettingsAck())
		}
	case *http2.PingFrame:
		if !f.IsAck() {
			c.Pings++
			if c.AnswerPings && !c.silent {
				c.write(c.fr.WritePing(true, f.Data))
			}
		}
	case *http2.MetaHeadersFrame:
		id := f.Header().StreamID
		st := c.streams[id]
		if st == nil {
			st = &Stream{ID: id, Header: f.Fields}
			c.streams[id] = st
		} else {
			st.Trailer = append(st.Trailer, f.Fields...)
		}
		st.Ended = st.Ended || f.StreamEnded()
	case *http2.DataFrame:
		id := f.Header().StreamID
		st := c.streams[id]
		if st == nil {
			st = &Stream{ID: id}
			c.streams[id] = st
		}
		st.Body = append(st.Body, f.Data()...)
		st.Ended = st.Ended || f.StreamEnded()
		if n := f.Header().Length; n > 0 && !c.silent {
			c.write(c.fr.WriteWindowUpdate(0, n))
			if !st.Ended {
				c.write(c.fr.WriteWindowUpdate(id, n))
			}
		}
	case *http2.RSTStreamFrame:
		st := c.streams[f.StreamID]
		if st == nil {
			st = &Stream{ID: f.StreamID}
			c.streams[f.StreamID] = st
		}
		st.Reset, st.ResetCode = true, f.ErrCode
	case *http2.GoAwayFrame:
		c.GoAway = &GoAway{LastStreamID: f.LastStreamID, Code: f.ErrCode, Debug: string(f.DebugData())}
	}
}

// Want reads frames until match returns true for one, and returns it.
func (c *Conn) Want(match func(http2.Frame) bool) http2.Frame {
	for {
		if f := c.ReadFrame(); match(f) {
			return f
		}
	}
}

// WantHeaders reads frames until HEADERS open a new stream, and returns
// that stream.
func (c *Conn) WantHeaders() *Stream {
	seen := make(map[uint32]bool, len(c.streams))
	for id, st := range c.streams {
		seen[id] = st.Header != nil
	}
	f := c.Want(func(f http2.Frame) bool {
		h, ok := f.(*http2.MetaHeadersFrame)
		return ok && !seen[h.Header().StreamID]
	})
	return c.streams[f.Header().StreamID]
}

// WantBody reads frames until st ends (END_STREAM) or is reset, and
// returns it.
func (c *Conn) WantBody(st *Stream) *Stream {
	for !st.Ended && !st.Reset {
		c.ReadFrame()
	}
	return st
}

// WantRSTStream reads frames until the client resets stream id, and
// returns the error code.
func (c *Conn) WantRSTStream(id uint32) http2.ErrCode {
	f := c.Want(func(f http2.Frame) bool {
		r, ok := f.(*http2.RSTStreamFrame)
		return ok && r.StreamID == id
	})
	return f.(*http2.RSTStreamFrame).ErrCode
}

// WantClosed reads frames, acting on them, until the client closes the
// conn (or the server does), and returns the read's error: io.EOF for a
// clean close.
func (c *Conn) WantClosed() error {
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			return err
		}
		c.handle(f)
	}
}

// Silent makes the server a peer that has stopped answering: from now on
// it writes nothing, not even PING or SETTINGS acks, while it goes on
// reading (so the client's writes do not block) until the conn closes.
// It returns the read's error, as WantClosed.
func (c *Conn) Silent() error {
	c.silent = true
	return c.WantClosed()
}

// Stream returns what the client has sent on stream id, or nil.
func (c *Conn) Stream(id uint32) *Stream { return c.streams[id] }

// WriteSettings sends a SETTINGS frame.
func (c *Conn) WriteSettings(settings ...http2.Setting) {
	c.write(c.fr.WriteSettings(settings...))
}

// WriteHeaders sends a header block on stream id, as HEADERS and as many
// CONTINUATIONs as it takes. fields alternate name and value, sent as
// given: nothing is lowercased or checked, so a test can send what a
// client must refuse.
func (c *Conn) WriteHeaders(id uint32, endStream bool, fields ...string) {
	if len(fields)%2 != 0 {
		panic("h2script: WriteHeaders wants name, value pairs")
	}
	c.encBuf.Reset()
	for i := 0; i < len(fields); i += 2 {
		if err := c.enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]}); err != nil {
			panic("h2script: hpack: " + err.Error())
		}
	}
	block := c.encBuf.Bytes()
	const maxFrame = 16384 // the initial SETTINGS_MAX_FRAME_SIZE
	first := block[:min(len(block), maxFrame)]
	block = block[len(first):]
	c.write(c.fr.WriteHeaders(http2.HeadersFrameParam{
		StreamID: id, BlockFragment: first, EndStream: endStream, EndHeaders: len(block) == 0,
	}))
	for len(block) > 0 {
		frag := block[:min(len(block), maxFrame)]
		block = block[len(frag):]
		c.write(c.fr.WriteContinuation(id, len(block) == 0, frag))
	}
}

// WriteData sends DATA on stream id, in frames of at most 16 KiB. The
// script is trusted with flow control: nothing waits for window.
func (c *Conn) WriteData(id uint32, endStream bool, data []byte) {
	for {
		chunk := data[:min(len(data), 16384)]
		data = data[len(chunk):]
		c.write(c.fr.WriteData(id, endStream && len(data) == 0, chunk))
		if len(data) == 0 {
			return
		}
	}
}

// WriteTrailers sends trailer fields, ending stream id.
func (c *Conn) WriteTrailers(id uint32, fields ...string) {
	c.WriteHeaders(id, true, fields...)
}

// Respond sends a whole response on stream id: HEADERS with :status and
// a content-length, then body as DATA (none if body is empty).
func (c *Conn) Respond(id uint32, status int, body string) {
	c.WriteHeaders(id, body == "", ":status", strconv.Itoa(status), "content-length", strconv.Itoa(len(body)))
	if body != "" {
		c.WriteData(id, true, []byte(body))
	}
}

// WriteRSTStream resets stream id.
func (c *Conn) WriteRSTStream(id uint32, code http2.ErrCode) {
	c.write(c.fr.WriteRSTStream(id, code))
}

// WriteGoAway sends GOAWAY: streams above lastStreamID were not and will
// not be processed.
func (c *Conn) WriteGoAway(lastStreamID uint32, code http2.ErrCode, debug string) {
	c.write(c.fr.WriteGoAway(lastStreamID, code, []byte(debug)))
}

// WriteWindowUpdate grants incr bytes of window on stream id (0: the
// conn). Any increment is sent, even one that overflows the window.
func (c *Conn) WriteWindowUpdate(id, incr uint32) {
	c.write(c.fr.WriteWindowUpdate(id, incr))
}

// WritePing sends a PING, or a PING ack when ack is set.
func (c *Conn) WritePing(ack bool, data [8]byte) {
	c.write(c.fr.WritePing(ack, data))
}

// WriteRaw sends bytes as they are, outside any frame.
func (c *Conn) WriteRaw(b []byte) {
	_, err := c.nc.Write(b)
	c.write(err)
}

// Close closes the connection; the script should return after it.
func (c *Conn) Close() { c.nc.Close() }

func (c *Conn) write(err error) {
	if err != nil {
		if errors.Is(err, net.ErrClosed) {
			panic(abort{})
		}
		panic(abort{fmt.Errorf("write: %w", err)})
	}
}
