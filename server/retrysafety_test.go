package server

import (
	"context"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	pooldv1 "github.com/poold/poold/gen/poold/v1"
)

// retryOnUnavailable is the service config a careful caller deploys: retry
// every HTTPService call that fails UNAVAILABLE, as gRPC's retry design
// suggests for "safe to retry as is".
const retryOnUnavailable = `{"methodConfig": [{
  "name": [{"service": "poold.v1.HTTPService"}],
  "retryPolicy": {
    "maxAttempts": 4,
    "initialBackoff": "0.01s",
    "maxBackoff": "0.05s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"]
  }
}]}`

// A stock grpc-go client that retries UNAVAILABLE must not send a request
// twice that the upstream may have acted on: the failure of a POST the
// upstream read before it reset the connection is ABORTED, marked as
// possibly delivered. The refused connect beside it shows that the retry
// policy is live, so the single attempt is poold's doing.
func TestRetryingClientSendsARequestTheUpstreamReadOnce(t *testing.T) {
	var upstreamSaw atomic.Int64
	resetting := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.Copy(io.Discard, r.Body); err != nil {
			return
		}
		upstreamSaw.Add(1)
		c, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			panic(err)
		}
		_ = c.(*net.TCPConn).SetLinger(0) // close with RST
		_ = c.Close()
	})
	refused := closedPort(t)

	var calls atomic.Int64
	h := newHTTPHarness(t, func(c *harnessConfig) {
		c.client = append(c.client, grpc.WithDefaultServiceConfig(retryOnUnavailable))
		c.server = append(c.server, grpc.ChainUnaryInterceptor(
			func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
				calls.Add(1)
				return handler(ctx, req)
			}))
	})

	for _, tc := range []struct {
		name      string
		url       string
		code      codes.Code
		reason    string
		delivered bool
		calls     int64 // Do calls poold saw: the client's attempts
	}{
		{"read, then reset", resetting.URL + "/orders", codes.Aborted, ReasonUpstreamReset, true, 1},
		{"refused", "http://" + refused + "/orders", codes.Unavailable, ReasonConnectionRefused, false, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			calls.Store(0)
			upstreamSaw.Store(0)
			_, err := h.client.Do(testContext(t), &pooldv1.DoRequest{
				Method: http.MethodPost,
				Url:    tc.url,
				Body:   []byte(`{"item": "one order, exactly once"}`),
			})
			wantStatus(t, err, tc.code, tc.reason)
			md := errorInfo(err).GetMetadata()
			if got := md[MetadataMayHaveReachedUpstream] == "true"; got != tc.delivered {
				t.Errorf("ErrorInfo metadata %v: %s = %q, want it set: %v", md, MetadataMayHaveReachedUpstream, md[MetadataMayHaveReachedUpstream], tc.delivered)
			}
			if got := calls.Load(); got != tc.calls {
				t.Errorf("the client made %d attempts, want %d", got, tc.calls)
			}
			if tc.delivered {
				if got := upstreamSaw.Load(); got != 1 {
					t.Errorf("the upstream read the POST %d times, want once", got)
				}
			}
		})
	}
}
