package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
)

// traceFlushTimeout bounds the flush of buffered spans at shutdown: a
// collector that does not answer must not hold the exit up.
const traceFlushTimeout = 5 * time.Second

// tracingFromEnv decides from OpenTelemetry's standard variables whether
// poold traces, as every other OpenTelemetry SDK decides: only when
// OTEL_TRACES_EXPORTER names an exporter, or, with it unset, when an OTLP
// endpoint is given. OTEL_SDK_DISABLED=true and OTEL_TRACES_EXPORTER=none
// turn tracing off whatever else is set. The SDK and the exporter read the
// variables themselves; this checks first those they would misread or
// silently ignore, so that a mistake stops poold with the variable named
// instead of losing every span.
func tracingFromEnv(getenv func(string) string) (bool, error) {
	if strings.EqualFold(strings.TrimSpace(getenv("OTEL_SDK_DISABLED")), "true") {
		return false, nil
	}
	switch exporter := strings.ToLower(strings.TrimSpace(getenv("OTEL_TRACES_EXPORTER"))); exporter {
	case "none":
		return false, nil
	case "otlp":
	case "":
		if getenv("OTEL_EXPORTER_OTLP_ENDPOINT") == "" && getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") == "" {
			return false, nil
		}
	default:
		return false, envError("OTEL_TRACES_EXPORTER", exporter, `poold exports traces over OTLP only: want "otlp", or "none" for no tracing`)
	}
	for _, name := range []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"} {
		if v := strings.TrimSpace(getenv(name)); v != "" {
			if _, err := url.Parse(v); err != nil {
				return false, envError(name, v, "want a URL such as http://collector:4317")
			}
		}
	}
	for _, name := range []string{"OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"} {
		if v := strings.TrimSpace(getenv(name)); v != "" && !strings.EqualFold(v, "grpc") {
			return false, envError(name, v, `poold sends OTLP over gRPC only: want "grpc" (and a collector's gRPC port, usually 4317)`)
		}
	}
	if err := checkSampler(getenv); err != nil {
		return false, err
	}
	return true, nil
}

// checkSampler accepts the samplers the SDK knows, which it would
// otherwise replace by its default with nothing but a log line.
func checkSampler(getenv func(string) string) error {
	sampler := strings.ToLower(strings.TrimSpace(getenv("OTEL_TRACES_SAMPLER")))
	switch sampler {
	case "", "always_on", "always_off", "parentbased_always_on", "parentbased_always_off":
		return nil
	case "traceidratio", "parentbased_traceidratio":
		arg := strings.TrimSpace(getenv("OTEL_TRACES_SAMPLER_ARG"))
		if arg == "" {
			return nil
		}
		if r, err := strconv.ParseFloat(arg, 64); err != nil || r < 0 || r > 1 {
			return envError("OTEL_TRACES_SAMPLER_ARG", arg, "want the ratio of traces sampled, from 0 to 1")
		}
		return nil
	default:
		return envError("OTEL_TRACES_SAMPLER", sampler, "want always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off or parentbased_traceidratio")
	}
}

func envError(name, value, why string) error {
	return &usageError{msg: fmt.Sprintf("invalid value %q for %s: %s", value, name, why)}
}

// newTracerProvider starts the tracer provider poold's spans go through:
// batched to an OTLP/gRPC exporter configured by OTEL_EXPORTER_OTLP_*, in
// a resource named by OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES
// (service.name "poold" by default), sampled as OTEL_TRACES_SAMPLER says
// (parent-based, always on, by default). The exporter connects lazily: a
// collector that is down loses spans, not the daemon. The caller shuts the
// provider down, which flushes what is buffered.
func newTracerProvider(ctx context.Context, logger *slog.Logger) (*sdktrace.TracerProvider, error) {
	res, err := resource.New(ctx,
		resource.WithAttributes(semconv.ServiceName("poold")),
		resource.WithFromEnv(),
		resource.WithTelemetrySDK(),
	)
	if err != nil {
		// Of what resource.New reads, only OTEL_RESOURCE_ATTRIBUTES can be
		// malformed.
		return nil, &usageError{msg: fmt.Sprintf("invalid value for OTEL_RESOURCE_ATTRIBUTES: %v (want key=value pairs, comma-separated)", err)}
	}
	exporter, err := otlptracegrpc.New(ctx)
	if err != nil {
		return nil, fmt.Errorf("tracing: OTLP exporter: %w", err)
	}
	// The SDK reports failed exports through otel's one error handler,
	// which would write to the standard logger; they belong in poold's
	// log. A process has one handler, and this process is poold.
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
		logger.Warn("tracing", "err", err)
	}))
	return sdktrace.NewTracerProvider(sdktrace.WithBatcher(exporter), sdktrace.WithResource(res)), nil
}

// flushTraces shuts tp down, sending the spans it still holds, within
// traceFlushTimeout.
func flushTraces(tp *sdktrace.TracerProvider, logger *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), traceFlushTimeout)
	defer cancel()
	if err := tp.Shutdown(ctx); err != nil {
		logger.Warn("flushing traces", "err", err)
	}
}
