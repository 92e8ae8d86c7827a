package server

import (
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
)

// grpcMetrics are the gRPC server metrics Prometheus users know from
// go-grpc-middleware's provider (grpc_server_started_total,
// grpc_server_handled_total, grpc_server_msg_received_total,
// grpc_server_msg_sent_total, grpc_server_handling_seconds), with the same
// names and labels, so dashboards and alerts carry over.
//
// The provider looks every series up by its label strings on every call;
// on a daemon whose calls cost tens of microseconds, that was a measurable
// share. Here every method's series are resolved once, when the services
// are registered, and a call costs a map lookup by method name and a few
// atomic adds.
type grpcMetrics struct {
	started, handled, received, sent *prometheus.CounterVec
	handling                         *prometheus.HistogramVec

	// methods is filled by init before the server serves, read-only after.
	methods map[string]*methodMetrics
}

// methodMetrics are one method's series, resolved once.
type methodMetrics struct {
	started, received, sent prometheus.Counter
	handled                 [codes.Unauthenticated + 1]prometheus.Counter
	handling                prometheus.Observer
}

func newGRPCMetrics() *grpcMetrics {
	labels := []string{"grpc_type", "grpc_service", "grpc_method"}
	return &grpcMetrics{
		started: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grpc_server_started_total",
			Help: "Total number of RPCs started on the server.",
		}, labels),
		handled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grpc_server_handled_total",
			Help: "Total number of RPCs completed on the server, regardless of success or failure.",
		}, append(labels, "grpc_code")),
		received: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grpc_server_msg_received_total",
			Help: "Total number of RPC stream messages received on the server.",
		}, labels),
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grpc_server_msg_sent_total",
			Help: "Total number of gRPC stream messages sent by the server.",
		}, labels),
		handling: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "grpc_server_handling_seconds",
			Help:    "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
			Buckets: prometheus.DefBuckets,
		}, labels),
		methods: map[string]*methodMetrics{},
	}
}

// Describe implements prometheus.Collector.
func (m *grpcMetrics) Describe(ch chan<- *prometheus.Desc) {
	m.started.Describe(ch)
	m.handled.Describe(ch)
	m.received.Describe(ch)
	m.sent.Describe(ch)
	m.handling.Describe(ch)
}

// Collect implements prometheus.Collector.
func (m *grpcMetrics) Collect(ch chan<- prometheus.Metric) {
	m.started.Collect(ch)
	m.handled.Collect(ch)
	m.received.Collect(ch)
	m.sent.Collect(ch)
	m.handling.Collect(ch)
}

// init resolves the series of every method s serves, so that they show in
// /metrics at zero before the first call, as the provider's
// InitializeMetrics does.
func (m *grpcMetrics) init(s *grpc.Server) {
	for service, info := range s.GetServiceInfo() {
		for _, method := range info.Methods {
			typ := "unary"
			switch {
			case method.IsClientStream && method.IsServerStream:
				typ = "bidi_stream"
			case method.IsClientStream:
				typ = "client_stream"
			case method.IsServerStream:
				typ = "server_stream"
			}
			m.methods["/"+service+"/"+method.Name] = m.resolve(typ, service, method.Name)
		}
	}
}

func (m *grpcMetrics) resolve(typ, service, method string) *methodMetrics {
	mm := &methodMetrics{
		started:  m.started.WithLabelValues(typ, service, method),
		received: m.received.WithLabelValues(typ, service, method),
		sent:     m.sent.WithLabelValues(typ, service, method),
		handling: m.handling.WithLabelValues(typ, service, method),
	}
	for c := range mm.handled {
		mm.handled[c] = m.handled.WithLabelValues(typ, service, method, codes.Code(c).String())
	}
	return mm
}

// method returns the series of fullMethod ("/pkg.Service/Method"). A method
// the server does not serve (grpc-go answers it UNIMPLEMENTED without
// calling interceptors, so this is rare) is resolved on the spot.
func (m *grpcMetrics) method(fullMethod, typ string) *methodMetrics {
	if mm := m.methods[fullMethod]; mm != nil {
		return mm
	}
	service, method, _ := strings.Cut(strings.TrimPrefix(fullMethod, "/"), "/")
	return m.resolve(typ, service, method)
}

// done records the end of a call that started at start.
func (mm *methodMetrics) done(code codes.Code, start time.Time) {
	if int(code) >= len(mm.handled) {
		code = codes.Unknown
	}
	mm.handled[code].Inc()
	mm.handling.Observe(time.Since(start).Seconds())
}

// countedStream counts the messages of a streaming call.
type countedStream struct {
	grpc.ServerStream
	mm *methodMetrics
}

func (s *countedStream) SendMsg(msg any) error {
	err := s.ServerStream.SendMsg(msg)
	if err == nil {
		s.mm.sent.Inc()
	}
	return err
}

func (s *countedStream) RecvMsg(msg any) error {
	err := s.ServerStream.RecvMsg(msg)
	if err == nil {
		s.mm.received.Inc()
	}
	return err
}
