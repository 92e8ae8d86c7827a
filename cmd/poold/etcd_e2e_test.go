package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	pooldv1 "github.com/poold/poold/gen/poold/v1"
	"github.com/poold/poold/internal/etcdtest"
	"github.com/poold/poold/server"
)

// replica is one poold process over a shared policy store.
type replica struct {
	t                  *testing.T
	bin                string
	args               []string
	cmd                *exec.Cmd
	grpcAddr, httpAddr string
	conn               *grpc.ClientConn
	c                  clients
	health             healthpb.HealthClient
}

// startReplica runs the built daemon with args and waits for its
// "poold listening" line; it may not be ready yet.
func startReplica(t *testing.T, bin string, args ...string) *replica {
	t.Helper()
	r := &replica{t: t, bin: bin, args: args}
	r.start()
	return r
}

func (r *replica) start() {
	t := r.t
	t.Helper()
	// The policy store's warnings say why a write failed or a watch
	// broke; the test log keeps them.
	var addr atomic.Value
	logLine := func(line string) {
		if strings.Contains(line, "policy store") {
			t.Logf("replica %v: %s", addr.Load(), line)
		}
	}
	args := append([]string{"--shutdown-delay=0s", "--shutdown-grace=2s", "--egress-allow=127.0.0.1/32"}, r.args...)
	cmd, grpcAddr, httpAddr := launchPoold(t, r.bin, logLine, args...)
	addr.Store(grpcAddr)
	r.grpcAddr, r.httpAddr = grpcAddr, httpAddr
	conn, err := grpc.NewClient(r.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	r.cmd, r.conn = cmd, conn
	r.c = clients{http: pooldv1.NewHTTPServiceClient(conn), pools: pooldv1.NewPoolServiceClient(conn), policy: pooldv1.NewPolicyServiceClient(conn)}
	r.health = healthpb.NewHealthClient(conn)
}

// stop sends SIGTERM and waits for the process to exit.
func (r *replica) stop() {
	r.t.Helper()
	_ = r.cmd.Process.Signal(syscall.SIGTERM)
	_ = r.cmd.Wait()
}

func (r *replica) serving(ctx context.Context) bool {
	resp, err := r.health.Check(ctx, &healthpb.HealthCheckRequest{})
	return err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING
}

func (r *replica) waitReady(ctx context.Context) {
	r.t.Helper()
	waitFor(r.t, "replica "+r.grpcAddr+" to be ready", func() bool { return r.serving(ctx) })
}

func (r *replica) list(ctx context.Context) *pooldv1.ListPoliciesResponse {
	r.t.Helper()
	resp, err := r.c.policy.ListPolicies(ctx, &pooldv1.ListPoliciesRequest{})
	if err != nil {
		r.t.Fatalf("ListPolicies on %s: %v", r.grpcAddr, err)
	}
	return resp
}

// startReplicas runs n replicas over the cluster's prefix /poold, ready.
func startReplicas(t *testing.T, c *etcdtest.Cluster, n int, args ...string) []*replica {
	t.Helper()
	bin := buildPoold(t)
	store := "--policy-store=etcd://" + strings.Join(c.Endpoints(), ",") + "/poold"
	var out []*replica
	for range n {
		out = append(out, startReplica(t, bin, append([]string{store}, args...)...))
	}
	ctx := testContext(t)
	for _, r := range out {
		r.waitReady(ctx)
	}
	return out
}

// wantConverged waits until every replica lists the same policies, etags
// included.
func wantConverged(ctx context.Context, t *testing.T, rs []*replica) *pooldv1.ListPoliciesResponse {
	t.Helper()
	var want *pooldv1.ListPoliciesResponse
	waitFor(t, "every replica to list the same policies", func() bool {
		want = rs[0].list(ctx)
		for _, r := range rs[1:] {
			if !cmp.Equal(want, r.list(ctx), protocmp.Transform()) {
				return false
			}
		}
		return true
	})
	return want
}

func TestReplicasOverEtcdConvergeWithinASecondAndLoseNoUpdate(t *testing.T) {
	c := etcdtest.Start(t, 3)
	rs := startReplicas(t, c, 3)
	ctx := testContext(t)

	// 1,000 updates spread over the replicas, each timed from its
	// acknowledgement until both other replicas serve it.
	const updates = 1000
	var mu sync.Mutex
	var lags []time.Duration
	var wg sync.WaitGroup
	for w := range 3 {
		wg.Go(func() {
			for i := w; i < updates; i += 3 {
				name := fmt.Sprintf("policies/h%d.example.com", i%60)
				got, err := rs[w].c.policy.UpdatePolicy(ctx, &pooldv1.UpdatePolicyRequest{
					Policy:       &pooldv1.Policy{Name: name, IdleConnTimeout: durationpb.New(time.Duration(i+1) * time.Second)},
					UpdateMask:   &fieldmaskpb.FieldMask{Paths: []string{"idle_conn_timeout"}},
					AllowMissing: true,
				})
				if err != nil {
					t.Errorf("update %d on replica %d: %v", i, w, err)
					return
				}
				acked := time.Now()
				for _, o := range rs {
					if o == rs[w] {
						continue
					}
					for {
						p, err := o.c.policy.GetPolicy(ctx, &pooldv1.GetPolicyRequest{Name: name})
						if err == nil && (p.GetEtag() == got.GetEtag() || etagRev(p.GetEtag()) > etagRev(got.GetEtag())) {
							break
						}
						if ctx.Err() != nil {
							t.Errorf("update %d never reached replica %s", i, o.grpcAddr)
							return
						}
						time.Sleep(time.Millisecond)
					}
				}
				mu.Lock()
				lags = append(lags, time.Since(acked))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	slices.Sort(lags)
	p50, p99, worst := lags[len(lags)/2], lags[len(lags)*99/100], lags[len(lags)-1]
	t.Logf("acknowledged on one replica -> in force on both others, over %d updates: p50 %v, p99 %v, max %v", len(lags), p50, p99, worst)
	fmt.Printf("convergence: %d updates, p50 %v, p99 %v, max %v\n", len(lags), p50, p99, worst)
	if p99 > time.Second {
		t.Errorf("p99 from acknowledgement to in force elsewhere = %v, want at most 1s", p99)
	}
	wantConverged(ctx, t, rs)

	// 100 read-modify-write loops over the three replicas on one field.
	const loops = 100
	var acked atomic.Int64
	for i := range loops {
		wg.Go(func() {
			r := rs[i%3]
			for ctx.Err() == nil {
				cur, err := r.c.policy.GetPolicy(ctx, &pooldv1.GetPolicyRequest{Name: "policies/default"})
				if err != nil {
					t.Errorf("GetPolicy: %v", err)
					return
				}
				_, err = r.c.policy.UpdatePolicy(ctx, &pooldv1.UpdatePolicyRequest{
					Policy:     &pooldv1.Policy{Name: "policies/default", MaxRequestsPerConn: u32(cur.GetMaxRequestsPerConn() + 1), Etag: cur.GetEtag()},
					UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"max_requests_per_conn"}},
				})
				if status.Code(err) == codes.Aborted {
					continue
				}
				if err != nil {
					t.Errorf("UpdatePolicy: %v", err)
					return
				}
				acked.Add(1)
				return
			}
		})
	}
	wg.Wait()
	final := wantConverged(ctx, t, rs)
	if got := final.GetPolicies()[0].GetMaxRequestsPerConn(); int64(got) != acked.Load() || got != loops {
		t.Errorf("max_requests_per_conn = %d after %d acknowledged increments (of %d): updates were lost", got, acked.Load(), loops)
	}

	// A restarted replica serves the same policies the moment it is ready.
	rs[2].stop()
	rs[2].start()
	waitFor(t, "the restarted replica to be ready", func() bool { return rs[2].serving(ctx) })
	if diff := cmp.Diff(final, rs[2].list(ctx), protocmp.Transform()); diff != "" {
		t.Errorf("a restarted replica, once ready, lists (-others +restarted):\n%s", diff)
	}
}

func TestReplicasServeRequestsWhileEtcdLosesMembersAndConvergeAfter(t *testing.T) {
	c := etcdtest.Start(t, 3)
	rs := startReplicas(t, c, 3)
	ctx := testContext(t)
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	defer upstream.Close()

	// Requests on every replica all along; each must succeed.
	loadCtx, stopLoad := context.WithCancel(ctx)
	var served, failed atomic.Int64
	var load sync.WaitGroup
	for _, r := range rs {
		load.Go(func() {
			for loadCtx.Err() == nil {
				_, err := r.c.http.Do(loadCtx, &pooldv1.DoRequest{Url: upstream.URL})
				switch {
				case err == nil:
					served.Add(1)
				case loadCtx.Err() == nil:
					failed.Add(1)
					t.Errorf("a request failed: %v", err)
				}
				time.Sleep(2 * time.Millisecond)
			}
		})
	}
	write := func(r *replica, v uint32) error {
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		_, err := r.c.policy.UpdatePolicy(wctx, &pooldv1.UpdatePolicyRequest{
			Policy:     &pooldv1.Policy{Name: "policies/default", MaxRetries: u32(v % 5)},
			UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"max_retries"}},
		})
		return err
	}

	c.Kill(0)
	for i := range 30 {
		if err := write(rs[i%3], uint32(i)); err != nil {
			t.Errorf("write %d with one etcd member down: %v", i, err)
		}
	}

	c.Kill(1)
	for i := range 3 {
		start := time.Now()
		err := write(rs[i], uint32(i))
		if code, reason := errorInfoReason(err); code != codes.Unavailable || reason != server.ReasonPolicyStoreUnavailable {
			t.Errorf("write with two of three members down = %v, want UNAVAILABLE %s", err, server.ReasonPolicyStoreUnavailable)
		}
		if took := time.Since(start); took > 3*time.Second {
			t.Errorf("a write with no quorum took %v, want it to fail fast", took)
		}
	}
	var header metadata.MD
	if _, err := rs[0].c.policy.GetPolicy(ctx, &pooldv1.GetPolicyRequest{Name: "policies/default"}, grpc.Header(&header)); err != nil {
		t.Errorf("a read with no quorum: %v", err)
	}
	if v := header.Get(server.StalenessHeader); len(v) != 1 || v[0] == "" {
		t.Errorf("%s = %v, want how stale the read is", server.StalenessHeader, v)
	}

	c.Restart(0)
	c.Restart(1)
	c.WaitHealthy(0)
	waitFor(t, "writes to work again", func() bool { return write(rs[0], 7) == nil })
	wantConverged(ctx, t, rs)
	stopLoad()
	load.Wait()
	t.Logf("%d requests served through two etcd members going down, %d failed", served.Load(), failed.Load())
	if served.Load() == 0 {
		t.Error("no request was served")
	}
}

func TestPooldWithEtcdDownServesRequestsAndRefusesWritesAtOnce(t *testing.T) {
	bin := buildPoold(t)
	down := "--policy-store=etcd://" + closedPortAddr(t) + "/poold"
	ctx := testContext(t)

	// Without --policy-store-start-stale it is not ready.
	r := startReplica(t, bin, down)
	time.Sleep(3 * time.Second) // longer than the first read's timeout: the replica must stay unready, not just be slow
	if r.serving(ctx) {
		t.Error("a replica that never read its policies reports SERVING")
	}
	if resp, err := http.Get("http://" + r.httpAddr + "/readyz"); err != nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("/readyz = %v, %v; want 503", resp, err)
	} else {
		resp.Body.Close()
	}
	r.stop()

	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	defer upstream.Close()
	r = startReplica(t, bin, down, "--policy-store-start-stale")
	r.waitReady(ctx)
	if _, err := r.c.http.Do(ctx, &pooldv1.DoRequest{Url: upstream.URL}); err != nil {
		t.Errorf("a request with etcd down: %v", err)
	}
	start := time.Now()
	_, err := r.c.policy.UpdatePolicy(ctx, &pooldv1.UpdatePolicyRequest{Policy: &pooldv1.Policy{Name: "policies/default", MaxRetries: u32(2)}})
	if code, reason := errorInfoReason(err); code != codes.Unavailable || reason != server.ReasonPolicyStoreUnavailable {
		t.Errorf("UpdatePolicy with etcd down = %v, want UNAVAILABLE %s", err, server.ReasonPolicyStoreUnavailable)
	}
	if took := time.Since(start); took > 500*time.Millisecond {
		t.Errorf("UpdatePolicy with etcd down took %v, want an answer at once", took)
	}
	var header metadata.MD
	if _, err := r.c.policy.GetPolicy(ctx, &pooldv1.GetPolicyRequest{Name: "policies/default"}, grpc.Header(&header)); err != nil {
		t.Errorf("GetPolicy with etcd down: %v", err)
	}
	if v := header.Get(server.StalenessHeader); len(v) != 1 || v[0] != "never" {
		t.Errorf("%s = %v, want never", server.StalenessHeader, v)
	}
}

// etagRev is the revision at the front of a poold etag ("42-..."): a
// replica showing a later one has applied the update and more.
func etagRev(etag string) int64 {
	v, _, _ := strings.Cut(etag, "-")
	n, _ := strconv.ParseInt(v, 10, 64)
	return n
}

func TestAReplicaWhoseWatchFellBehindACompactionListsAgainAndConverges(t *testing.T) {
	c := etcdtest.Start(t, 3)
	rs := startReplicas(t, c, 3)
	ctx := testContext(t)
	egress := pooldv1.NewEgressServiceClient(rs[0].conn)

	// A stopped replica reads nothing, so etcd's buffers for its watch
	// fill and the watch falls behind; a compaction then takes what it
	// has not read yet. Big rule sets fill the buffers with few writes.
	if err := rs[2].cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	var allow []string
	for i := range 250 {
		allow = append(allow, fmt.Sprintf("10.%d.%d.0/24", i/250, i%250))
	}
	for i := range 300 {
		if _, err := egress.UpdateEgressRuleSet(ctx, &pooldv1.UpdateEgressRuleSetRequest{
			EgressRuleSet: &pooldv1.EgressRuleSet{Name: fmt.Sprintf("egressRuleSets/r%d", i%10), Allow: allow, AllowedPorts: []uint32{uint32(1000 + i)}},
			AllowMissing:  true,
		}); err != nil {
			t.Fatalf("update %d: %v", i, err)
		}
	}
	resp, err := c.Client(t).Get(ctx, "/poold/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Client(t).Compact(ctx, resp.Header.Revision); err != nil {
		t.Fatal(err)
	}
	if err := rs[2].cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}

	want, err := egress.ListEgressRuleSets(ctx, &pooldv1.ListEgressRuleSetsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	lagged := pooldv1.NewEgressServiceClient(rs[2].conn)
	waitFor(t, "the stopped replica to hold every rule set", func() bool {
		got, err := lagged.ListEgressRuleSets(ctx, &pooldv1.ListEgressRuleSetsRequest{})
		return err == nil && cmp.Equal(want, got, protocmp.Transform())
	})
	metrics := httpGet(t, "http://"+rs[2].httpAddr+"/metrics")
	if strings.Contains(metrics, "\npoold_policy_store_watch_restarts_total 0\n") {
		t.Errorf("the replica converged without listing again; its watch never fell behind (metrics:\n%s)", grepLines(metrics, "poold_policy_store"))
	}
	t.Logf("%s", grepLines(metrics, "poold_policy_store"))
}

func grepLines(s, substr string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
