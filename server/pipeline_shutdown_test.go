package server

import (
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pooldv1 "github.com/poold/poold/gen/poold/v1"
	"github.com/poold/poold/pool"
)

// On shutdown an open Pipeline finishes what it runs, answers what comes
// after with SHUTTING_DOWN without running it, and ends, instead of holding
// shutdown for as long as its caller keeps it open.
func TestShutdownDrainsAnOpenPipeline(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	var ran atomic.Int64
	up := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		ran.Add(1)
		if r.URL.Path == "/slow" {
			started <- struct{}{}
			<-release
		}
		w.Write([]byte("done"))
	})

	engine, store := newEngineAndStore(t, pool.Options{}, "")
	srv, err := New(Config{Engine: engine, Policies: store})
	if err != nil {
		t.Fatal(err)
	}
	_, cc, served := serveTest(t, srv, nil)

	ctx := testContext(t)
	stream, err := pooldv1.NewHTTPServiceClient(cc).Pipeline(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&pooldv1.PipelineRequest{Id: 1, Request: &pooldv1.DoRequest{Url: up.URL + "/slow"}}); err != nil {
		t.Fatal(err)
	}
	receive(t, started, "the slow request to reach the upstream")

	const grace = time.Minute
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		srv.Shutdown(0, grace)
	}()
	// Once the drain has begun, a new request is answered without running.
	var late *pooldv1.PipelineResponse
	for late == nil {
		if err := stream.Send(&pooldv1.PipelineRequest{Id: 2, Request: &pooldv1.DoRequest{Url: up.URL + "/late"}}); err != nil {
			t.Fatalf("sending during the drain: %v", err)
		}
		r, err := stream.Recv()
		if err != nil {
			t.Fatalf("receiving during the drain: %v", err)
		}
		if r.GetId() != 2 {
			t.Fatalf("got an answer for id %d before the slow request was let go", r.GetId())
		}
		if st := status.FromProto(r.GetError()); st.Code() == codes.Unavailable && errorReason(st) == ReasonShuttingDown {
			late = r
		} else if r.GetError() == nil {
			// The drain had not begun: the request ran. Try again.
			continue
		} else {
			t.Fatalf("id 2: %v, want UNAVAILABLE SHUTTING_DOWN", st.Err())
		}
	}
	ranBefore := ran.Load()
	close(release)
	r, err := stream.Recv()
	if err != nil || r.GetId() != 1 || r.GetResponse().GetStatusCode() != http.StatusOK {
		t.Fatalf("the slow request: %v, %v; want its 200", r, err)
	}
	if _, err := stream.Recv(); status.Code(err) != codes.Unavailable {
		t.Errorf("the stream ended with %v, want UNAVAILABLE", err)
	}
	select {
	case <-stopped:
	case <-time.After(grace / 2):
		t.Fatal("Shutdown still waits for the Pipeline its caller keeps open")
	}
	<-served
	if ran.Load() != ranBefore {
		t.Errorf("a request answered SHUTTING_DOWN ran at the upstream")
	}
}
