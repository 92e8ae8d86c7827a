package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"github.com/poold/poold/dialer/dialertest"
	pooldv1 "github.com/poold/poold/gen/poold/v1"
)

// clients bundles the three poold services over one connection.
type clients struct {
	http   pooldv1.HTTPServiceClient
	pools  pooldv1.PoolServiceClient
	policy pooldv1.PolicyServiceClient
}

func (d *testDaemon) clients() clients {
	return clients{
		http:   pooldv1.NewHTTPServiceClient(d.conn),
		pools:  pooldv1.NewPoolServiceClient(d.conn),
		policy: pooldv1.NewPolicyServiceClient(d.conn),
	}
}

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// setPolicy changes fields of the default policy (or a host policy, created
// on the way) and fails the test on error.
func setPolicy(ctx context.Context, t *testing.T, c clients, p *pooldv1.Policy, paths ...string) *pooldv1.Policy {
	t.Helper()
	got, err := c.policy.UpdatePolicy(ctx, &pooldv1.UpdatePolicyRequest{
		Policy:       p,
		UpdateMask:   &fieldmaskpb.FieldMask{Paths: paths},
		AllowMissing: true,
	})
	if err != nil {
		t.Fatalf("UpdatePolicy(%v): %v", paths, err)
	}
	return got
}

func u32(v uint32) *uint32 { return &v }

// errorInfoReason returns the code and ErrorInfo reason of a gRPC error.
func errorInfoReason(err error) (codes.Code, string) {
	st := status.Convert(err)
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			return st.Code(), info.GetReason()
		}
	}
	return st.Code(), ""
}

func TestEveryRPCWorksOverARealConnection(t *testing.T) {
	var hits atomic.Int64
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		body, _ := io.ReadAll(r.Body)
		w.Header().Add("X-Seen", "one")
		w.Header().Add("X-Seen", "two")
		fmt.Fprintf(w, "%s %s %s", r.Method, r.URL.Path, body)
	}))
	defer upstream.Close()
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer other.Close()

	d := startDaemon(t)
	c := d.clients()
	ctx := testContext(t)
	hostport := strings.TrimPrefix(upstream.URL, "http://")

	events, err := c.pools.WatchEvents(ctx, &pooldv1.WatchEventsRequest{Host: hostport})
	if err != nil {
		t.Fatal(err)
	}
	evc := make(chan *pooldv1.Event, 1024)
	go func() {
		defer close(evc)
		for {
			ev, err := events.Recv()
			if err != nil {
				return
			}
			evc <- ev
		}
	}()
	// The subscription starts when the server gets around to the call; a
	// policy change, which every watcher receives, shows that it has.
	for synced := false; !synced; {
		setPolicy(ctx, t, c, &pooldv1.Policy{Name: "policies/default", MaxRetries: u32(1)}, "max_retries")
		select {
		case ev := <-evc:
			synced = ev.GetKind() == pooldv1.EventKind_EVENT_KIND_POLICY_CHANGED
		case <-time.After(100 * time.Millisecond):
		case <-ctx.Done():
			t.Fatal("WatchEvents never delivered a POLICY_CHANGED event")
		}
	}

	first, err := c.http.Do(ctx, &pooldv1.DoRequest{Method: "POST", Url: upstream.URL + "/a", Body: []byte("hi")})
	if err != nil {
		t.Fatalf("Do: %v", err)
	}
	if first.GetStatusCode() != 200 || string(first.GetBody()) != "POST /a hi" || first.GetProtocol() != "HTTP/1.1" {
		t.Fatalf("Do = %d %q %q, want 200 \"POST /a hi\" HTTP/1.1", first.GetStatusCode(), first.GetBody(), first.GetProtocol())
	}
	var seen []string
	for _, h := range first.GetHeaders() {
		if h.GetName() == "X-Seen" {
			seen = append(seen, h.GetValue())
		}
	}
	if diff := cmp.Diff([]string{"one", "two"}, seen); diff != "" {
		t.Errorf("repeated response header (-want +got):\n%s", diff)
	}
	second, err := c.http.Do(ctx, &pooldv1.DoRequest{Url: upstream.URL + "/b"})
	if err != nil {
		t.Fatalf("second Do: %v", err)
	}
	if !second.GetTiming().GetReused() || second.GetTiming().GetConnectionId() != first.GetTiming().GetConnectionId() {
		t.Errorf("second request timing = %v, want it reused on connection %d", second.GetTiming(), first.GetTiming().GetConnectionId())
	}
	if _, err := c.http.Do(ctx, &pooldv1.DoRequest{Url: other.URL}); err != nil {
		t.Fatalf("Do to a second host: %v", err)
	}

	// WatchEvents saw the first conn dialed and then reused.
	kinds := map[pooldv1.EventKind]bool{}
	for !kinds[pooldv1.EventKind_EVENT_KIND_REUSED] {
		ev, ok := <-evc
		if !ok {
			t.Fatalf("WatchEvents ended early (saw %v)", kinds)
		}
		if ev.GetHost() != "http://"+hostport && ev.GetKind() != pooldv1.EventKind_EVENT_KIND_POLICY_CHANGED {
			t.Errorf("event for host %q leaked through the %q filter", ev.GetHost(), hostport)
		}
		kinds[ev.GetKind()] = true
	}
	if !kinds[pooldv1.EventKind_EVENT_KIND_DIALED] || !kinds[pooldv1.EventKind_EVENT_KIND_IDLE] {
		t.Errorf("events seen %v, want DIALED and IDLE before REUSED", kinds)
	}

	// ListHosts pages through both hosts, one at a time.
	var keys []string
	token := ""
	for {
		page, err := c.pools.ListHosts(ctx, &pooldv1.ListHostsRequest{PageSize: 1, PageToken: token})
		if err != nil {
			t.Fatalf("ListHosts: %v", err)
		}
		for _, h := range page.GetHosts() {
			keys = append(keys, h.GetKey())
		}
		if token = page.GetNextPageToken(); token == "" {
			break
		}
	}
	if len(keys) != 2 {
		t.Fatalf("ListHosts paged to %v, want 2 hosts", keys)
	}

	for _, key := range []string{hostport, "http://" + hostport} {
		h, err := c.pools.GetHost(ctx, &pooldv1.GetHostRequest{Key: key})
		if err != nil {
			t.Fatalf("GetHost(%q): %v", key, err)
		}
		if h.GetKey() != "http://"+hostport || h.GetIdle() != 1 || h.GetCounters().GetRequests() != 2 || h.GetCounters().GetReused() != 1 || h.GetPolicy() != "policies/default" {
			t.Errorf("GetHost(%q) = %v, want 1 idle, 2 requests, 1 reused, policies/default", key, h)
		}
	}
	if _, err := c.pools.GetHost(ctx, &pooldv1.GetHostRequest{Key: "never-used.example:443"}); status.Code(err) != codes.NotFound {
		t.Errorf("GetHost of an unknown host = %v, want NOT_FOUND", err)
	}

	conns, err := c.pools.ListConnections(ctx, &pooldv1.ListConnectionsRequest{Host: hostport, State: pooldv1.ConnectionState_CONNECTION_STATE_IDLE})
	if err != nil {
		t.Fatalf("ListConnections: %v", err)
	}
	if len(conns.GetConnections()) != 1 {
		t.Fatalf("ListConnections = %v, want the one idle conn", conns)
	}
	conn := conns.GetConnections()[0]
	if conn.GetId() != first.GetTiming().GetConnectionId() || conn.GetRequests() != 2 || conn.GetBytesWritten() == 0 || conn.GetBytesRead() == 0 || conn.GetRemoteAddress() != hostport || conn.GetCreatedTime() == nil {
		t.Errorf("connection = %v, want id %d, 2 requests, bytes moved, remote %s", conn, first.GetTiming().GetConnectionId(), hostport)
	}

	// Stream: the head, the body in chunks, the end.
	st, err := c.http.Stream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	st.Send(&pooldv1.StreamRequest{Msg: &pooldv1.StreamRequest_Head{Head: &pooldv1.DoRequest{Method: "PUT", Url: upstream.URL + "/s"}}})
	st.Send(&pooldv1.StreamRequest{Msg: &pooldv1.StreamRequest_Body{Body: []byte("chunk1 ")}})
	st.Send(&pooldv1.StreamRequest{Msg: &pooldv1.StreamRequest_Body{Body: []byte("chunk2")}})
	st.CloseSend()
	var streamed strings.Builder
	var end *pooldv1.StreamEnd
	for {
		msg, err := st.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("Stream: %v", err)
		}
		switch m := msg.GetMsg().(type) {
		case *pooldv1.StreamResponse_Head:
			if m.Head.GetStatusCode() != 200 {
				t.Errorf("Stream head status = %d", m.Head.GetStatusCode())
			}
		case *pooldv1.StreamResponse_Body:
			streamed.Write(m.Body)
		case *pooldv1.StreamResponse_End:
			end = m.End
		}
	}
	if streamed.String() != "PUT /s chunk1 chunk2" || end == nil || end.GetTiming().GetConnectionId() == 0 {
		t.Errorf("Stream body %q end %v, want \"PUT /s chunk1 chunk2\" and an end with timing", streamed.String(), end)
	}

	// CloseIdle and Drain report what they did.
	closed, err := c.pools.CloseIdleConnections(ctx, &pooldv1.CloseIdleConnectionsRequest{Host: other.URL[len("http://"):]})
	if err != nil || closed.GetClosed() != 1 {
		t.Errorf("CloseIdleConnections(other) = %v, %v; want 1 closed", closed, err)
	}
	drained, err := c.pools.DrainConnections(ctx, &pooldv1.DrainConnectionsRequest{})
	if err != nil || drained.GetClosedIdle() != 1 || drained.GetDraining() != 0 {
		t.Errorf("DrainConnections() = %v, %v; want 1 idle closed, 0 draining", drained, err)
	}

	// PolicyService: create a host policy, see it win, delete it.
	host := setPolicy(ctx, t, c, &pooldv1.Policy{Name: "policies/" + hostport, MaxConnsPerHost: u32(7)}, "max_conns_per_host")
	eff, err := c.policy.GetEffectivePolicy(ctx, &pooldv1.GetEffectivePolicyRequest{Host: hostport})
	if err != nil || eff.GetName() != "policies/"+hostport || eff.GetMaxConnsPerHost() != 7 || eff.GetDialTimeout().AsDuration() != 5*time.Second {
		t.Errorf("GetEffectivePolicy = %v, %v; want the host policy's 7 conns and the default's 5s dial timeout", eff, err)
	}
	list, err := c.policy.ListPolicies(ctx, &pooldv1.ListPoliciesRequest{})
	if err != nil || len(list.GetPolicies()) != 2 || list.GetPolicies()[0].GetName() != "policies/default" {
		t.Errorf("ListPolicies = %v, %v; want default then the host policy", list, err)
	}
	if got, err := c.policy.GetPolicy(ctx, &pooldv1.GetPolicyRequest{Name: host.GetName()}); err != nil || got.GetEtag() != host.GetEtag() {
		t.Errorf("GetPolicy = %v, %v; want etag %q", got, err, host.GetEtag())
	}
	if _, err := c.policy.DeletePolicy(ctx, &pooldv1.DeletePolicyRequest{Name: host.GetName(), Etag: host.GetEtag()}); err != nil {
		t.Errorf("DeletePolicy: %v", err)
	}
	if _, err := c.policy.DeletePolicy(ctx, &pooldv1.DeletePolicyRequest{Name: "policies/default"}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("DeletePolicy(default) = %v, want FAILED_PRECONDITION", err)
	}
}

// stallingListener accepts TCP connections and never writes a byte.
func stallingListener(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			go io.Copy(io.Discard, c)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	return ln.Addr().String()
}

// rawListener answers every connection with fixed bytes, then closes it.
func rawListener(t *testing.T, reply string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 4096)
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				c.Read(buf)
				io.WriteString(c, reply)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return ln.Addr().String()
}

func closedPortAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func TestEveryRowOfTheErrorTable(t *testing.T) {
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(10 * time.Second):
		}
	}))
	defer slow.Close()
	big := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write(make([]byte, 64<<10))
	}))
	defer big.Close()
	reset := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "1000")
		w.WriteHeader(200)
		w.Write([]byte("partial"))
		w.(http.Flusher).Flush()
		conn, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			conn.(*net.TCPConn).SetLinger(0)
			conn.Close()
		}
	}))
	defer reset.Close()
	teapot := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusTeapot)
	}))
	defer teapot.Close()
	queued := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(10 * time.Second):
		}
	}))
	defer queued.Close()

	d := startDaemon(t, "--max-body-size=1KiB")
	c := d.clients()
	ctx := testContext(t)

	stalled := stallingListener(t)
	backlog := dialertest.Blackhole(t, "tcp4", "127.0.0.1:0").Addr().String()
	garbage := rawListener(t, "this is not HTTP\r\n\r\n")
	setPolicy(ctx, t, c, &pooldv1.Policy{Name: "policies/" + backlog, DialTimeout: durationpb.New(300 * time.Millisecond)}, "dial_timeout")
	setPolicy(ctx, t, c, &pooldv1.Policy{Name: "policies/" + stalled, TlsHandshakeTimeout: durationpb.New(300 * time.Millisecond), ResponseHeaderTimeout: durationpb.New(300 * time.Millisecond)}, "tls_handshake_timeout", "response_header_timeout")
	queuedHost := strings.TrimPrefix(queued.URL, "http://")
	setPolicy(ctx, t, c, &pooldv1.Policy{Name: "policies/" + queuedHost, MaxConnsPerHost: u32(1), MaxPendingRequests: u32(0)}, "max_conns_per_host", "max_pending_requests")

	// Occupy the only connection to the queued host.
	holdCtx, release := context.WithCancel(ctx)
	holding := make(chan error, 1)
	go func() {
		_, err := c.http.Do(holdCtx, &pooldv1.DoRequest{Url: queued.URL})
		holding <- err
	}()
	waitFor(t, "the queued host's only connection to be active", func() bool {
		h, err := c.pools.GetHost(ctx, &pooldv1.GetHostRequest{Key: queuedHost})
		return err == nil && h.GetActive() == 1
	})

	tests := []struct {
		name   string
		req    *pooldv1.DoRequest
		code   codes.Code
		reason string
	}{
		{"bad URL", &pooldv1.DoRequest{Url: "ftp://example.com/"}, codes.InvalidArgument, "INVALID_ARGUMENT"},
		{"queue full", &pooldv1.DoRequest{Url: queued.URL}, codes.ResourceExhausted, "QUEUE_FULL"},
		{"body too large", &pooldv1.DoRequest{Url: big.URL}, codes.ResourceExhausted, "BODY_TOO_LARGE"},
		{"dial timeout", &pooldv1.DoRequest{Url: "http://" + backlog}, codes.DeadlineExceeded, "DIAL_TIMEOUT"},
		{"tls handshake timeout", &pooldv1.DoRequest{Url: "https://" + stalled}, codes.DeadlineExceeded, "TLS_HANDSHAKE_TIMEOUT"},
		{"response header timeout", &pooldv1.DoRequest{Url: "http://" + stalled}, codes.DeadlineExceeded, "RESPONSE_HEADER_TIMEOUT"},
		{"request timeout", &pooldv1.DoRequest{Url: slow.URL, Timeout: durationpb.New(300 * time.Millisecond)}, codes.DeadlineExceeded, "REQUEST_TIMEOUT"},
		{"dns failure", &pooldv1.DoRequest{Url: "http://no-such-host.onion/"}, codes.Unavailable, "DNS_ERROR"},
		{"connection refused", &pooldv1.DoRequest{Url: "http://" + closedPortAddr(t)}, codes.Unavailable, "CONNECTION_REFUSED"},
		// Both after the request was sent: ABORTED, never UNAVAILABLE.
		{"upstream reset", &pooldv1.DoRequest{Url: reset.URL}, codes.Aborted, "UPSTREAM_RESET"},
		{"malformed response", &pooldv1.DoRequest{Url: "http://" + garbage}, codes.Aborted, "UPSTREAM_PROTOCOL_ERROR"},
		// Refused by the egress rules before any connect: nothing is sent.
		{"cloud metadata address", &pooldv1.DoRequest{Url: "http://169.254.169.254/latest/meta-data/"}, codes.PermissionDenied, "EGRESS_DENIED"},
		{"poold's own listener", &pooldv1.DoRequest{Url: "http://" + d.grpcAddr + "/"}, codes.PermissionDenied, "EGRESS_DENIED"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := c.http.Do(ctx, tt.req)
			code, reason := errorInfoReason(err)
			if code != tt.code || reason != tt.reason {
				t.Errorf("Do = %v; want %v with reason %s", err, tt.code, tt.reason)
			}
		})
	}
	release()
	<-holding

	metrics := httpGet(t, "http://"+d.httpAddr+"/metrics")
	for _, tt := range tests {
		if tt.reason == "INVALID_ARGUMENT" {
			continue
		}
		want := fmt.Sprintf(`poold_http_failures_total{reason=%q}`, tt.reason)
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	t.Run("HTTP 418 is a successful RPC", func(t *testing.T) {
		resp, err := c.http.Do(ctx, &pooldv1.DoRequest{Url: teapot.URL})
		if err != nil || resp.GetStatusCode() != http.StatusTeapot {
			t.Errorf("Do = %v, %v; want status 418 and no error", resp, err)
		}
	})

	t.Run("caller cancel aborts the upstream request", func(t *testing.T) {
		aborted := make(chan struct{})
		started := make(chan struct{})
		up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			close(started)
			select {
			case <-r.Context().Done():
				close(aborted)
			case <-time.After(10 * time.Second):
			}
		}))
		defer up.Close()
		callCtx, cancel := context.WithCancel(ctx)
		errc := make(chan error, 1)
		go func() {
			_, err := c.http.Do(callCtx, &pooldv1.DoRequest{Url: up.URL})
			errc <- err
		}()
		<-started
		cancel()
		if err := <-errc; status.Code(err) != codes.Canceled {
			t.Errorf("Do = %v, want CANCELLED", err)
		}
		select {
		case <-aborted:
		case <-time.After(5 * time.Second):
			t.Fatal("the upstream request was not aborted within 5s of the caller cancelling")
		}
		waitFor(t, "the cancelled request's connection to close", func() bool {
			h, err := c.pools.GetHost(ctx, &pooldv1.GetHostRequest{Key: strings.TrimPrefix(up.URL, "http://")})
			return err == nil && h.GetActive() == 0 && h.GetIdle() == 0
		})
	})
}

func TestLoweringMaxConnsPerHostUnderLoadFailsNoRPCAndConverges(t *testing.T) {
	var inFlight, peakAfter atomic.Int64
	var lowered atomic.Bool
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := inFlight.Add(1)
		defer inFlight.Add(-1)
		if lowered.Load() && n > peakAfter.Load() {
			peakAfter.Store(n)
		}
		time.Sleep(2 * time.Millisecond) // simulated upstream work, not synchronisation
		io.WriteString(w, "ok")
	}))
	defer upstream.Close()
	d := startDaemon(t)
	c := d.clients()
	ctx := testContext(t)
	hostport := strings.TrimPrefix(upstream.URL, "http://")
	setPolicy(ctx, t, c, &pooldv1.Policy{Name: "policies/default", MaxConnsPerHost: u32(16)}, "max_conns_per_host")

	const workers, perWorker = 32, 60
	var wg sync.WaitGroup
	var failures atomic.Int64
	var firstErr atomic.Value
	var done atomic.Int64
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range perWorker {
				if _, err := c.http.Do(ctx, &pooldv1.DoRequest{Url: upstream.URL}); err != nil {
					failures.Add(1)
					firstErr.CompareAndSwap(nil, err)
				}
				done.Add(1)
			}
		}()
	}
	waitFor(t, "load to build up", func() bool { return done.Load() > workers*perWorker/4 })
	setPolicy(ctx, t, c, &pooldv1.Policy{Name: "policies/default", MaxConnsPerHost: u32(4)}, "max_conns_per_host")
	waitFor(t, "active connections to converge to the new limit", func() bool {
		h, err := c.pools.GetHost(ctx, &pooldv1.GetHostRequest{Key: hostport})
		return err == nil && h.GetActive()+h.GetIdle()+h.GetDialing() <= 4
	})
	lowered.Store(true)
	wg.Wait()
	if n := failures.Load(); n != 0 {
		t.Fatalf("%d of %d RPCs failed across the policy change; first: %v", n, workers*perWorker, firstErr.Load())
	}
	if p := peakAfter.Load(); p > 4 {
		t.Errorf("after converging, %d requests reached the upstream at once; want at most 4", p)
	}
	h, err := c.pools.GetHost(ctx, &pooldv1.GetHostRequest{Key: hostport})
	if err != nil {
		t.Fatal(err)
	}
	if total := h.GetActive() + h.GetIdle() + h.GetDialing(); total > 4 {
		t.Errorf("host holds %d connections after the load, want at most 4", total)
	}
}

func TestConcurrentEtagUpdatesLoseNothingAndSurviveARestart(t *testing.T) {
	file := filepath.Join(t.TempDir(), "policies.json")
	d := startDaemon(t, "--policy-file="+file)
	c := d.clients()
	ctx := testContext(t)

	base := setPolicy(ctx, t, c, &pooldv1.Policy{Name: "policies/default", MaxRequestsPerConn: u32(0)}, "max_requests_per_conn")

	// Everyone races with the same etag: exactly one may win.
	const racers = 100
	var wins, aborted atomic.Int64
	var wg sync.WaitGroup
	for i := range racers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := c.policy.UpdatePolicy(ctx, &pooldv1.UpdatePolicyRequest{
				Policy:     &pooldv1.Policy{Name: "policies/default", IdleConnTimeout: durationpb.New(time.Duration(i+1) * time.Second), Etag: base.GetEtag()},
				UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"idle_conn_timeout"}},
			})
			switch status.Code(err) {
			case codes.OK:
				wins.Add(1)
			case codes.Aborted:
				aborted.Add(1)
			default:
				t.Errorf("UpdatePolicy = %v, want OK or ABORTED", err)
			}
		}()
	}
	wg.Wait()
	if wins.Load() != 1 || aborted.Load() != racers-1 {
		t.Fatalf("%d won and %d were aborted, want exactly 1 and %d", wins.Load(), aborted.Load(), racers-1)
	}

	// Read-modify-write with retries on ABORTED: no increment is lost.
	for i := range racers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				cur, err := c.policy.GetPolicy(ctx, &pooldv1.GetPolicyRequest{Name: "policies/default"})
				if err != nil {
					t.Errorf("GetPolicy: %v", err)
					return
				}
				_, err = c.policy.UpdatePolicy(ctx, &pooldv1.UpdatePolicyRequest{
					Policy:     &pooldv1.Policy{Name: "policies/default", MaxRequestsPerConn: u32(cur.GetMaxRequestsPerConn() + 1), Etag: cur.GetEtag()},
					UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"max_requests_per_conn"}},
				})
				if status.Code(err) == codes.Aborted {
					continue
				}
				if err != nil {
					t.Errorf("UpdatePolicy #%d: %v", i, err)
				}
				return
			}
		}()
	}
	wg.Wait()
	before, err := c.policy.ListPolicies(ctx, &pooldv1.ListPoliciesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if got := before.GetPolicies()[0].GetMaxRequestsPerConn(); got != racers {
		t.Fatalf("max_requests_per_conn = %d after %d increments, want %d: updates were lost", got, racers, racers)
	}

	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var onDisk pooldv1.ListPoliciesResponse
	if err := protojson.Unmarshal(raw, &onDisk); err != nil {
		t.Fatalf("policy file is not valid: %v", err)
	}
	// The file keeps what was set; the API shows the default policy's
	// built-in values too, and the same etag.
	disk, api := onDisk.GetPolicies(), before.GetPolicies()
	if len(disk) != len(api) || len(disk) == 0 || disk[0].GetMaxRequestsPerConn() != racers ||
		disk[0].GetEtag() != api[0].GetEtag() || disk[0].GetDialTimeout() != nil {
		t.Errorf("policy file holds %v; want the one default policy with max_requests_per_conn %d and etag %q, nothing else set", disk, racers, api[0].GetEtag())
	}

	d.stop(t)
	d2 := startDaemon(t, "--policy-file="+file)
	after, err := d2.clients().policy.ListPolicies(testContext(t), &pooldv1.ListPoliciesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(before, after, protocmp.Transform()); diff != "" {
		t.Errorf("policies changed across a restart (-before +after):\n%s", diff)
	}
}

func TestABadPolicyFileRefusesToStartNamingTheField(t *testing.T) {
	file := filepath.Join(t.TempDir(), "policies.json")
	bad := `{"policies": [{"name": "policies/default", "dialTimeout": "-1s"}]}`
	if err := os.WriteFile(file, []byte(bad), 0o600); err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	err := run(context.Background(), []string{"--listen=127.0.0.1:0", "--http-listen=127.0.0.1:0", "--policy-file=" + file}, func(string) string { return "" }, io.Discard, &stderr)
	if err == nil {
		t.Fatal("poold started with a bad policy file")
	}
	if !strings.Contains(err.Error(), "dial_timeout") || !strings.Contains(err.Error(), file) {
		t.Errorf("error = %v, want it to name the file and dial_timeout", err)
	}
}

// waitFor polls cond until it holds, failing the test after 10s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestTokenFilesGuardTheServicesAndRotateWithoutARestart(t *testing.T) {
	dir := t.TempDir()
	adminFile, clientFile := filepath.Join(dir, "admin"), filepath.Join(dir, "client")
	for path, token := range map[string]string{adminFile: "admin-old\n", clientFile: "client-1\n"} {
		if err := os.WriteFile(path, []byte(token), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	d := startDaemon(t, "--admin-token-file="+adminFile, "--client-token-file="+clientFile)
	c := d.clients()
	ctx := testContext(t)
	as := func(token string) context.Context {
		return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	}

	if _, err := c.pools.ListHosts(ctx, &pooldv1.ListHostsRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("ListHosts without a token = %v, want UNAUTHENTICATED", err)
	}
	if _, err := c.policy.ListPolicies(as("client-1"), &pooldv1.ListPoliciesRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("ListPolicies with a client token = %v, want PERMISSION_DENIED", err)
	}
	if _, err := c.pools.ListHosts(as("admin-old"), &pooldv1.ListHostsRequest{}); err != nil {
		t.Errorf("ListHosts with the admin token = %v", err)
	}
	if _, err := c.http.Do(ctx, &pooldv1.DoRequest{Url: "http://127.0.0.1:1/"}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("Do without a token = %v, want UNAUTHENTICATED", err)
	}
	if _, err := healthpb.NewHealthClient(d.conn).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Errorf("health without a token = %v, want it open", err)
	}

	// Rotate: the daemon rereads a changed file within seconds.
	if err := os.WriteFile(adminFile, []byte("admin-new\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	later := time.Now().Add(time.Minute)
	os.Chtimes(adminFile, later, later)
	waitFor(t, "the rotated admin token to be accepted", func() bool {
		_, err := c.pools.ListHosts(as("admin-new"), &pooldv1.ListHostsRequest{})
		return err == nil
	})
	if _, err := c.pools.ListHosts(as("admin-old"), &pooldv1.ListHostsRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("ListHosts with the rotated-out token = %v, want PERMISSION_DENIED", err)
	}
}
