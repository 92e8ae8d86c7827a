package server

import (
	"context"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/status"
)

// reasonCounter counts HTTPService calls that failed, by ErrorInfo reason,
// so that an operator sees egress denials, queue overflows and upstream
// resets apart in /metrics rather than as one gRPC code. The reasons are
// poold's own fixed set, so the label stays small.
type reasonCounter struct {
	failures *prometheus.CounterVec
	logger   *slog.Logger
}

func newReasonCounter(reg prometheus.Registerer, logger *slog.Logger) (*reasonCounter, error) {
	c := &reasonCounter{
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "poold_http_failures_total",
			Help: "HTTPService calls that did not complete, by ErrorInfo reason (see the README's error table).",
		}, []string{"reason"}),
		logger: logger,
	}
	if reg != nil {
		if err := reg.Register(c.failures); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// observe counts a failed HTTPService call, or pipelined request, by its
// ErrorInfo reason, and returns the reason.
func (c *reasonCounter) observe(ctx context.Context, method string, err error) string {
	if err == nil {
		return ""
	}
	reason := errorInfoReason(err)
	c.failures.WithLabelValues(reason).Inc()
	if reason == ReasonEgressDenied {
		// A denial is a security event: someone asked poold for an address
		// it must not reach. The detail names the IP and the rule, which
		// the caller was not told.
		c.logger.WarnContext(ctx, "egress denied", "method", method, "err", errorDetail(err))
	}
	return reason
}

// errorInfoReason is the ErrorInfo reason of a failed call's status,
// "UNKNOWN" for a status without one.
func errorInfoReason(err error) string {
	for _, d := range status.Convert(err).Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			return info.GetReason()
		}
	}
	return "UNKNOWN"
}
