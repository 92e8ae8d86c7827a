package server

import (
	"fmt"
	"sync/atomic"

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

// byteBudget bounds the response bytes that Do and Pipeline hold in memory
// at once, across all callers: each buffers a whole body, so without it the
// in-flight cap times the body limit (4096 × 16 MiB by default) could be
// held at once. A body is charged as it is read and released once its
// response has been handed to gRPC. Stream buffers no body and is not
// charged. A nil budget admits everything.
type byteBudget struct {
	limit int64
	used  atomic.Int64
}

// newByteBudget returns a budget of n bytes; n <= 0 means none (nil).
func newByteBudget(n int64) *byteBudget {
	if n <= 0 {
		return nil
	}
	return &byteBudget{limit: n}
}

// take charges n bytes, or reports false if they do not fit.
func (b *byteBudget) take(n int64) bool {
	if b == nil || n <= 0 {
		return true
	}
	for {
		u := b.used.Load()
		if u+n > b.limit {
			return false
		}
		if b.used.CompareAndSwap(u, u+n) {
			return true
		}
	}
}

// give returns n charged bytes.
func (b *byteBudget) give(n int64) {
	if b != nil && n > 0 {
		b.used.Add(-n)
	}
}

// full reports whether nothing more fits, so that a call can be refused
// before its request is sent.
func (b *byteBudget) full() bool { return b != nil && b.used.Load() >= b.limit }

// errBufferBudget is a Do body that did not fit the byte budget.
type errBufferBudget struct{ limit int64 }

func (e *errBufferBudget) Error() string {
	return fmt.Sprintf("poold holds as many response bodies as --max-buffered-bytes (%d) allows; retry later, or use Stream", e.limit)
}
