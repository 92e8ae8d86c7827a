package server

import (
	"context"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	pooldv1 "github.com/poold/poold/gen/poold/v1"
)

// watchMethods are the server streams that run until the caller leaves:
// they carry no work to finish, so shutdown ends them instead of waiting.
var watchMethods = map[string]bool{
	"/" + healthpb.Health_ServiceDesc.ServiceName + "/Watch":           true,
	"/" + pooldv1.PoolService_ServiceDesc.ServiceName + "/WatchEvents": true,
}

// watchEnder ends the watch streams once shutdown reaches them.
type watchEnder struct {
	ctx context.Context // done once watches must end
	end context.CancelFunc
}

func newWatchEnder() *watchEnder {
	ctx, cancel := context.WithCancel(context.Background())
	return &watchEnder{ctx: ctx, end: cancel}
}

// intercept gives a watch stream a context that also ends with the
// watches, and tells its caller why it ended: UNAVAILABLE, reason
// SHUTTING_DOWN, which a watcher takes as "reconnect, elsewhere".
func (w *watchEnder) intercept(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if !watchMethods[info.FullMethod] {
		return handler(srv, ss)
	}
	ctx, cancel := context.WithCancel(ss.Context())
	defer cancel()
	stop := context.AfterFunc(w.ctx, cancel)
	defer stop()
	err := handler(srv, &ctxStream{ServerStream: ss, ctx: ctx})
	if w.ctx.Err() != nil && ss.Context().Err() == nil {
		return shuttingDown()
	}
	return err
}

// ctxStream is a ServerStream with a context of its own.
type ctxStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *ctxStream) Context() context.Context { return s.ctx }

// shuttingDown is the status of a call poold ends because it is stopping.
func shuttingDown() error {
	st, err := status.New(codes.Unavailable, "poold is shutting down").WithDetails(&errdetails.ErrorInfo{Reason: ReasonShuttingDown, Domain: ErrorDomain})
	if err != nil {
		return status.Error(codes.Unavailable, "poold is shutting down")
	}
	return st.Err()
}

// Shutdown stops the server in the order load balancers need. Health goes
// NOT_SERVING at once; for delay the listeners keep accepting and serving,
// so that a balancer polling health stops sending before anything is
// refused. Then every watch stream (WatchEvents, health Watch) ends with
// UNAVAILABLE, every Pipeline stops taking requests and ends once those it
// runs are answered, and the calls in flight get until grace to finish
// before every connection is cut.
func (s *Server) Shutdown(delay, grace time.Duration) {
	s.Health.Shutdown()
	if delay > 0 {
		time.Sleep(delay)
	}
	s.watches.end()
	s.http.Drain()
	done := make(chan struct{})
	go func() {
		s.GRPC.GracefulStop()
		close(done)
	}()
	timer := time.NewTimer(grace)
	defer timer.Stop()
	select {
	case <-done:
	case <-timer.C:
		s.GRPC.Stop()
		<-done
	}
}

// Stop is Shutdown with no delay.
func (s *Server) Stop(grace time.Duration) { s.Shutdown(0, grace) }
