package server

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel/attribute"
	otelcodes "go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"

	"github.com/poold/poold/dialer"
	"github.com/poold/poold/pool"
)

// tracerName is the instrumentation scope of the spans poold makes itself.
const tracerName = "github.com/poold/poold/server"

// Span names of the phases of an upstream request, after the Timing fields
// that measure them.
const (
	spanQueued          = "poold.queued"
	spanDNS             = "poold.dns"
	spanConnect         = "poold.connect"
	spanTLSHandshake    = "poold.tls_handshake"
	spanTimeToFirstByte = "poold.time_to_first_byte"
)

// Attributes poold adds to the semantic conventions' own.
const (
	attrPoolKey       = attribute.Key("poold.pool.key")
	attrConnectionID  = attribute.Key("poold.connection.id")
	attrReused        = attribute.Key("poold.connection.reused")
	attrRedirects     = attribute.Key("poold.redirects")
	attrErrorPhase    = attribute.Key("poold.error.phase")
	attrErrorDialStep = attribute.Key("poold.error.dial_step")
	attrPipelineID    = attribute.Key("poold.pipeline.request_id")
)

// traceContext is the only propagator poold speaks, in both directions:
// W3C traceparent and tracestate.
var traceContext propagation.TextMapPropagator = propagation.TraceContext{}

// tracingServerOptions is what makes the gRPC server trace: otelgrpc's
// stats handler, which continues the caller's trace from the traceparent
// in its metadata with a server span per call. Without a provider there is
// no handler at all, so an untraced poold pays nothing per call. The
// provider and propagator are given, not looked up in otel's globals, and
// otelgrpc's metrics go nowhere: poold's metrics are its Prometheus ones.
func tracingServerOptions(tp trace.TracerProvider) []grpc.ServerOption {
	if tp == nil {
		return nil
	}
	return []grpc.ServerOption{grpc.StatsHandler(otelgrpc.NewServerHandler(
		otelgrpc.WithTracerProvider(tp),
		otelgrpc.WithPropagators(traceContext),
		otelgrpc.WithMeterProvider(noop.NewMeterProvider()),
		otelgrpc.WithFilter(tracedMethod),
	))}
}

// tracedMethod leaves out health checks and reflection: a load balancer
// polls health every few seconds, and a trace of each poll would bury the
// requests.
func tracedMethod(info *stats.RPCTagInfo) bool {
	m := info.FullMethodName
	return !strings.HasPrefix(m, "/grpc.health.") && !strings.HasPrefix(m, "/grpc.reflection.")
}

// callTracer is what HTTPService adds to traces: on the span of each
// request (the server span of Do and Stream, a span of its own for each
// pipelined request), what was asked and what came back, a child span
// for each phase the response's Timing measures, and on failure the
// phase that failed. nil when poold does not trace.
type callTracer struct {
	tracer trace.Tracer
	// propagate reports whether the effective policy for u sends the trace
	// context upstream.
	propagate func(u *url.URL) bool
}

func newCallTracer(tp trace.TracerProvider, engine *pool.Engine) *callTracer {
	if tp == nil {
		return nil
	}
	return &callTracer{
		tracer: tp.Tracer(tracerName),
		propagate: func(u *url.URL) bool {
			return engine.EffectivePolicy(u.Scheme, u.Host).PropagateTraceContext
		},
	}
}

// startPipelined starts the span of one request of a Pipeline, a child of
// the stream's server span: the stream carries many requests, and each
// needs a span of its own for its attributes and phases. It is a client
// span, named by method as the HTTP conventions name one.
func (t *callTracer) startPipelined(ctx context.Context, id uint64, method string) (context.Context, trace.Span) {
	if method == "" {
		method = http.MethodGet
	}
	if _, known := knownMethods[method]; !known {
		method = "HTTP"
	}
	// As a string: an id is any uint64 the caller picks, and an int64
	// attribute would show the upper half negative.
	return t.tracer.Start(ctx, method, trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(attrPipelineID.String(strconv.FormatUint(id, 10))))
}

// endPipelined ends the span startPipelined began. A pipelined request
// that failed did not complete, which is an error of its span; poold's
// reason for it is the error type.
func (t *callTracer) endPipelined(span trace.Span, err error) {
	if err != nil && span.IsRecording() {
		span.SetStatus(otelcodes.Error, status.Convert(err).Message())
		span.SetAttributes(semconv.ErrorTypeKey.String(errorInfoReason(err)))
	}
	span.End()
}

// knownMethods are the methods the HTTP conventions name as they are; any
// other is "_OTHER", with the method in http.request.method_original.
var knownMethods = map[string]struct{}{
	http.MethodGet: {}, http.MethodHead: {}, http.MethodPost: {}, http.MethodPut: {}, http.MethodDelete: {},
	http.MethodConnect: {}, http.MethodOptions: {}, http.MethodTrace: {}, http.MethodPatch: {},
}

// request records what the caller asked for on the request's span. The
// URL loses its query, fragment and user info, any of which may hold a
// secret. A server span's server.address is poold's own (otelgrpc sets
// it); only a pipelined request's client span names the upstream there.
func (t *callTracer) request(ctx context.Context, req *http.Request, client bool) {
	span := trace.SpanFromContext(ctx)
	if !span.IsRecording() {
		return
	}
	u := req.URL
	attrs := make([]attribute.KeyValue, 0, 5)
	if _, known := knownMethods[req.Method]; known {
		attrs = append(attrs, semconv.HTTPRequestMethodKey.String(req.Method))
	} else {
		attrs = append(attrs, semconv.HTTPRequestMethodOther, semconv.HTTPRequestMethodOriginal(req.Method))
	}
	attrs = append(attrs, semconv.URLFull((&url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path, RawPath: u.RawPath}).String()))
	if client {
		port, _ := strconv.Atoi(effectivePort(u))
		attrs = append(attrs, semconv.ServerAddress(u.Hostname()), semconv.ServerPort(port))
	}
	span.SetAttributes(attrs...)
}

// responded records the final response on the request's span, and each
// phase of it that happened as a child span at the time it happened.
func (t *callTracer) responded(ctx context.Context, resp *http.Response, redirects int) {
	span := trace.SpanFromContext(ctx)
	if !span.IsRecording() {
		return
	}
	attrs := []attribute.KeyValue{semconv.HTTPResponseStatusCode(resp.StatusCode)}
	if redirects > 0 {
		attrs = append(attrs, attrRedirects.Int(redirects))
	}
	tm, ok := pool.TimingFrom(resp)
	if !ok {
		span.SetAttributes(attrs...)
		return
	}
	attrs = append(attrs, attrPoolKey.String(tm.PoolKey), attrConnectionID.Int64(int64(tm.ConnID)), attrReused.Bool(tm.Reused))
	if tm.Attempts > 1 {
		attrs = append(attrs, semconv.HTTPRequestResendCount(tm.Attempts-1))
	}
	span.SetAttributes(attrs...)

	// A fresh conn's dial may have begun before this request did (another
	// request started it and left): its spans then start before their
	// parent, which is when it happened.
	t.phase(ctx, spanQueued, tm.GotConn.Add(-tm.Queued), tm.Queued)
	dns := tm.DialStart
	connect := dns.Add(tm.DNS)
	handshake := connect.Add(tm.Connect)
	t.phase(ctx, spanDNS, dns, tm.DNS)
	t.phase(ctx, spanConnect, connect, tm.Connect)
	t.phase(ctx, spanTLSHandshake, handshake, tm.TLSHandshake)
	t.phase(ctx, spanTimeToFirstByte, tm.WriteStart, tm.TimeToFirstByte)
}

// phase records one phase as a child of ctx's span; a phase that did not
// happen (no start, or no time) has none.
func (t *callTracer) phase(ctx context.Context, name string, start time.Time, d time.Duration) {
	if start.IsZero() || d <= 0 {
		return
	}
	_, span := t.tracer.Start(ctx, name, trace.WithTimestamp(start))
	span.End(trace.WithTimestamp(start.Add(d)))
}

// failed records on the request's span why the request did not complete:
// poold's reason as the error type, and the phase and dial step that
// failed. The gRPC status is otelgrpc's to record (endPipelined's for a
// pipelined request).
func (t *callTracer) failed(ctx context.Context, cause, st error) {
	span := trace.SpanFromContext(ctx)
	if !span.IsRecording() {
		return
	}
	attrs := []attribute.KeyValue{semconv.ErrorTypeKey.String(errorInfoReason(st))}
	var perr *pool.Error
	if errors.As(cause, &perr) {
		attrs = append(attrs, attrErrorPhase.String(string(perr.Phase)))
	}
	var derr *dialer.Error
	if errors.As(cause, &derr) {
		attrs = append(attrs, attrErrorDialStep.String(string(derr.Step)))
	}
	span.SetAttributes(attrs...)
}

// propagatingTransport sends the trace context of each request's span
// upstream, as traceparent and tracestate headers, when the effective
// policy of the request's host says so. Each hop of a redirect is judged
// by its own host's policy. A traceparent the caller put in the headers is
// the caller's to send and goes as it is.
type propagatingTransport struct {
	next   http.RoundTripper
	tracer *callTracer
}

var _ http.RoundTripper = (*propagatingTransport)(nil)

func (t *propagatingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if _, set := req.Header["Traceparent"]; set || !trace.SpanContextFromContext(req.Context()).IsValid() || !t.tracer.propagate(req.URL) {
		return t.next.RoundTrip(req)
	}
	// A RoundTripper must not change the request it is given: the
	// redirect that follows is built from it.
	out := req.WithContext(req.Context())
	out.Header = req.Header.Clone()
	if out.Header == nil {
		out.Header = http.Header{}
	}
	traceContext.Inject(req.Context(), propagation.HeaderCarrier(out.Header))
	return t.next.RoundTrip(out)
}
