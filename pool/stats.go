package pool

import (
	"sync/atomic"
	"time"
)

// CloseReason says why a connection was closed. Each reason has its own
// counter in HostCounters.Closed.
type CloseReason string

// The reasons a connection is closed.
const (
	CloseIdleTimeout   CloseReason = "idle_timeout"   // idle longer than IdleConnTimeout
	CloseMaxLifetime   CloseReason = "max_lifetime"   // older than MaxConnLifetime
	CloseMaxRequests   CloseReason = "max_requests"   // served MaxRequestsPerConn requests
	CloseIdleLimit     CloseReason = "idle_limit"     // over MaxIdleConnsPerHost or MaxIdleConns
	CloseServerClosed  CloseReason = "server_closed"  // the server closed it or asked to
	CloseUnusable      CloseReason = "unusable"       // its state after a request rules out reuse
	CloseError         CloseReason = "error"          // a request on it failed
	CloseCanceled      CloseReason = "canceled"       // its request was canceled mid-flight
	CloseDrain         CloseReason = "drain"          // CloseIdle or Drain
	ClosePolicy        CloseReason = "policy"         // a policy change left no room for it
	CloseShutdown      CloseReason = "shutdown"       // Close
	CloseEgress        CloseReason = "egress_denied"  // its scope's rules no longer allow its address
	CloseGoAway        CloseReason = "goaway"         // HTTP/2: the server sent GOAWAY and its streams ended
	ClosePingTimeout   CloseReason = "ping_timeout"   // HTTP/2: a PING or a write went unanswered
	CloseProtocolError CloseReason = "protocol_error" // HTTP/2: the peer broke the protocol
)

// closeReasons lists every CloseReason; counters are indexed by position.
var closeReasons = [...]CloseReason{
	CloseIdleTimeout, CloseMaxLifetime, CloseMaxRequests, CloseIdleLimit, CloseServerClosed,
	CloseUnusable, CloseError, CloseCanceled, CloseDrain, ClosePolicy, CloseShutdown, CloseEgress,
	CloseGoAway, ClosePingTimeout, CloseProtocolError,
}

func reasonIndex(r CloseReason) int {
	for i, q := range closeReasons {
		if q == r {
			return i
		}
	}
	panic("pool: internal error: unknown close reason " + string(r))
}

// ConnState is where a connection is in its life.
type ConnState int

// The states of a connection.
const (
	ConnDialing ConnState = iota + 1 // being dialed
	ConnActive                       // carrying a request
	ConnIdle                         // in the idle list
	ConnClosing                      // being closed, or retiring after its request
)

// String returns the lowercase name, as used in the API.
func (s ConnState) String() string {
	switch s {
	case ConnDialing:
		return "dialing"
	case ConnActive:
		return "active"
	case ConnIdle:
		return "idle"
	case ConnClosing:
		return "closing"
	}
	return "unknown"
}

// HostStats is a snapshot of one host pool.
type HostStats struct {
	// Key names the pool: "https://api.example.com:443", or with a proxy
	// "http://a:80 via http://proxy:3128".
	Key    string
	Scheme string
	Addr   string // host:port of the origin
	Proxy  string // the proxy URL with any password redacted; "" when direct
	// Active, Idle and Dialing count connections; Pending counts requests
	// waiting for one.
	Active, Idle, Dialing, Pending int
	// H2Conns counts the open HTTP/2 conns among Active and Idle, and
	// Streams the requests they carry now.
	H2Conns, Streams int
	Counters         HostCounters
	Policy           string // Effective.Source of the policy in force
}

// HostCounters are cumulative counts for one host pool since it was created.
type HostCounters struct {
	Requests       uint64 // RoundTrip calls
	Dials          uint64 // dials started
	DialErrors     uint64 // dials that failed
	Reused         uint64 // requests sent on a connection that had served before
	Retries        uint64 // requests sent again after a reused connection failed
	QueueOverflows uint64 // requests refused with ErrQueueFull
	Timeouts       uint64 // requests that failed on a deadline
	Errors         uint64 // requests that failed, timeouts included
	// Streams counts requests sent as HTTP/2 streams; GoAways, the GOAWAY
	// frames received; RefusedStreams, streams the peer refused
	// (REFUSED_STREAM or above a GOAWAY's last stream id); PingFailures,
	// PINGs left unanswered.
	Streams, GoAways, RefusedStreams, PingFailures uint64
	// TimeoutsByPhase splits Timeouts by the phase that ran out of time.
	TimeoutsByPhase map[Phase]uint64
	// Closed counts closed connections by reason.
	Closed map[CloseReason]uint64
}

// ConnInfo is a snapshot of one connection.
type ConnInfo struct {
	ID                    uint64
	Host                  string // the host pool key
	State                 ConnState
	Protocol              string // "HTTP/1.1" or "HTTP/2.0"
	LocalAddr, RemoteAddr string
	TLSVersion            uint16 // 0 for plain TCP
	TLSCipherSuite        uint16
	ALPN                  string
	Created, LastUsed     time.Time
	Requests              uint64
	BytesRead             uint64
	BytesWritten          uint64
	ActiveStreams         int

	// HTTP/2 only. PendingStreams are requests queued for this conn's
	// streams; PeerMaxStreams is the peer's SETTINGS_MAX_CONCURRENT_STREAMS
	// (0 before its SETTINGS), MaxStreams the limit in force (the lower of
	// that and the policy's). LastPingRTT is the last PING's round trip.
	// GoAway says a GOAWAY was received, with its error code.
	PendingStreams int
	PeerMaxStreams uint32
	MaxStreams     uint32
	LastPingRTT    time.Duration
	GoAway         bool
	GoAwayCode     uint32
}

// ConnFilter selects connections for Engine.Conns.
type ConnFilter struct {
	Host  string    // matched like Engine.Host's key; "" = all hosts
	State ConnState // 0 = any state
}

// hostCounters are kept as things happen, so that a snapshot is a copy and
// never a scan. Atomics, because they are bumped on paths that do not hold
// the host lock.
type hostCounters struct {
	requests, dials, dialErrors, reused, retries, queueOverflows, timeouts, errors atomic.Uint64
	streams, goAways, refusedStreams, pingFailures                                 atomic.Uint64
	timeoutsByPhase                                                                [len(phases)]atomic.Uint64
	closed                                                                         [len(closeReasons)]atomic.Uint64
}

func (c *hostCounters) snapshot() HostCounters {
	s := HostCounters{
		Requests:        c.requests.Load(),
		Dials:           c.dials.Load(),
		DialErrors:      c.dialErrors.Load(),
		Reused:          c.reused.Load(),
		Retries:         c.retries.Load(),
		QueueOverflows:  c.queueOverflows.Load(),
		Timeouts:        c.timeouts.Load(),
		Errors:          c.errors.Load(),
		Streams:         c.streams.Load(),
		GoAways:         c.goAways.Load(),
		RefusedStreams:  c.refusedStreams.Load(),
		PingFailures:    c.pingFailures.Load(),
		TimeoutsByPhase: make(map[Phase]uint64),
		Closed:          make(map[CloseReason]uint64),
	}
	for i := range c.timeoutsByPhase {
		if n := c.timeoutsByPhase[i].Load(); n > 0 {
			s.TimeoutsByPhase[phases[i]] = n
		}
	}
	for i := range c.closed {
		if n := c.closed[i].Load(); n > 0 {
			s.Closed[closeReasons[i]] = n
		}
	}
	return s
}
