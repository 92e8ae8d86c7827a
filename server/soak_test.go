package server

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	pooldv1 "github.com/poold/poold/gen/poold/v1"
)

// soakCallers is how many callers run requests at once.
const soakCallers = 64

// readmeOutcomes are the code and reason pairs of the README's error
// table: every failed RPC must end with one of them.
var readmeOutcomes = map[codes.Code][]string{
	codes.InvalidArgument:   {ReasonInvalidArgument},
	codes.ResourceExhausted: {ReasonQueueFull, ReasonBodyTooLarge, ReasonOverloaded},
	codes.DeadlineExceeded:  {ReasonDialTimeout, ReasonTLSHandshakeTimeout, ReasonResponseHeaderTimeout, ReasonRequestTimeout, ReasonBodyReadTimeout},
	codes.Unavailable: {ReasonDNSError, ReasonConnectionRefused, ReasonUpstreamReset, ReasonUpstreamProtocolError,
		ReasonTLSError, ReasonProxyError, ReasonUpstreamError, ReasonShuttingDown},
	codes.PermissionDenied: {ReasonEgressDenied},
	codes.Canceled:         {ReasonCanceled},
	// ABORTED for an upstream failure is UNAVAILABLE's counterpart once
	// some of the request was sent.
	codes.Aborted: {ReasonEtagMismatch, ReasonUpstreamReset, ReasonUpstreamProtocolError, ReasonUpstreamError, ReasonShuttingDown},
}

// soakDuration reads POOLD_SOAK_DURATION (default 3s).
func soakDuration(t *testing.T) time.Duration {
	v := os.Getenv("POOLD_SOAK_DURATION")
	if v == "" {
		return 3 * time.Second
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		t.Fatalf("POOLD_SOAK_DURATION=%q: want a positive duration such as 60s", v)
	}
	return d
}

// soakSeed reads POOLD_SOAK_SEED, or picks one; it is logged so that a
// failing run can be repeated.
func soakSeed(t *testing.T) uint64 {
	if v := os.Getenv("POOLD_SOAK_SEED"); v != "" {
		s, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("POOLD_SOAK_SEED=%q: want a number", v)
		}
		return s
	}
	return uint64(time.Now().UnixNano())
}

// openFDs counts this process's open file descriptors, or returns -1
// where /proc is not there to ask.
func openFDs() int {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return -1
	}
	return len(entries)
}

// soakTally is what the callers saw.
type soakTally struct {
	mu         sync.Mutex // guards following fields
	rpcs       int
	outcomes   map[string]int // "OK", or "CODE REASON"
	unexpected []string       // outcomes outside the README table, first few
	perCaller  [soakCallers]int
	admin      int
}

func (s *soakTally) record(caller int, outcome string, bad string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rpcs++
	s.perCaller[caller]++
	s.outcomes[outcome]++
	if bad != "" && len(s.unexpected) < 20 {
		s.unexpected = append(s.unexpected, bad)
	}
}

// TestSoak runs 64 callers against healthy and misbehaving upstreams for
// POOLD_SOAK_DURATION while an operator changes policies and closes and
// drains connections, callers cancel at random, and the in-flight cap
// bites. At the end every RPC has ended with success or a code and reason
// of the README's table, no POST reached an upstream twice, every pool is
// quiet, and once everything is closed the goroutines and file
// descriptors are back to what they were.
func TestSoak(t *testing.T) {
	duration, seed := soakDuration(t), soakSeed(t)
	t.Logf("duration %v, seed %d (POOLD_SOAK_SEED to repeat)", duration, seed)

	runtime.GC()
	baseFDs, baseGoroutines := openFDs(), runtime.NumGoroutine()
	ignore := goleak.IgnoreCurrent()

	tally := &soakTally{outcomes: map[string]int{}}
	t.Run("chaos", func(t *testing.T) { runSoak(t, duration, seed, tally) })

	// The subtest's cleanups closed clients, servers, upstreams and the
	// engine; what they started must be gone.
	if !poll(10*time.Second, func() bool { return goleak.Find(ignore) == nil }) {
		t.Errorf("goroutines left behind: %v", goleak.Find(ignore))
	}
	endGoroutines := runtime.NumGoroutine()
	endFDs := openFDs()
	if baseFDs >= 0 && !poll(10*time.Second, func() bool { endFDs = openFDs(); return endFDs <= baseFDs }) {
		t.Errorf("open file descriptors: %d at the start, %d at the end", baseFDs, endFDs)
	}

	tally.mu.Lock()
	defer tally.mu.Unlock()
	keys := make([]string, 0, len(tally.outcomes))
	for k := range tally.outcomes {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "\n  %-45s %d", k, tally.outcomes[k])
	}
	t.Logf("%d HTTPService RPCs, %d admin RPCs; goroutines %d at the start, %d at the end; fds %d at the start, %d at the end; outcomes:%s",
		tally.rpcs, tally.admin, baseGoroutines, endGoroutines, baseFDs, endFDs, b.String())
}

// soakTarget is one upstream of the soak and how to call it.
type soakTarget struct {
	name   string
	url    string
	weight int
	a      *adversary // nil for targets nothing listens for
}

func runSoak(t *testing.T, duration time.Duration, seed uint64, tally *soakTally) {
	d := mainDaemon(t, advOptions{maxInFlight: soakCallers - 4})
	healthy := newAdversary(t)
	target := func(name string, weight int, a *adversary, scheme string) soakTarget {
		return soakTarget{name: name, url: scheme + "://" + a.addr + "/" + name, weight: weight, a: a}
	}
	refused := newAdversary(t)
	refused.lis.Close()
	targets := []soakTarget{
		target("healthy", 12, healthy, "http"),
		target("healthy-tls", 4, newAdversary(t).useTLS(tlsConfig(t, d.roots)), "https"),
		target("redirect", 2, newAdversary(t).redirectTo("http://"+healthy.addr+"/redirected"), "http"),
		target("keepalive-race", 3, newAdversary(t).closeOnSecondRequest(), "http"),
		target("stall-headers", 1, newAdversary(t).stallHeaders(), "http"),
		target("stall-body", 1, newAdversary(t).stallBody(), "http"),
		target("slow-body", 1, newAdversary(t).slowLorisBody(), "http"),
		target("reset-mid-body", 1, newAdversary(t).resetMidBody(), "http"),
		target("truncated", 1, newAdversary(t).truncatedBody(), "http"),
		target("garbage", 1, newAdversary(t).sendGarbage(), "http"),
		target("bad-chunked", 1, newAdversary(t).badChunked(), "http"),
		target("endless-1xx", 1, newAdversary(t).infinite1xx(103), "http"),
		target("endless-body", 1, newAdversary(t).infiniteBody(), "http"),
		target("early-413", 1, newAdversary(t).earlyResponseDuringUpload(), "http"),
		target("tls-stall", 1, newAdversary(t).tlsStall(), "https"),
		target("refused", 1, refused, "http"),
		{name: "metadata", url: "http://metadata.test/latest/meta-data/", weight: 1},
		{name: "unknown-name", url: "http://no-such-name.test/", weight: 1},
	}
	total := 0
	for _, tg := range targets {
		total += tg.weight
	}
	pick := func(rng *rand.Rand) soakTarget {
		n := rng.IntN(total)
		for _, tg := range targets {
			if n -= tg.weight; n < 0 {
				return tg
			}
		}
		panic("unreachable")
	}

	// posts[id] is the target a POST with X-Request-Id id was sent to.
	var postsMu sync.Mutex
	posts := map[string]string{}

	ctx, stop := context.WithTimeout(t.Context(), duration)
	defer stop()
	var wg sync.WaitGroup
	for caller := range soakCallers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(caller)))
			// A bound on iterations as well as on time.
			for i := 0; i < 1_000_000 && ctx.Err() == nil; i++ {
				tg := pick(rng)
				req := &pooldv1.DoRequest{Url: tg.url, Timeout: pdur(time.Second)}
				if rng.IntN(2) == 0 {
					req.Method = "POST"
					req.Body = []byte(strings.Repeat("p", rng.IntN(64<<10)))
				}
				req, id := withRequestID(req)
				if req.Method == "POST" {
					postsMu.Lock()
					posts[id] = tg.name
					postsMu.Unlock()
				}
				// Every call is bounded: the server ends it within the
				// request timeout, and the client deadline only catches
				// a hang.
				callCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				cancelled := rng.IntN(8) == 0
				var timer *time.Timer
				if cancelled {
					timer = time.AfterFunc(time.Duration(rng.IntN(200))*time.Millisecond, cancel)
				}
				_, err := d.call(callCtx, req, rng.IntN(4) == 0)
				if timer != nil {
					timer.Stop()
				}
				cancel()
				outcome, bad := classifyOutcome(err, cancelled)
				if bad != "" {
					bad = fmt.Sprintf("%s %s: %s", req.GetMethod(), tg.name, bad)
				}
				tally.record(caller, outcome, bad)
				if status.Code(err) == codes.ResourceExhausted {
					// Back off as a well-behaved caller does, rather than
					// spin on the fast refusal.
					backoff := time.NewTimer(time.Duration(5+rng.IntN(25)) * time.Millisecond)
					select {
					case <-backoff.C:
					case <-ctx.Done():
						backoff.Stop()
					}
				}
			}
		}()
	}

	// The operator: policy swaps, closes and drains, and reads, while
	// traffic flows.
	wg.Add(1)
	go func() {
		defer wg.Done()
		rng := rand.New(rand.NewPCG(seed, 1<<32))
		tick := time.NewTicker(15 * time.Millisecond)
		defer tick.Stop()
		for ctx.Err() == nil {
			select {
			case <-tick.C:
			case <-ctx.Done():
				return
			}
			if err := soakOperate(d, rng, healthy.addr); err != nil {
				t.Errorf("operator: %v", err)
			}
			tally.mu.Lock()
			tally.admin++
			tally.mu.Unlock()
		}
	}()

	finished := make(chan struct{})
	go func() {
		wg.Wait()
		close(finished)
	}()
	select {
	case <-finished:
	case <-time.After(duration + 30*time.Second):
		buf := make([]byte, 1<<20)
		t.Fatalf("callers still running 30s after the soak ended:\n%s", buf[:runtime.Stack(buf, true)])
	}

	tally.mu.Lock()
	for caller, n := range tally.perCaller {
		if n == 0 {
			t.Errorf("caller %d completed no RPC", caller)
		}
	}
	for _, u := range tally.unexpected {
		t.Errorf("outcome outside the README table: %s", u)
	}
	tally.mu.Unlock()

	// No POST reached any upstream twice.
	for _, tg := range targets {
		if tg.a == nil {
			continue
		}
		for id, n := range tg.a.seenIDs() {
			postsMu.Lock()
			isPost := posts[id] != ""
			postsMu.Unlock()
			if isPost && n > 1 {
				t.Errorf("POST %s reached %s %d times", id, tg.name, n)
			}
		}
	}
	// Every pool is quiet once the callers are done.
	for _, tg := range targets {
		d.settled(t, urlHost(tg.url))
	}
	d.serving(t)
}

// classifyOutcome names how a call ended and, when the way it ended is
// not in the README's table, says why.
func classifyOutcome(err error, cancelled bool) (outcome, bad string) {
	if err == nil {
		return "OK", ""
	}
	st := status.Convert(err)
	reason := ""
	if info := errorInfo(err); info != nil {
		reason = info.GetReason()
		if info.GetDomain() != ErrorDomain {
			return st.Code().String() + " " + reason, "ErrorInfo domain " + info.GetDomain()
		}
	}
	outcome = st.Code().String() + " " + reason
	if st.Code() == codes.Canceled && cancelled && reason == "" {
		// The client's own cancellation: gRPC ends the call locally and
		// the server's answer never arrives.
		return "Canceled (by the caller, client side)", ""
	}
	delivered := errorInfo(err).GetMetadata()[MetadataMayHaveReachedUpstream] == "true"
	switch {
	case st.Code() == codes.Unavailable && delivered:
		return outcome, "UNAVAILABLE, which callers retry as is, for a request that may have reached the upstream: " + err.Error()
	case st.Code() == codes.Aborted && reason != ReasonEtagMismatch && !delivered:
		return outcome, "ABORTED without " + MetadataMayHaveReachedUpstream + ": " + err.Error()
	}
	for _, r := range readmeOutcomes[st.Code()] {
		if r == reason {
			return outcome, ""
		}
	}
	return outcome, err.Error()
}

// soakOperate does one random operator action.
func soakOperate(d *advDaemon, rng *rand.Rand, healthy string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pick := func(vs ...time.Duration) time.Duration { return vs[rng.IntN(len(vs))] }
	pickU := func(vs ...uint32) *uint32 { return pu32(vs[rng.IntN(len(vs))]) }
	var err error
	switch rng.IntN(8) {
	case 0, 1:
		_, err = d.policies.UpdatePolicy(ctx, &pooldv1.UpdatePolicyRequest{
			Policy: &pooldv1.Policy{
				Name:                  "policies/default",
				ResponseHeaderTimeout: pdur(pick(300*time.Millisecond, 500*time.Millisecond)),
				IdleConnTimeout:       pdur(pick(200*time.Millisecond, 90*time.Second)),
				MaxConnLifetime:       pdur(pick(0, 500*time.Millisecond)),
				MaxRequestsPerConn:    pickU(0, 3),
				MaxIdleConnsPerHost:   pickU(0, 2, 64),
				MaxRetries:            pickU(0, 1, 2),
				DisableKeepalives:     ptr(rng.IntN(10) == 0),
			},
			UpdateMask: fieldMask("response_header_timeout", "idle_conn_timeout", "max_conn_lifetime",
				"max_requests_per_conn", "max_idle_conns_per_host", "max_retries", "disable_keepalives"),
		})
	case 2:
		_, err = d.policies.UpdatePolicy(ctx, &pooldv1.UpdatePolicyRequest{
			Policy: &pooldv1.Policy{
				Name:               "policies/" + healthy,
				MaxConnsPerHost:    pickU(0, 2, 8),
				MaxPendingRequests: pickU(0, 4, 1024),
			},
			UpdateMask:   fieldMask("max_conns_per_host", "max_pending_requests"),
			AllowMissing: true,
		})
	case 3:
		_, err = d.pools.CloseIdleConnections(ctx, &pooldv1.CloseIdleConnectionsRequest{})
	case 4:
		_, err = d.pools.DrainConnections(ctx, &pooldv1.DrainConnectionsRequest{Host: healthy})
	case 5:
		_, err = d.pools.DrainConnections(ctx, &pooldv1.DrainConnectionsRequest{})
	case 6:
		_, err = d.pools.ListConnections(ctx, &pooldv1.ListConnectionsRequest{})
	default:
		_, err = d.pools.ListHosts(ctx, &pooldv1.ListHostsRequest{})
	}
	return err
}

func fieldMask(paths ...string) *fieldmaskpb.FieldMask { return &fieldmaskpb.FieldMask{Paths: paths} }
