package server

import (
	"net/http"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	pooldv1 "github.com/poold/poold/gen/poold/v1"
	"github.com/poold/poold/pool"
)

// timingProto reports where the final response's time went. It is read
// after the body is closed, when the engine's Total covers the whole body.
// A transport that records no timing yields only the redirect count.
func timingProto(resp *http.Response, redirects int) *pooldv1.Timing {
	out := &pooldv1.Timing{Redirects: uint32(redirects)}
	t, ok := pool.TimingFrom(resp)
	if !ok {
		return out
	}
	out.ConnectionId = t.ConnID
	out.Reused = t.Reused
	out.Attempts = uint32(max(t.Attempts, 0))
	out.RemoteAddress = t.RemoteAddr
	// Phases that did not happen stay unset rather than reading "0s", so
	// a caller can tell "no dial" from "an instant dial".
	out.IdleTime = phaseDuration(t.IdleTime)
	out.Queued = phaseDuration(t.Queued)
	out.Dns = phaseDuration(t.DNS)
	out.Connect = phaseDuration(t.Connect)
	out.TlsHandshake = phaseDuration(t.TLSHandshake)
	out.TimeToFirstByte = phaseDuration(t.TimeToFirstByte)
	out.Total = phaseDuration(t.Total)
	return out
}

func phaseDuration(d time.Duration) *durationpb.Duration {
	if d <= 0 {
		return nil
	}
	return durationpb.New(d)
}
