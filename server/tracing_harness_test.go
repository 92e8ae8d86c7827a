package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel/attribute"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/poold/poold/dialer"
	"github.com/poold/poold/dialer/dialertest"
	pooldv1 "github.com/poold/poold/gen/poold/v1"
	"github.com/poold/poold/pool"
)

// tracedDaemon is poold's gRPC server built by New with a tracer provider
// whose spans go to an in-memory exporter, on loopback, over an engine that
// trusts upstream certificates from roots; and a caller whose calls carry
// the trace context of a known parent span in their metadata, as an
// otelgrpc-instrumented caller sends it.
type tracedDaemon struct {
	srv      *Server
	store    *PolicyStore
	spans    *spanSink
	roots    *dialertest.CA
	http     pooldv1.HTTPServiceClient
	parent   trace.SpanContext
	tracedIn context.Context // a test context carrying parent
}

// startTracedDaemon starts one; untraced (traced false), for checking
// that nothing is then traced or propagated.
func startTracedDaemon(t *testing.T, traced bool) *tracedDaemon {
	t.Helper()
	d := &tracedDaemon{roots: dialertest.NewCA(t), spans: newSpanSink()}
	roots := x509.NewCertPool()
	roots.AddCert(d.roots.Cert)
	engine, store := newEngineAndStore(t, pool.Options{
		Dialer: &dialer.Dialer{TLSConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}},
	}, "")
	d.store = store
	cfg := Config{Engine: engine, Policies: store}
	if traced {
		// Every span is kept, whatever OTEL_TRACES_SAMPLER says in the
		// environment the tests run in.
		tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(d.spans), sdktrace.WithSampler(sdktrace.AlwaysSample()))
		t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
		cfg.TracerProvider = tp
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	d.srv = srv
	addr, _, _ := serveTest(t, srv, nil)

	// A caller with otelgrpc's client handler: the noop tracer starts no
	// span of its own, so the traceparent it sends is the parent's.
	cc, err := grpc.NewClient("passthrough:///"+addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithStatsHandler(otelgrpc.NewClientHandler(
			otelgrpc.WithTracerProvider(tracenoop.NewTracerProvider()),
			otelgrpc.WithMeterProvider(metricnoop.NewMeterProvider()),
			otelgrpc.WithPropagators(propagation.TraceContext{}),
		)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	d.http = pooldv1.NewHTTPServiceClient(cc)

	state, err := trace.ParseTraceState("caller=1")
	if err != nil {
		t.Fatal(err)
	}
	d.parent = trace.NewSpanContext(trace.SpanContextConfig{
		TraceID:    trace.TraceID{0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36},
		SpanID:     trace.SpanID{0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7},
		TraceFlags: trace.FlagsSampled,
		TraceState: state,
		Remote:     true,
	})
	d.tracedIn = trace.ContextWithSpanContext(testContext(t), d.parent)
	return d
}

// propagateTo turns propagate_trace_context on for every port of host.
func (d *tracedDaemon) propagateTo(t *testing.T, host string) {
	t.Helper()
	_, err := d.store.Update(testContext(t), &pooldv1.Policy{Name: "policies/" + host, PropagateTraceContext: ptr(true)}, nil, true)
	if err != nil {
		t.Fatal(err)
	}
}

// tlsUpstream is a loopback HTTPS server with a certificate for 127.0.0.1
// that the daemon's engine trusts.
func (d *tracedDaemon) tlsUpstream(t *testing.T, h http.HandlerFunc) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	srv.TLS = tlsConfig(t, d.roots)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

// headerRecorder is an upstream handler that answers "ok" and hands over
// the header of each request it gets.
type headerRecorder chan http.Header

func newHeaderRecorder() headerRecorder { return make(headerRecorder, 16) }

func (r headerRecorder) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	r <- req.Header.Clone()
	_, _ = w.Write([]byte("ok"))
}

// spanSink is an in-memory exporter that also says when spans arrive: a
// server span ends once the call's status is sent, which may be after the
// caller has it.
type spanSink struct {
	*tracetest.InMemoryExporter
	exported chan struct{}
}

func newSpanSink() *spanSink {
	return &spanSink{InMemoryExporter: tracetest.NewInMemoryExporter(), exported: make(chan struct{}, 1024)}
}

func (s *spanSink) ExportSpans(ctx context.Context, spans []sdktrace.ReadOnlySpan) error {
	err := s.InMemoryExporter.ExportSpans(ctx, spans)
	for range spans {
		s.exported <- struct{}{}
	}
	return err
}

// wait returns the first exported span named name, waiting for it.
func (s *spanSink) wait(t *testing.T, name string) tracetest.SpanStub {
	t.Helper()
	for {
		for _, sp := range s.GetSpans() {
			if sp.Name == name {
				return sp
			}
		}
		receive(t, s.exported, "a span named "+name)
	}
}

// waitN returns the first n exported spans named name, waiting for them.
func (s *spanSink) waitN(t *testing.T, name string, n int) []tracetest.SpanStub {
	t.Helper()
	for {
		var found []tracetest.SpanStub
		for _, sp := range s.GetSpans() {
			if sp.Name == name {
				found = append(found, sp)
			}
		}
		if len(found) >= n {
			return found[:n]
		}
		receive(t, s.exported, "spans named "+name)
	}
}

// children returns the spans whose parent is span, in the order they
// started.
func (s *spanSink) children(span tracetest.SpanStub) []tracetest.SpanStub {
	var out []tracetest.SpanStub
	for _, sp := range s.GetSpans() {
		if sp.Parent.SpanID() == span.SpanContext.SpanID() {
			out = append(out, sp)
		}
	}
	slices.SortStableFunc(out, func(a, b tracetest.SpanStub) int { return a.StartTime.Compare(b.StartTime) })
	return out
}

func spanNames(spans []tracetest.SpanStub) []string {
	names := make([]string, len(spans))
	for i, sp := range spans {
		names[i] = sp.Name
	}
	return names
}

// attrs is a span's attributes by key.
func attrs(span tracetest.SpanStub) map[attribute.Key]attribute.Value {
	m := make(map[attribute.Key]attribute.Value, len(span.Attributes))
	for _, kv := range span.Attributes {
		m[kv.Key] = kv.Value
	}
	return m
}
