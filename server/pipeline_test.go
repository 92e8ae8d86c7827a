package server

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/poold/poold/dialer"
	pooldv1 "github.com/poold/poold/gen/poold/v1"
)

// denyPort is an egress rule that refuses one port and allows the rest.
type denyPort uint16

func (p denyPort) CheckEgress(host string, addr netip.AddrPort) error {
	if addr.Port() == uint16(p) {
		return fmt.Errorf("port %d is closed to egress: %w", p, dialer.ErrEgressDenied)
	}
	return nil
}

func withEgress(check dialer.EgressChecker) func(*harnessConfig) {
	return func(c *harnessConfig) { c.pool.Dialer = &dialer.Dialer{Egress: check} }
}

// pipelineOutcome is what one pipelined request must come back as.
type pipelineOutcome struct {
	status int // HTTP status of a response, 0 for an error
	code   codes.Code
	reason string
}

// mixedUpstream answers /ok/ID with ID, /missing with 404, /reset by
// breaking the response part way and /stall not until the request is
// abandoned.
func mixedUpstream(t *testing.T) string {
	t.Helper()
	reset := hijackAfter("HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial")
	return upstream(t, func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasPrefix(r.URL.Path, "/ok/"):
			_, _ = io.WriteString(w, strings.TrimPrefix(r.URL.Path, "/ok/"))
		case r.URL.Path == "/missing":
			http.NotFound(w, r)
		case r.URL.Path == "/reset":
			reset(w, r)
		case r.URL.Path == "/stall":
			<-r.Context().Done()
		}
	}).URL
}

func TestPipelineAnswersEveryRequestOnceWhateverItsOutcome(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })

	base := mixedUpstream(t)
	denied := closedPort(t)
	deniedPort, _ := strconv.Atoi(denied[strings.LastIndex(denied, ":")+1:])
	h := newHTTPHarness(t, withEgress(denyPort(deniedPort)))

	// Each kind of request, the message that asks for it and the outcome
	// Do would give it. A cancel is a stalled request followed by a cancel
	// of its id.
	kinds := []struct {
		name   string
		req    func(id uint64) *pooldv1.DoRequest
		cancel bool
		want   pipelineOutcome
	}{
		{"200", func(id uint64) *pooldv1.DoRequest {
			return &pooldv1.DoRequest{Url: base + "/ok/" + strconv.FormatUint(id, 10)}
		}, false, pipelineOutcome{status: 200}},
		{"404", func(uint64) *pooldv1.DoRequest { return &pooldv1.DoRequest{Url: base + "/missing"} }, false, pipelineOutcome{status: 404}},
		{"upstream reset", func(uint64) *pooldv1.DoRequest { return &pooldv1.DoRequest{Url: base + "/reset"} }, false, pipelineOutcome{code: codes.Aborted, reason: ReasonUpstreamReset}},
		{"egress denied", func(uint64) *pooldv1.DoRequest { return &pooldv1.DoRequest{Url: "http://" + denied + "/"} }, false, pipelineOutcome{code: codes.PermissionDenied, reason: ReasonEgressDenied}},
		{"timeout", func(uint64) *pooldv1.DoRequest {
			return &pooldv1.DoRequest{Url: base + "/stall", Timeout: durationpb.New(20 * time.Millisecond)}
		}, false, pipelineOutcome{code: codes.DeadlineExceeded, reason: ReasonRequestTimeout}},
		{"cancel", func(uint64) *pooldv1.DoRequest { return &pooldv1.DoRequest{Url: base + "/stall"} }, true, pipelineOutcome{code: codes.Canceled, reason: ReasonCanceled}},
		{"200 again", func(id uint64) *pooldv1.DoRequest {
			return &pooldv1.DoRequest{Url: base + "/ok/" + strconv.FormatUint(id, 10)}
		}, false, pipelineOutcome{status: 200}},
	}

	const n = 10_000
	stream, err := h.client.Pipeline(testContext(t))
	if err != nil {
		t.Fatalf("Pipeline: %v", err)
	}
	sent := make(chan error, 1)
	go func() {
		sent <- func() error {
			for i := range uint64(n) {
				// Ids need not be dense or ordered: spread them.
				id := i*7919 + 1
				k := kinds[i%uint64(len(kinds))]
				if err := stream.Send(&pooldv1.PipelineRequest{Id: id, Request: k.req(id)}); err != nil {
					return err
				}
				if k.cancel {
					if err := stream.Send(&pooldv1.PipelineRequest{Id: id, Cancel: true}); err != nil {
						return err
					}
				}
			}
			return stream.CloseSend()
		}()
	}()

	seen := make(map[uint64]bool, n)
	counts := map[string]int{}
	for {
		out, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("Recv after %d answers: %v", len(seen), err)
		}
		id := out.GetId()
		if id%7919 != 1 || id/7919 >= n {
			t.Fatalf("answer for id %d, which was never sent", id)
		}
		if seen[id] {
			t.Fatalf("id %d answered twice", id)
		}
		seen[id] = true
		k := kinds[(id/7919)%uint64(len(kinds))]
		counts[k.name]++
		if k.want.status != 0 {
			if out.GetError() != nil {
				t.Fatalf("id %d (%s): error %v, want HTTP %d", id, k.name, status.FromProto(out.GetError()).Err(), k.want.status)
			}
			if got := out.GetResponse().GetStatusCode(); got != int32(k.want.status) {
				t.Fatalf("id %d (%s): HTTP %d, want %d", id, k.name, got, k.want.status)
			}
			if k.want.status == 200 && string(out.GetResponse().GetBody()) != strconv.FormatUint(id, 10) {
				t.Fatalf("id %d got the body %q of another request", id, out.GetResponse().GetBody())
			}
			continue
		}
		if out.GetResponse() != nil {
			t.Fatalf("id %d (%s): HTTP %d, want %v", id, k.name, out.GetResponse().GetStatusCode(), k.want.code)
		}
		wantStatus(t, status.FromProto(out.GetError()).Err(), k.want.code, k.want.reason)
	}
	if err := <-sent; err != nil {
		t.Fatalf("sending: %v", err)
	}
	if len(seen) != n {
		t.Fatalf("%d of %d requests answered", len(seen), n)
	}
	t.Logf("answers by kind: %v", counts)
}

// pipelineCall opens a Pipeline on h and returns it with its depth.
func openPipeline(t *testing.T, h *httpHarness) (pooldv1.HTTPService_PipelineClient, int) {
	t.Helper()
	stream, err := h.client.Pipeline(testContext(t))
	if err != nil {
		t.Fatalf("Pipeline: %v", err)
	}
	md, err := stream.Header()
	if err != nil {
		t.Fatalf("Header: %v", err)
	}
	depth, err := strconv.Atoi(strings.Join(md.Get(PipelineDepthHeader), ""))
	if err != nil {
		t.Fatalf("header %s = %q: %v", PipelineDepthHeader, md.Get(PipelineDepthHeader), err)
	}
	return stream, depth
}

func recvAnswer(t *testing.T, stream pooldv1.HTTPService_PipelineClient) *pooldv1.PipelineResponse {
	t.Helper()
	out, err := stream.Recv()
	if err != nil {
		t.Fatalf("Recv: %v", err)
	}
	return out
}

func TestPipelineRejectsABadMessageAndGoesOn(t *testing.T) {
	s := newStall(t)
	up := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/stall" {
			s.ServeHTTP(w, r)
			return
		}
		_, _ = io.WriteString(w, "ok")
	})
	h := newHTTPHarness(t)
	stream, _ := openPipeline(t, h)

	send := func(m *pooldv1.PipelineRequest) {
		t.Helper()
		if err := stream.Send(m); err != nil {
			t.Fatalf("Send: %v", err)
		}
	}
	send(&pooldv1.PipelineRequest{Id: 1, Request: &pooldv1.DoRequest{Url: up.URL + "/stall"}})
	receive(t, s.started, "the first request to start")
	send(&pooldv1.PipelineRequest{Id: 1, Request: &pooldv1.DoRequest{Url: up.URL + "/"}})
	out := recvAnswer(t, stream)
	if out.GetId() != 1 {
		t.Fatalf("first answer is for id %d, want the duplicate 1", out.GetId())
	}
	wantFieldViolation(t, status.FromProto(out.GetError()).Err(), "id")

	send(&pooldv1.PipelineRequest{Id: 2})
	out = recvAnswer(t, stream)
	if out.GetId() != 2 {
		t.Fatalf("answer is for id %d, want 2", out.GetId())
	}
	wantFieldViolation(t, status.FromProto(out.GetError()).Err(), "request")

	send(&pooldv1.PipelineRequest{Id: 3, Request: &pooldv1.DoRequest{Url: "ftp://example.com/"}})
	out = recvAnswer(t, stream)
	wantFieldViolation(t, status.FromProto(out.GetError()).Err(), "url")

	// A cancel for an id that is not running is no error and no answer.
	send(&pooldv1.PipelineRequest{Id: 99, Cancel: true})
	send(&pooldv1.PipelineRequest{Id: 1, Cancel: true})
	out = recvAnswer(t, stream)
	if out.GetId() != 1 {
		t.Fatalf("answer is for id %d, want the canceled 1", out.GetId())
	}
	wantStatus(t, status.FromProto(out.GetError()).Err(), codes.Canceled, ReasonCanceled)

	send(&pooldv1.PipelineRequest{Id: 4, Request: &pooldv1.DoRequest{Url: up.URL + "/"}})
	if out = recvAnswer(t, stream); out.GetId() != 4 || out.GetResponse().GetStatusCode() != 200 {
		t.Fatalf("after the bad messages: answer %v, want id 4 with HTTP 200", out)
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatalf("CloseSend: %v", err)
	}
	if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("after the half-close: %v, want the call to end OK", err)
	}
}

func TestPipelineRunsAtMostItsDepthAndCountsEachRequestInFlight(t *testing.T) {
	// Each stream's requests go to a path of their own, to be released
	// one at a time.
	started := make(chan struct{}, 8)
	release := map[string]chan struct{}{"/first": make(chan struct{}), "/second": make(chan struct{})}
	done := make(chan struct{})
	t.Cleanup(func() { close(done) })
	up := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		started <- struct{}{}
		select {
		case <-release[r.URL.Path]:
		case <-r.Context().Done():
		case <-done:
		}
	})
	h := newHTTPHarness(t, func(c *harnessConfig) {
		c.http.PipelineDepth = 2
		c.http.MaxInFlight = 3
	})
	first, depth := openPipeline(t, h)
	if depth != 2 {
		t.Fatalf("announced depth %d, want 2", depth)
	}
	for id := range uint64(3) {
		if err := first.Send(&pooldv1.PipelineRequest{Id: id, Request: &pooldv1.DoRequest{Url: up.URL + "/first"}}); err != nil {
			t.Fatalf("Send: %v", err)
		}
	}
	receive(t, started, "a first request to start")
	receive(t, started, "a second request to start")
	// The third waits for a slot, so the stream holds two of the three
	// in-flight places and a second stream gets one before it is full.
	second, _ := openPipeline(t, h)
	for id := range uint64(2) {
		if err := second.Send(&pooldv1.PipelineRequest{Id: id, Request: &pooldv1.DoRequest{Url: up.URL + "/second"}}); err != nil {
			t.Fatalf("Send: %v", err)
		}
	}
	receive(t, started, "the second stream's first request")
	out := recvAnswer(t, second)
	if out.GetId() != 1 {
		t.Fatalf("second stream: answer for id %d, want 1 refused", out.GetId())
	}
	wantStatus(t, status.FromProto(out.GetError()).Err(), codes.ResourceExhausted, ReasonOverloaded)
	select {
	case <-started:
		t.Fatal("a third request started on a stream of depth 2")
	default:
	}

	// The second stream's request completes, then one of the first's: a
	// slot frees, and the waiting request starts.
	release["/second"] <- struct{}{}
	if out := recvAnswer(t, second); out.GetId() != 0 || out.GetResponse().GetStatusCode() != 200 {
		t.Fatalf("second stream: answer %v, want id 0 with HTTP 200", out)
	}
	release["/first"] <- struct{}{}
	if out := recvAnswer(t, first); out.GetResponse().GetStatusCode() != 200 {
		t.Fatalf("first stream: answer %v, want HTTP 200", out)
	}
	receive(t, started, "the waiting request to start once a slot freed")
}
