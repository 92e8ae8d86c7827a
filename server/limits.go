package server

import (
	"context"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/selector"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// inFlightLimit caps HTTPService calls running at once. Over the cap a call
// fails at once with RESOURCE_EXHAUSTED instead of queueing: a caller can
// retry elsewhere, while an unbounded queue would only add latency and
// memory until everything times out.
type inFlightLimit struct {
	slots chan struct{}
}

func newInFlightLimit(n int) *inFlightLimit {
	return &inFlightLimit{slots: make(chan struct{}, n)}
}

func (l *inFlightLimit) acquire() error {
	select {
	case l.slots <- struct{}{}:
		return nil
	default:
	}
	st, err := status.New(codes.ResourceExhausted, "poold is running as many requests as --max-in-flight allows; retry later").
		WithDetails(&errdetails.ErrorInfo{Reason: ReasonOverloaded, Domain: ErrorDomain})
	if err != nil {
		return status.Error(codes.ResourceExhausted, "too many requests in flight")
	}
	return st.Err()
}

func (l *inFlightLimit) release() { <-l.slots }

// interceptors applies the limit to HTTPService only: inspecting pools and
// changing policy must keep working when traffic saturates poold.
func (l *inFlightLimit) interceptors() (grpc.UnaryServerInterceptor, grpc.StreamServerInterceptor) {
	match := selector.MatchFunc(func(_ context.Context, c interceptors.CallMeta) bool {
		return c.Service == httpServiceName
	})
	unary := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if err := l.acquire(); err != nil {
			return nil, err
		}
		defer l.release()
		return handler(ctx, req)
	}
	stream := func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if err := l.acquire(); err != nil {
			return err
		}
		defer l.release()
		return handler(srv, ss)
	}
	return selector.UnaryServerInterceptor(unary, match), selector.StreamServerInterceptor(stream, match)
}
