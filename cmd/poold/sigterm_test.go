package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	pooldv1 "github.com/poold/poold/gen/poold/v1"
)

// startPooldBinary runs the built daemon with args on loopback ports and
// returns the command and its gRPC address once it reports listening.
func startPooldBinary(t *testing.T, bin string, args ...string) (*exec.Cmd, string) {
	t.Helper()
	cmd, grpcAddr, _ := startPooldBinaryHTTP(t, bin, args...)
	return cmd, grpcAddr
}

// startPooldBinaryHTTP is startPooldBinary that also returns the address
// of /metrics.
func startPooldBinaryHTTP(t *testing.T, bin string, args ...string) (cmd *exec.Cmd, grpcAddr, httpAddr string) {
	t.Helper()
	return launchPoold(t, bin, nil, args...)
}

// launchPoold starts the daemon binary on loopback ports the kernel picks
// and waits for its "poold listening" line; every later line of its log
// goes to logLine, if set. The process is killed and reaped when the test
// ends.
func launchPoold(t *testing.T, bin string, logLine func(string), args ...string) (cmd *exec.Cmd, grpcAddr, httpAddr string) {
	t.Helper()
	args = append([]string{"--listen=127.0.0.1:0", "--http-listen=127.0.0.1:0", "--log-format=json"}, args...)
	cmd = exec.Command(bin, args...)
	cmd.Env = []string{} // no proxy or POOLD_* settings from the environment
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	sc := bufio.NewScanner(stderr)
	for grpcAddr == "" && sc.Scan() {
		var line struct{ Msg, GRPC, HTTP string }
		if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "poold listening" {
			grpcAddr, httpAddr = line.GRPC, line.HTTP
		}
	}
	if grpcAddr == "" {
		t.Fatal("poold never reported listening")
	}
	go func() {
		for logLine != nil && sc.Scan() {
			logLine(sc.Text())
		}
		io.Copy(io.Discard, stderr)
	}()
	return cmd, grpcAddr, httpAddr
}

func TestSIGTERMLetsEveryInFlightRequestFinishAndRefusesNewOnes(t *testing.T) {
	const (
		inFlight = 200
		hold     = time.Second
		grace    = 10 * time.Second
	)
	// The upstream holds every request for a second and counts them by
	// X-Request-Id.
	var mu sync.Mutex
	seen := map[string]int{}
	arrived := make(chan struct{}, 2*inFlight)
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen[r.Header.Get("X-Request-Id")]++
		mu.Unlock()
		arrived <- struct{}{}
		timer := time.NewTimer(hold)
		defer timer.Stop()
		select {
		case <-timer.C:
		case <-r.Context().Done():
			return
		}
		fmt.Fprint(w, "held")
	}))
	defer upstream.Close()

	bin := buildPoold(t)
	// No delay: this test is about what happens once calls are refused.
	cmd, addr := startPooldBinary(t, bin, "--egress-allow=127.0.0.1/32", "--shutdown-grace="+grace.String(), "--shutdown-delay=0s")
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := pooldv1.NewHTTPServiceClient(conn)
	// Every RPC is bounded: a call still running at this deadline hung.
	ctx, cancel := context.WithTimeout(context.Background(), grace+20*time.Second)
	defer cancel()

	type result struct {
		id   string
		resp *pooldv1.DoResponse
		err  error
	}
	results := make(chan result, inFlight)
	for i := range inFlight {
		id := fmt.Sprintf("inflight-%d", i)
		go func() {
			resp, err := client.Do(ctx, &pooldv1.DoRequest{
				Url:     upstream.URL + "/hold",
				Headers: []*pooldv1.Header{{Name: "X-Request-Id", Value: id}},
			})
			results <- result{id, resp, err}
		}()
	}
	// SIGTERM once every request is at the upstream, so all of them are
	// in flight when it lands.
	for i := range inFlight {
		select {
		case <-arrived:
		case <-ctx.Done():
			t.Fatalf("only %d of %d requests reached the upstream", i, inFlight)
		}
	}
	signalled := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	// Shutdown has begun once health stops saying SERVING; from then on a
	// new call is refused.
	health := healthpb.NewHealthClient(conn)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		resp, err := health.Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			break
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			t.Fatal("health still SERVING after SIGTERM")
		}
	}
	late, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer late.Close()
	for name, c := range map[string]pooldv1.HTTPServiceClient{"a new connection": pooldv1.NewHTTPServiceClient(late), "the existing connection": client} {
		_, err := c.Do(ctx, &pooldv1.DoRequest{
			Url:     upstream.URL + "/late",
			Headers: []*pooldv1.Header{{Name: "X-Request-Id", Value: "late"}},
		})
		if status.Code(err) != codes.Unavailable {
			t.Errorf("a call on %s after SIGTERM = %v, want UNAVAILABLE", name, err)
		}
	}

	// Every in-flight call ends with its response.
	codesSeen := map[codes.Code]int{}
	for range inFlight {
		var r result
		select {
		case r = <-results:
		case <-ctx.Done():
			t.Fatalf("calls still running %v after SIGTERM; ended: %v", time.Since(signalled), codesSeen)
		}
		code := status.Code(r.err)
		codesSeen[code]++
		switch code {
		case codes.OK:
			if r.resp.GetStatusCode() != 200 || string(r.resp.GetBody()) != "held" {
				t.Errorf("%s = %d %q, want 200 held", r.id, r.resp.GetStatusCode(), r.resp.GetBody())
			}
		case codes.Unavailable, codes.Aborted:
			// The contract lets shutdown cut a call once the grace period
			// is over (ABORTED, as these were sent); these needed a tenth
			// of it.
			t.Errorf("%s was cut short with %v, well within the grace period", r.id, r.err)
		default:
			t.Errorf("%s ended with %v, want success", r.id, r.err)
		}
	}
	t.Logf("in-flight calls after SIGTERM: %v", codesSeen)

	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("poold exited with %v, want status 0", err)
		}
	case <-time.After(grace + 5*time.Second):
		t.Fatalf("poold still running %v after SIGTERM", time.Since(signalled))
	}
	mu.Lock()
	defer mu.Unlock()
	if seen["late"] != 0 {
		t.Errorf("a call made after SIGTERM reached the upstream %d times", seen["late"])
	}
	for i := range inFlight {
		if id := fmt.Sprintf("inflight-%d", i); seen[id] != 1 {
			t.Errorf("%s reached the upstream %d times, want 1", id, seen[id])
		}
	}
}
