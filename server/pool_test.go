package server

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	pooldv1 "github.com/poold/poold/gen/poold/v1"
	"github.com/poold/poold/pool"
)

func TestConnectionsShowTheirHTTP2State(t *testing.T) {
	created := time.Date(2026, 12, 7, 6, 0, 0, 0, time.UTC)
	tests := []struct {
		name string
		in   pool.ConnInfo
		want *pooldv1.Connection
	}{
		{
			name: "an HTTP/1.1 conn shows no HTTP/2 fields",
			in: pool.ConnInfo{ID: 1, Host: "http://a.example:80", State: pool.ConnIdle, Protocol: "HTTP/1.1",
				LocalAddr: "127.0.0.1:5000", RemoteAddr: "127.0.0.1:80", Created: created, Requests: 3},
			want: &pooldv1.Connection{Id: 1, Host: "http://a.example:80", State: pooldv1.ConnectionState_CONNECTION_STATE_IDLE,
				Protocol: "HTTP/1.1", LocalAddress: "127.0.0.1:5000", RemoteAddress: "127.0.0.1:80",
				CreatedTime: timestamppb.New(created), Requests: 3},
		},
		{
			name: "an HTTP/2 conn shows its streams, limits and last PING",
			in: pool.ConnInfo{ID: 2, Host: "https://a.example:443", State: pool.ConnActive, Protocol: "HTTP/2.0", ALPN: "h2",
				Created: created, ActiveStreams: 7, PendingStreams: 2, PeerMaxStreams: 250, MaxStreams: 100,
				LastPingRTT: 1500 * time.Microsecond},
			want: &pooldv1.Connection{Id: 2, Host: "https://a.example:443", State: pooldv1.ConnectionState_CONNECTION_STATE_ACTIVE,
				Protocol: "HTTP/2.0", Alpn: "h2", CreatedTime: timestamppb.New(created), ActiveStreams: 7,
				PendingStreams: 2, PeerMaxStreams: 250, MaxStreams: 100, LastPingRtt: durationpb.New(1500 * time.Microsecond)},
		},
		{
			name: "a GOAWAY with NO_ERROR is named, not left blank",
			in: pool.ConnInfo{ID: 3, State: pool.ConnClosing, Protocol: "HTTP/2.0", Created: created,
				ActiveStreams: 1, MaxStreams: 100, GoAway: true, GoAwayCode: 0},
			want: &pooldv1.Connection{Id: 3, State: pooldv1.ConnectionState_CONNECTION_STATE_CLOSING, Protocol: "HTTP/2.0",
				CreatedTime: timestamppb.New(created), ActiveStreams: 1, MaxStreams: 100, Goaway: true, GoawayErrorCode: "NO_ERROR"},
		},
		{
			name: "a GOAWAY's code is named as RFC 9113 names it",
			in:   pool.ConnInfo{ID: 4, State: pool.ConnClosing, Protocol: "HTTP/2.0", Created: created, GoAway: true, GoAwayCode: 0xb},
			want: &pooldv1.Connection{Id: 4, State: pooldv1.ConnectionState_CONNECTION_STATE_CLOSING, Protocol: "HTTP/2.0",
				CreatedTime: timestamppb.New(created), Goaway: true, GoawayErrorCode: "ENHANCE_YOUR_CALM"},
		},
		{
			name: "a code RFC 9113 does not define is shown in hex",
			in:   pool.ConnInfo{ID: 5, State: pool.ConnClosing, Protocol: "HTTP/2.0", Created: created, GoAway: true, GoAwayCode: 0x1f},
			want: &pooldv1.Connection{Id: 5, State: pooldv1.ConnectionState_CONNECTION_STATE_CLOSING, Protocol: "HTTP/2.0",
				CreatedTime: timestamppb.New(created), Goaway: true, GoawayErrorCode: "0x1f"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, connProto(tt.in), protocmp.Transform()); diff != "" {
				t.Errorf("connProto (-want +got):\n%s", diff)
			}
		})
	}
}

func TestHostsShowTheirHTTP2CountsAndEveryCloseReason(t *testing.T) {
	in := pool.HostStats{
		Key: "https://a.example:443", Active: 2, Idle: 1, H2Conns: 2, Streams: 9, Policy: "default",
		Counters: pool.HostCounters{
			Requests: 40, Streams: 30, GoAways: 2, RefusedStreams: 3, PingFailures: 1,
			Closed: map[pool.CloseReason]uint64{
				pool.CloseGoAway: 2, pool.ClosePingTimeout: 1, pool.CloseProtocolError: 4, pool.CloseIdleTimeout: 5,
			},
			TimeoutsByPhase: map[pool.Phase]uint64{},
		},
	}
	want := &pooldv1.Host{
		Key: "https://a.example:443", Active: 2, Idle: 1, H2Conns: 2, Streams: 9, Policy: defaultPolicyName,
		Counters: &pooldv1.HostCounters{
			Requests: 40, Streams: 30, Goaways: 2, RefusedStreams: 3, PingFailures: 1,
			Closed:          map[string]uint64{"goaway": 2, "ping_timeout": 1, "protocol_error": 4, "idle_timeout": 5},
			TimeoutsByPhase: map[string]uint64{},
		},
	}
	if diff := cmp.Diff(want, hostProto(in), protocmp.Transform()); diff != "" {
		t.Errorf("hostProto (-want +got):\n%s", diff)
	}
}

// The close reasons are strings in the API, so a new one needs no
// conversion, but operators read the list in HostCounters.closed's comment
// (grpcurl describe): it must name every reason the engine gives.
func TestTheDocumentedCloseReasonsAreTheEnginesReasons(t *testing.T) {
	reasons := []pool.CloseReason{
		pool.CloseIdleTimeout, pool.CloseMaxLifetime, pool.CloseMaxRequests, pool.CloseIdleLimit,
		pool.CloseServerClosed, pool.CloseUnusable, pool.CloseError, pool.CloseCanceled, pool.CloseDrain,
		pool.ClosePolicy, pool.CloseShutdown, pool.CloseEgress, pool.CloseGoAway, pool.ClosePingTimeout,
		pool.CloseProtocolError,
	}
	doc := apiComment(t, "poold.v1.HostCounters.closed")
	for _, r := range reasons {
		if !strings.Contains(doc, string(r)) {
			t.Errorf("HostCounters.closed's comment does not name %q:\n%s", r, doc)
		}
	}
}

// apiComment is the leading comment of an API element, as grpcurl
// describe shows it.
func apiComment(t *testing.T, name protoreflect.FullName) string {
	t.Helper()
	files, err := newDocumentedFiles()
	if err != nil {
		t.Fatal(err)
	}
	d, err := files.FindDescriptorByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return d.ParentFile().SourceLocations().ByDescriptor(d).LeadingComments
}

func TestEveryEngineEventKindHasTheAPIKindOfTheSameName(t *testing.T) {
	for k := pool.EventKind(1); k.String() != "unknown"; k++ {
		pk, ok := eventKindToProto[k]
		if !ok {
			t.Errorf("engine event %s has no API kind", k)
			continue
		}
		if name := strings.ToLower(strings.TrimPrefix(pk.String(), "EVENT_KIND_")); name != k.String() {
			t.Errorf("engine event %s is sent as %s", k, pk)
		}
		if back := eventKindFromProto[pk]; back != k {
			t.Errorf("a filter on %s selects engine event %s, want %s", pk, back, k)
		}
	}
	for v := range pooldv1.EventKind_name {
		pk := pooldv1.EventKind(v)
		if _, ok := eventKindFromProto[pk]; !ok {
			t.Errorf("API kind %s cannot be used as a filter", pk)
		}
	}
}

func TestHTTP2EventsAreSentWithTheirKind(t *testing.T) {
	at := time.Date(2026, 12, 7, 6, 0, 0, 0, time.UTC)
	tests := []struct {
		kind pool.EventKind
		want pooldv1.EventKind
	}{
		{pool.EventGoAway, pooldv1.EventKind_EVENT_KIND_GOAWAY},
		{pool.EventPingFailed, pooldv1.EventKind_EVENT_KIND_PING_FAILED},
		{pool.EventRefusedStream, pooldv1.EventKind_EVENT_KIND_REFUSED_STREAM},
	}
	for _, tt := range tests {
		t.Run(tt.kind.String(), func(t *testing.T) {
			ev := pool.Event{Time: at, Kind: tt.kind, Host: "https://a.example:443", ConnID: 7, Detail: "ENHANCE_YOUR_CALM"}
			want := &pooldv1.Event{Time: timestamppb.New(at), Kind: tt.want, Host: "https://a.example:443", ConnectionId: 7, Detail: "ENHANCE_YOUR_CALM"}
			if diff := cmp.Diff(want, eventProto(ev), protocmp.Transform()); diff != "" {
				t.Errorf("eventProto (-want +got):\n%s", diff)
			}
		})
	}
}
