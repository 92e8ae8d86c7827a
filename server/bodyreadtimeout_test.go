package server

import (
	"net/http"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	pooldv1 "github.com/poold/poold/gen/poold/v1"
	"github.com/poold/poold/pool"
)

// A 1-byte-a-second upstream fails at body_read_timeout, for Do and Stream
// alike, as DEADLINE_EXCEEDED BODY_READ_TIMEOUT.
func TestADrippingUpstreamFailsAtBodyReadTimeout(t *testing.T) {
	drip := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "100")
		w.WriteHeader(http.StatusOK)
		for range 100 {
			if _, err := w.Write([]byte("x")); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			select {
			case <-time.After(time.Second):
			case <-r.Context().Done():
				return
			}
		}
	})
	h := newHTTPHarness(t, withPolicy(pool.Policy{BodyReadTimeout: ptr(500 * time.Millisecond)}))
	_, err := h.client.Do(testContext(t), &pooldv1.DoRequest{Url: drip.URL})
	wantStatus(t, err, codes.DeadlineExceeded, ReasonBodyReadTimeout)
	if md := errorInfo(err).GetMetadata(); md["phase"] != "body" || md[MetadataMayHaveReachedUpstream] != "true" {
		t.Errorf("ErrorInfo metadata %v, want phase body, marked as reached", md)
	}
	res, err := h.stream(t, testContext(t), &pooldv1.DoRequest{Url: drip.URL}, "")
	wantStatus(t, err, codes.DeadlineExceeded, ReasonBodyReadTimeout)
	if res.bodyLen < 1 {
		t.Errorf("Stream passed on %d bytes before failing, want what came", res.bodyLen)
	}
}
