package server

import (
	"net/http"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	pooldv1 "github.com/poold/poold/gen/poold/v1"
	"github.com/poold/poold/pool"
)

// timingSlab is a Timing with room for its durations, so that filling one
// costs no allocation of its own.
type timingSlab struct {
	pooldv1.Timing
	durations [7]durationpb.Duration
}

// timingProto reports where the final response's time went. It is read
// after the body is closed, when the engine's Total covers the whole body.
// A transport that records no timing yields only the redirect count.
func timingProto(resp *http.Response, redirects int) *pooldv1.Timing {
	s := new(timingSlab)
	s.fill(resp, redirects)
	return &s.Timing
}

// fill sets s from the engine's timing of resp.
func (s *timingSlab) fill(resp *http.Response, redirects int) {
	out := &s.Timing
	out.Redirects = uint32(redirects)
	t, ok := pool.TimingFrom(resp)
	if !ok {
		return
	}
	out.ConnectionId = t.ConnID
	out.Reused = t.Reused
	out.Attempts = uint32(max(t.Attempts, 0))
	out.RemoteAddress = t.RemoteAddr
	// Phases that did not happen stay unset rather than reading "0s", so
	// a caller can tell "no dial" from "an instant dial".
	out.IdleTime = s.duration(0, t.IdleTime)
	out.Queued = s.duration(1, t.Queued)
	out.Dns = s.duration(2, t.DNS)
	out.Connect = s.duration(3, t.Connect)
	out.TlsHandshake = s.duration(4, t.TLSHandshake)
	out.TimeToFirstByte = s.duration(5, t.TimeToFirstByte)
	out.Total = s.duration(6, t.Total)
}

// duration is durationpb.New(d) in the slab's slot i, or nil for a phase
// that took no time.
func (s *timingSlab) duration(i int, d time.Duration) *durationpb.Duration {
	if d <= 0 {
		return nil
	}
	p := &s.durations[i]
	p.Seconds, p.Nanos = int64(d/time.Second), int32(d%time.Second)
	return p
}
