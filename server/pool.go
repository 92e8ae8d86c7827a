package server

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	pooldv1 "github.com/poold/poold/gen/poold/v1"
	"github.com/poold/poold/pool"
)

var _ pooldv1.PoolServiceServer = (*PoolServer)(nil)

// Page sizes for ListHosts and ListConnections.
const (
	defaultPageSize = 100
	maxPageSize     = 1000
)

// PoolServer serves PoolService from the engine's introspection.
type PoolServer struct {
	pooldv1.UnimplementedPoolServiceServer
	engine *pool.Engine
}

// NewPoolServer returns a PoolService backed by engine.
func NewPoolServer(engine *pool.Engine) *PoolServer {
	return &PoolServer{engine: engine}
}

// ListHosts returns host pools ordered by key, a page at a time.
func (s *PoolServer) ListHosts(ctx context.Context, req *pooldv1.ListHostsRequest) (*pooldv1.ListHostsResponse, error) {
	size, err := pageSize(req.GetPageSize())
	if err != nil {
		return nil, err
	}
	after, err := decodePageToken(req.GetPageToken(), "hosts")
	if err != nil {
		return nil, err
	}
	hosts := s.engine.Hosts()
	start := sort.Search(len(hosts), func(i int) bool { return hosts[i].Key > after })
	if after == "" {
		start = 0
	}
	resp := &pooldv1.ListHostsResponse{}
	for _, h := range hosts[start:] {
		if len(resp.Hosts) == size {
			resp.NextPageToken = encodePageToken("hosts", resp.Hosts[len(resp.Hosts)-1].GetKey())
			break
		}
		resp.Hosts = append(resp.Hosts, hostProto(h))
	}
	return resp, nil
}

// GetHost returns one host pool.
func (s *PoolServer) GetHost(ctx context.Context, req *pooldv1.GetHostRequest) (*pooldv1.Host, error) {
	if strings.TrimSpace(req.GetKey()) == "" {
		return nil, invalidArgument(fieldViolation{"key", "must name a host, e.g. api.example.com, api.example.com:443 or https://api.example.com:443"})
	}
	h, ok := s.engine.Host(req.GetKey())
	if !ok {
		return nil, status.Errorf(codes.NotFound, "no pool for host %q: poold has sent it no request", req.GetKey())
	}
	return hostProto(h), nil
}

// ListConnections returns connections ordered by ID, a page at a time.
func (s *PoolServer) ListConnections(ctx context.Context, req *pooldv1.ListConnectionsRequest) (*pooldv1.ListConnectionsResponse, error) {
	size, err := pageSize(req.GetPageSize())
	if err != nil {
		return nil, err
	}
	state, ok := connStateFromProto[req.GetState()]
	if !ok {
		return nil, invalidArgument(fieldViolation{"state", fmt.Sprintf("unknown connection state %d", req.GetState())})
	}
	token, err := decodePageToken(req.GetPageToken(), "conns")
	if err != nil {
		return nil, err
	}
	var after uint64
	if token != "" {
		if after, err = strconv.ParseUint(token, 10, 64); err != nil {
			return nil, invalidArgument(fieldViolation{"page_token", "not a token this server issued"})
		}
	}
	conns := s.engine.Conns(pool.ConnFilter{Host: req.GetHost(), State: state})
	start := sort.Search(len(conns), func(i int) bool { return conns[i].ID > after })
	resp := &pooldv1.ListConnectionsResponse{}
	for _, c := range conns[start:] {
		if len(resp.Connections) == size {
			last := resp.Connections[len(resp.Connections)-1].GetId()
			resp.NextPageToken = encodePageToken("conns", strconv.FormatUint(last, 10))
			break
		}
		resp.Connections = append(resp.Connections, connProto(c))
	}
	return resp, nil
}

// WatchEvents streams events until the caller cancels or the daemon stops.
// The engine never waits for a slow watcher: it drops events for it and
// later sends one EVENTS_DROPPED with the count.
func (s *PoolServer) WatchEvents(req *pooldv1.WatchEventsRequest, stream pooldv1.PoolService_WatchEventsServer) error {
	filter := pool.EventFilter{Host: req.GetHost()}
	for i, k := range req.GetKinds() {
		kind, ok := eventKindFromProto[k]
		if !ok {
			return invalidArgument(fieldViolation{fmt.Sprintf("kinds[%d]", i), fmt.Sprintf("unknown event kind %d", k)})
		}
		if kind != 0 {
			filter.Kinds = append(filter.Kinds, kind)
		}
	}
	ctx := stream.Context()
	events := s.engine.Subscribe(ctx, filter)
	for {
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case ev, ok := <-events:
			if !ok {
				if ctx.Err() != nil {
					return status.FromContextError(ctx.Err()).Err()
				}
				return status.Error(codes.Unavailable, "poold is shutting down")
			}
			if err := stream.Send(eventProto(ev)); err != nil {
				return err
			}
		}
	}
}

// CloseIdleConnections closes idle connections of one host or all.
func (s *PoolServer) CloseIdleConnections(ctx context.Context, req *pooldv1.CloseIdleConnectionsRequest) (*pooldv1.CloseIdleConnectionsResponse, error) {
	n := s.engine.CloseIdle(req.GetHost())
	return &pooldv1.CloseIdleConnectionsResponse{Closed: uint32(n)}, nil
}

// DrainConnections closes idle connections and retires active ones.
func (s *PoolServer) DrainConnections(ctx context.Context, req *pooldv1.DrainConnectionsRequest) (*pooldv1.DrainConnectionsResponse, error) {
	idle, draining := s.engine.Drain(req.GetHost())
	return &pooldv1.DrainConnectionsResponse{ClosedIdle: uint32(idle), Draining: uint32(draining)}, nil
}

func pageSize(n int32) (int, error) {
	switch {
	case n < 0:
		return 0, invalidArgument(fieldViolation{"page_size", "must not be negative"})
	case n == 0:
		return defaultPageSize, nil
	case n > maxPageSize:
		return maxPageSize, nil
	}
	return int(n), nil
}

// Page tokens are opaque to callers; the kind prefix stops a ListHosts token
// from being replayed against ListConnections.
func encodePageToken(kind, after string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(kind + ":" + after))
}

func decodePageToken(token, kind string) (string, error) {
	if token == "" {
		return "", nil
	}
	raw, err := base64.RawURLEncoding.DecodeString(token)
	after, ok := strings.CutPrefix(string(raw), kind+":")
	if err != nil || !ok || after == "" {
		return "", invalidArgument(fieldViolation{"page_token", "not a token this server issued for this call"})
	}
	return after, nil
}

func hostProto(h pool.HostStats) *pooldv1.Host {
	c := h.Counters
	closed := make(map[string]uint64, len(c.Closed))
	for reason, n := range c.Closed {
		closed[string(reason)] = n
	}
	byPhase := make(map[string]uint64, len(c.TimeoutsByPhase))
	for phase, n := range c.TimeoutsByPhase {
		byPhase[string(phase)] = n
	}
	return &pooldv1.Host{
		Key:     h.Key,
		Active:  uint32(h.Active),
		Idle:    uint32(h.Idle),
		Dialing: uint32(h.Dialing),
		Pending: uint32(h.Pending),
		H2Conns: uint32(h.H2Conns),
		Streams: uint32(h.Streams),
		Counters: &pooldv1.HostCounters{
			Requests:        c.Requests,
			Dials:           c.Dials,
			DialErrors:      c.DialErrors,
			Reused:          c.Reused,
			Retries:         c.Retries,
			QueueOverflows:  c.QueueOverflows,
			Timeouts:        c.Timeouts,
			Errors:          c.Errors,
			Streams:         c.Streams,
			Goaways:         c.GoAways,
			RefusedStreams:  c.RefusedStreams,
			PingFailures:    c.PingFailures,
			Closed:          closed,
			TimeoutsByPhase: byPhase,
		},
		Policy: poolPolicyName(h.Policy),
	}
}

// policyName turns an effective policy's source ("default" or a host
// pattern) into its resource name.
func poolPolicyName(source string) string {
	if source == "" {
		source = "default"
	}
	return "policies/" + source
}

var connStateToProto = map[pool.ConnState]pooldv1.ConnectionState{
	pool.ConnDialing: pooldv1.ConnectionState_CONNECTION_STATE_DIALING,
	pool.ConnActive:  pooldv1.ConnectionState_CONNECTION_STATE_ACTIVE,
	pool.ConnIdle:    pooldv1.ConnectionState_CONNECTION_STATE_IDLE,
	pool.ConnClosing: pooldv1.ConnectionState_CONNECTION_STATE_CLOSING,
}

var connStateFromProto = map[pooldv1.ConnectionState]pool.ConnState{
	pooldv1.ConnectionState_CONNECTION_STATE_UNSPECIFIED: 0,
	pooldv1.ConnectionState_CONNECTION_STATE_DIALING:     pool.ConnDialing,
	pooldv1.ConnectionState_CONNECTION_STATE_ACTIVE:      pool.ConnActive,
	pooldv1.ConnectionState_CONNECTION_STATE_IDLE:        pool.ConnIdle,
	pooldv1.ConnectionState_CONNECTION_STATE_CLOSING:     pool.ConnClosing,
}

func connProto(c pool.ConnInfo) *pooldv1.Connection {
	pc := &pooldv1.Connection{
		Id:             c.ID,
		Host:           c.Host,
		State:          connStateToProto[c.State],
		Protocol:       c.Protocol,
		LocalAddress:   c.LocalAddr,
		RemoteAddress:  c.RemoteAddr,
		Alpn:           c.ALPN,
		Requests:       c.Requests,
		BytesRead:      c.BytesRead,
		BytesWritten:   c.BytesWritten,
		ActiveStreams:  uint32(c.ActiveStreams),
		PendingStreams: uint32(c.PendingStreams),
		PeerMaxStreams: c.PeerMaxStreams,
		MaxStreams:     c.MaxStreams,
		Goaway:         c.GoAway,
	}
	if c.GoAway {
		pc.GoawayErrorCode = h2CodeName(c.GoAwayCode)
	}
	if c.LastPingRTT > 0 {
		pc.LastPingRtt = durationpb.New(c.LastPingRTT)
	}
	if c.TLSVersion != 0 {
		pc.TlsVersion = tls.VersionName(c.TLSVersion)
		pc.TlsCipherSuite = tls.CipherSuiteName(c.TLSCipherSuite)
	}
	if !c.Created.IsZero() {
		pc.CreatedTime = timestamppb.New(c.Created)
	}
	if !c.LastUsed.IsZero() {
		pc.LastUsedTime = timestamppb.New(c.LastUsed)
	}
	return pc
}

var eventKindToProto = map[pool.EventKind]pooldv1.EventKind{
	pool.EventDialed:        pooldv1.EventKind_EVENT_KIND_DIALED,
	pool.EventDialFailed:    pooldv1.EventKind_EVENT_KIND_DIAL_FAILED,
	pool.EventReused:        pooldv1.EventKind_EVENT_KIND_REUSED,
	pool.EventIdle:          pooldv1.EventKind_EVENT_KIND_IDLE,
	pool.EventClosed:        pooldv1.EventKind_EVENT_KIND_CLOSED,
	pool.EventQueued:        pooldv1.EventKind_EVENT_KIND_QUEUED,
	pool.EventQueueOverflow: pooldv1.EventKind_EVENT_KIND_QUEUE_OVERFLOW,
	pool.EventPolicyChanged: pooldv1.EventKind_EVENT_KIND_POLICY_CHANGED,
	pool.EventsDropped:      pooldv1.EventKind_EVENT_KIND_EVENTS_DROPPED,
	pool.EventGoAway:        pooldv1.EventKind_EVENT_KIND_GOAWAY,
	pool.EventPingFailed:    pooldv1.EventKind_EVENT_KIND_PING_FAILED,
	pool.EventRefusedStream: pooldv1.EventKind_EVENT_KIND_REFUSED_STREAM,
}

var eventKindFromProto = func() map[pooldv1.EventKind]pool.EventKind {
	m := map[pooldv1.EventKind]pool.EventKind{pooldv1.EventKind_EVENT_KIND_UNSPECIFIED: 0}
	for k, v := range eventKindToProto {
		m[v] = k
	}
	return m
}()

func eventProto(ev pool.Event) *pooldv1.Event {
	pe := &pooldv1.Event{
		Time:         timestamppb.New(ev.Time),
		Kind:         eventKindToProto[ev.Kind],
		Host:         ev.Host,
		ConnectionId: ev.ConnID,
		Reason:       ev.Reason,
		Detail:       ev.Detail,
	}
	if ev.Kind == pool.EventsDropped && pe.Detail == "" {
		pe.Detail = fmt.Sprintf("%d events dropped: this watcher read too slowly", ev.Dropped)
	}
	return pe
}

// h2CodeName names an HTTP/2 error code as RFC 9113 section 7 does
// ("NO_ERROR", "ENHANCE_YOUR_CALM"), the engine's names for it.
func h2CodeName(code uint32) string {
	return (&pool.StreamResetError{Code: code}).CodeName()
}
