package server

import (
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// inFlightLimit caps upstream requests running at once: Do and Stream
// calls, and each request of a Pipeline. Over the cap a request fails at
// once with RESOURCE_EXHAUSTED instead of queueing: a caller can retry
// elsewhere, while an unbounded queue would only add latency and memory
// until everything times out. PoolService and PolicyService are not
// counted: inspecting pools and changing policy must keep working when
// traffic saturates poold. A nil limit admits everything.
type inFlightLimit struct {
	slots chan struct{}
}

// newInFlightLimit returns a limit of n; n <= 0 means none (nil).
func newInFlightLimit(n int) *inFlightLimit {
	if n <= 0 {
		return nil
	}
	return &inFlightLimit{slots: make(chan struct{}, n)}
}

func (l *inFlightLimit) acquire() error {
	if l == nil {
		return nil
	}
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

func (l *inFlightLimit) release() {
	if l != nil {
		<-l.slots
	}
}
