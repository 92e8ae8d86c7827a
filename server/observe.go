package server

import (
	"context"
	"log/slog"
	"strings"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// callObserver is the outermost interceptor: it sees every call's outcome,
// auth failures and recovered panics included, and keeps the gRPC metrics,
// the failure counts by reason and the log of failed calls. A call that
// succeeds costs a few atomic adds; only a failure builds log fields, and
// only when the logger would keep the line. A line for every call is the
// access log's job (--access-log), not this.
type callObserver struct {
	metrics *grpcMetrics
	reasons *reasonCounter
	logger  *slog.Logger
	// quiet leaves failed calls to the access log, which logs every call
	// at the level of its code already.
	quiet bool
}

func (o *callObserver) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	mm := o.metrics.method(info.FullMethod, "unary")
	mm.started.Inc()
	mm.received.Inc()
	start := time.Now()
	resp, err := handler(ctx, req)
	if err == nil {
		mm.sent.Inc()
		mm.done(codes.OK, start)
		return resp, nil
	}
	code := status.Code(err)
	mm.done(code, start)
	o.failed(ctx, info.FullMethod, code, err, start)
	return resp, err
}

func (o *callObserver) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	typ := "server_stream"
	switch {
	case info.IsClientStream && info.IsServerStream:
		typ = "bidi_stream"
	case info.IsClientStream:
		typ = "client_stream"
	}
	mm := o.metrics.method(info.FullMethod, typ)
	mm.started.Inc()
	start := time.Now()
	err := handler(srv, &countedStream{ServerStream: ss, mm: mm})
	code := status.Code(err)
	mm.done(code, start)
	if err != nil {
		o.failed(ss.Context(), info.FullMethod, code, err, start)
	}
	return err
}

// failed counts a failed call by reason and logs it at the level its code
// deserves: a caller's mistake at info, a fault on the way to the upstream
// at warn, poold's own fault at error.
func (o *callObserver) failed(ctx context.Context, method string, code codes.Code, err error, start time.Time) {
	if strings.HasPrefix(method, "/"+httpServiceName+"/") && o.reasons.observe(ctx, method, err) == ReasonEgressDenied {
		return // logged by observe, with what the caller was not told
	}
	level := slog.Level(logging.DefaultServerCodeToLevel(code))
	if o.quiet || !o.logger.Enabled(ctx, level) {
		return
	}
	o.logger.Log(ctx, level, "call failed",
		"grpc.method", method,
		"grpc.code", code.String(),
		"grpc.error", errorDetail(err),
		"grpc.time_ms", float64(time.Since(start).Microseconds())/1000)
}
