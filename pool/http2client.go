package pool

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"sync"

	"golang.org/x/net/http2"
)

// h2Client is what the pool needs of an HTTP/2 client connection: framing,
// flow control and HPACK behind it, every pooling decision in front of it.
// golang.org/x/net/http2's ClientConn provides it today; net/http's own
// ClientConn offers no PING or stream limit yet, so the seam stays here.
type h2Client interface {
	// reserve claims a stream for the next roundTrip; false means the conn
	// takes no new stream now (at its limit or going away).
	reserve() bool
	roundTrip(*http.Request) (*http.Response, error)
	state() h2State
	ping(context.Context) error
	// shutdown sends GOAWAY and closes once the streams in flight end, or
	// when ctx does.
	shutdown(context.Context) error
}

// h2State is what a client conn tells about itself.
type h2State struct {
	Closed, Closing bool
	Pending         int // requests waiting in x/net for a stream
}

// xnetClient adapts x/net's ClientConn.
type xnetClient struct{ cc *http2.ClientConn }

func (x xnetClient) reserve() bool                                     { return x.cc.ReserveNewRequest() }
func (x xnetClient) roundTrip(r *http.Request) (*http.Response, error) { return x.cc.RoundTrip(r) }
func (x xnetClient) ping(ctx context.Context) error                    { return x.cc.Ping(ctx) }
func (x xnetClient) shutdown(ctx context.Context) error                { return x.cc.Shutdown(ctx) }

func (x xnetClient) state() h2State {
	s := x.cc.State()
	return h2State{Closed: s.Closed, Closing: s.Closing, Pending: s.StreamsPending}
}

// h2Transports holds one x/net Transport per response head limit: the
// limit is a Transport setting, and policies set it per host.
type h2Transports struct {
	mu sync.Mutex
	m  map[uint32]*http2.Transport
}

func (t *h2Transports) get(maxHeaderBytes uint32) *http2.Transport {
	t.mu.Lock()
	defer t.mu.Unlock()
	if tr := t.m[maxHeaderBytes]; tr != nil {
		return tr
	}
	if t.m == nil {
		t.m = make(map[uint32]*http2.Transport)
	}
	tr := &http2.Transport{
		// The caller's Accept-Encoding goes upstream as sent, and the
		// body comes back as the upstream sent it, as over HTTP/1.1.
		DisableCompression: true,
		AllowHTTP:          true,
		MaxHeaderListSize:  maxHeaderBytes,
		// Health and idleness are the pool's: its pinger and sweeper.
	}
	t.m[maxHeaderBytes] = tr
	return tr
}

// newClient starts HTTP/2 on a dialed conn: the preface and SETTINGS go
// out now, and x/net's reader runs until the conn closes.
func (t *h2Transports) newClient(nc net.Conn, maxHeaderBytes uint32) (h2Client, error) {
	cc, err := t.get(maxHeaderBytes).NewClientConn(nc)
	if err != nil {
		return nil, err
	}
	return xnetClient{cc}, nil
}

// How x/net reports what the pool must tell apart. Its retry sentinels are
// unexported, so they are known by their text; the tests against scripted
// servers pin each one.
const (
	xnetGoAwayAbove    = "http2: Transport received Server's graceful shutdown GOAWAY"
	xnetGoAwayFirst    = "http2: Transport received GOAWAY from server ErrCode:"
	xnetUnusable       = "http2: client conn not usable"
	xnetNotEstablished = "http2: client conn could not be established"
	xnetFromPeer       = "received from peer"
)

// h2Failure is what an x/net error means to the pool.
type h2Failure struct {
	unprocessed bool // the server did not process the stream: any method may go again
	reset       *StreamResetError
	protocol    bool // the peer broke HTTP/2 or HTTP
}

func classifyH2(err error, goAwayCode uint32) h2Failure {
	var se http2.StreamError
	var ge http2.GoAwayError
	var ce http2.ConnectionError
	msg := err.Error()
	switch {
	case msg == xnetGoAwayAbove, msg == xnetUnusable, msg == xnetNotEstablished:
		return h2Failure{unprocessed: true}
	case strings.HasPrefix(msg, xnetGoAwayFirst):
		return h2Failure{reset: &StreamResetError{Code: goAwayCode, GoAway: true}}
	case errors.As(err, &se):
		if se.Cause != nil && se.Cause.Error() != xnetFromPeer {
			return h2Failure{protocol: true}
		}
		if se.Code == http2.ErrCodeRefusedStream {
			return h2Failure{unprocessed: true, reset: &StreamResetError{Code: uint32(se.Code)}}
		}
		return h2Failure{reset: &StreamResetError{Code: uint32(se.Code)}}
	case errors.As(err, &ge):
		return h2Failure{reset: &StreamResetError{Code: uint32(ge.ErrCode), GoAway: true}}
	case errors.As(err, &ce):
		return h2Failure{protocol: true}
	}
	return h2Failure{}
}
