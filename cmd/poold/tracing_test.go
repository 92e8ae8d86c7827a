package main

import (
	"context"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	pooldv1 "github.com/poold/poold/gen/poold/v1"
)

func TestTracingIsOnOnlyWhenTheEnvironmentAsksForIt(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		want    bool
		wantErr string // the variable the error must name; "" for none
	}{
		{"unset", nil, false, ""},
		{"exporter none", map[string]string{"OTEL_TRACES_EXPORTER": "none"}, false, ""},
		{"exporter none beats an endpoint", map[string]string{"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, false, ""},
		{"endpoint set", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, true, ""},
		{"traces endpoint set", map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://collector:4317"}, true, ""},
		{"exporter otlp", map[string]string{"OTEL_TRACES_EXPORTER": "otlp"}, true, ""},
		{"exporter OTLP in capitals", map[string]string{"OTEL_TRACES_EXPORTER": "OTLP"}, true, ""},
		{"the SDK disabled", map[string]string{"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, false, ""},
		{"a ratio sampler", map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25"}, true, ""},
		{"gRPC named as the protocol", map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, true, ""},
		{"a bad sampler while off is not looked at", map[string]string{"OTEL_TRACES_SAMPLER": "sometimes"}, false, ""},

		{"unknown exporter", map[string]string{"OTEL_TRACES_EXPORTER": "zipkin"}, false, "OTEL_TRACES_EXPORTER"},
		{"a list of exporters", map[string]string{"OTEL_TRACES_EXPORTER": "otlp,console"}, false, "OTEL_TRACES_EXPORTER"},
		{"OTLP over HTTP", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, false, "OTEL_EXPORTER_OTLP_PROTOCOL"},
		{"OTLP over HTTP for traces", map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"}, false, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"},
		{"an endpoint that is no URL", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:43 17"}, false, "OTEL_EXPORTER_OTLP_ENDPOINT"},
		{"unknown sampler", map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_TRACES_SAMPLER": "sometimes"}, false, "OTEL_TRACES_SAMPLER"},
		{"ratio over one", map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"}, false, "OTEL_TRACES_SAMPLER_ARG"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tracingFromEnv(func(k string) string { return tt.env[k] })
			if tt.wantErr == "" {
				if err != nil || got != tt.want {
					t.Fatalf("tracingFromEnv = %v, %v; want %v, nil", got, err, tt.want)
				}
				return
			}
			var uerr *usageError
			if !errors.As(err, &uerr) || !strings.Contains(err.Error(), tt.wantErr) || got {
				t.Fatalf("tracingFromEnv = %v, %v; want a usage error naming %s", got, err, tt.wantErr)
			}
		})
	}
}

func TestABadTracingVariableExitsTwoNamingIt(t *testing.T) {
	var stderr strings.Builder
	env := map[string]string{"OTEL_TRACES_EXPORTER": "jaeger"}
	err := run(context.Background(), nil, func(k string) string { return env[k] }, io.Discard, &stderr)
	if code := exitCode(err); code != 2 {
		t.Fatalf("exit code = %d (err %v), want 2", code, err)
	}
	if !strings.Contains(stderr.String(), `"jaeger" for OTEL_TRACES_EXPORTER`) {
		t.Errorf("stderr = %q, want it to name OTEL_TRACES_EXPORTER and its value", stderr.String())
	}
}

// otlpCollector is an OTLP/gRPC trace collector on loopback that keeps
// what it is sent.
type otlpCollector struct {
	collectortrace.UnimplementedTraceServiceServer
	addr string

	mu    sync.Mutex
	spans []*tracepb.ResourceSpans // guarded by mu
}

func startCollector(t *testing.T) *otlpCollector {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &otlpCollector{addr: lis.Addr().String()}
	srv := grpc.NewServer()
	collectortrace.RegisterTraceServiceServer(srv, c)
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(lis)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-served
	})
	return c
}

func (c *otlpCollector) Export(_ context.Context, req *collectortrace.ExportTraceServiceRequest) (*collectortrace.ExportTraceServiceResponse, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.spans = append(c.spans, req.GetResourceSpans()...)
	return &collectortrace.ExportTraceServiceResponse{}, nil
}

// received returns every span received, by name, with its resource's
// service.name.
func (c *otlpCollector) received() map[string][]collectedSpan {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string][]collectedSpan{}
	for _, rs := range c.spans {
		service := ""
		for _, kv := range rs.GetResource().GetAttributes() {
			if kv.GetKey() == "service.name" {
				service = kv.GetValue().GetStringValue()
			}
		}
		for _, ss := range rs.GetScopeSpans() {
			for _, sp := range ss.GetSpans() {
				out[sp.GetName()] = append(out[sp.GetName()], collectedSpan{service: service, span: sp})
			}
		}
	}
	return out
}

type collectedSpan struct {
	service string
	span    *tracepb.Span
}

// The batch exporter holds spans for seconds before it sends them; a
// daemon that exited without flushing would lose the last of them. This
// one's spans are at the collector by the time run returns.
func TestATracingDaemonHasSentItsSpansWhenItExits(t *testing.T) {
	collector := startCollector(t)
	env := map[string]string{
		"OTEL_TRACES_EXPORTER":        "otlp",
		"OTEL_EXPORTER_OTLP_ENDPOINT": "http://" + collector.addr,
		"OTEL_SERVICE_NAME":           "poold-e2e",
		"OTEL_TRACES_SAMPLER":         "parentbased_always_on",
	}
	// The exporter and the SDK read the process environment themselves;
	// run reads env.
	for k, v := range env {
		t.Setenv(k, v)
	}
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") }))
	t.Cleanup(upstream.Close)

	d := startDaemonEnv(t, env)
	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	ctx := metadata.AppendToOutgoingContext(testContext(t), "traceparent", "00-"+traceID+"-00f067aa0ba902b7-01")
	if _, err := d.clients().http.Do(ctx, &pooldv1.DoRequest{Url: upstream.URL + "/"}); err != nil {
		t.Fatal(err)
	}
	d.stop(t)

	got := collector.received()
	do := got["poold.v1.HTTPService/Do"]
	if len(do) != 1 {
		t.Fatalf("the collector got %d Do spans, want 1; it got %d span names", len(do), len(got))
	}
	if do[0].service != "poold-e2e" {
		t.Errorf("service.name = %q, want OTEL_SERVICE_NAME's poold-e2e", do[0].service)
	}
	if id := hex.EncodeToString(do[0].span.GetTraceId()); id != traceID {
		t.Errorf("Do span is in trace %s, want the caller's %s", id, traceID)
	}
	for _, phase := range []string{"poold.connect", "poold.time_to_first_byte"} {
		if len(got[phase]) != 1 {
			t.Errorf("the collector got %d %s spans, want 1", len(got[phase]), phase)
		}
	}
}

func TestAMalformedResourceAttributeStopsTheDaemonNamingTheVariable(t *testing.T) {
	// The SDK reads the process environment itself.
	t.Setenv("OTEL_RESOURCE_ATTRIBUTES", "team")
	tp, err := newTracerProvider(context.Background(), slog.New(slog.DiscardHandler))
	if err == nil {
		_ = tp.Shutdown(context.Background())
		t.Fatal("a resource attribute without a value was accepted")
	}
	var uerr *usageError
	if !errors.As(err, &uerr) || !strings.Contains(err.Error(), "OTEL_RESOURCE_ATTRIBUTES") {
		t.Errorf("error %v, want a usage error naming OTEL_RESOURCE_ATTRIBUTES", err)
	}
}
