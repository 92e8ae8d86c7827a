package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/durationpb"

	pooldv1 "github.com/poold/poold/gen/poold/v1"
)

// manyHosts is how many distinct hosts TestMemoryFollowsTheHostsInUse
// reaches: POOLD_MANY_HOSTS, or 50,000.
func manyHosts(t *testing.T) int {
	n := 50_000
	if v := os.Getenv("POOLD_MANY_HOSTS"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1 {
			t.Fatalf("POOLD_MANY_HOSTS=%q: want a positive count", v)
		}
	}
	return n
}

// loopbackHost returns the i'th of many distinct loopback addresses,
// skipping 127.0.0.0/16 where the daemon's own listeners are.
func loopbackHost(i int) string {
	x := i + 1<<16
	return fmt.Sprintf("127.%d.%d.%d", x>>16&255, x>>8&255, x&255)
}

// poolRequestTotals scrapes poold_pool_requests_total by host.
func poolRequestTotals(metricsAddr string) (map[string]float64, error) {
	resp, err := http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		return nil, fmt.Errorf("scraping /metrics: %w", err)
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), `poold_pool_requests_total{host="`)
		if !ok {
			continue
		}
		host, value, ok := strings.Cut(rest, `"} `)
		if !ok {
			return nil, fmt.Errorf("unexpected sample %q", sc.Text())
		}
		v, err := strconv.ParseFloat(value, 64)
		if err != nil {
			return nil, fmt.Errorf("sample %q: %w", sc.Text(), err)
		}
		out[host] = v
	}
	return out, sc.Err()
}

// TestMemoryFollowsTheHostsInUse reaches many distinct hosts once each and
// lets every connection idle out: the pools go, their memory goes back to
// the operating system, and the metrics neither grow with the hosts nor
// lose a count.
func TestMemoryFollowsTheHostsInUse(t *testing.T) {
	if testing.Short() {
		t.Skip("reaches 50,000 hosts")
	}
	hosts := manyHosts(t)
	const (
		callers = 32
		warmup  = 1000
		slack   = 10 << 20 // what RSS may end above where it started
	)
	ln, err := net.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	upstream := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	})}
	go upstream.Serve(ln)
	defer upstream.Close()

	bin := buildPoold(t)
	cmd, grpcAddr, metricsAddr := startPooldBinaryHTTP(t, bin, "--egress-allow=127.0.0.0/8", "--shutdown-delay=0s",
		"--idle-pool-timeout=1s", "--metrics-max-hosts=100")
	pid := cmd.Process.Pid
	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := clients{
		http:   pooldv1.NewHTTPServiceClient(conn),
		pools:  pooldv1.NewPoolServiceClient(conn),
		policy: pooldv1.NewPolicyServiceClient(conn),
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	setPolicy(ctx, t, c, &pooldv1.Policy{Name: "policies/default", IdleConnTimeout: durationpb.New(time.Second)}, "idle_conn_timeout")

	// Where it started: a daemon that has served, on one warm pool.
	for range warmup {
		if _, err := c.http.Do(ctx, &pooldv1.DoRequest{Url: "http://127.0.0.1:" + port + "/"}); err != nil {
			t.Fatal(err)
		}
	}
	start := procMemory(t, pid, "VmRSS")

	// The metrics are scraped all along: no sample may go down, and the
	// number of series stays bounded.
	stop := make(chan struct{})
	var scrapes sync.WaitGroup
	var maxSeries atomic.Int64
	scrapes.Go(func() {
		last := map[string]float64{}
		for {
			now, err := poolRequestTotals(metricsAddr)
			if err != nil {
				t.Error(err)
				return
			}
			maxSeries.Store(max(maxSeries.Load(), int64(len(now))))
			for h, v := range last {
				if now[h] < v {
					t.Errorf("requests_total{host=%q} went from %v to %v", h, v, now[h])
				}
			}
			last = now
			select {
			case <-stop:
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
	})

	began := time.Now()
	var next atomic.Int64
	var wg sync.WaitGroup
	for range callers {
		wg.Go(func() {
			for i := int(next.Add(1)) - 1; i < hosts && ctx.Err() == nil; i = int(next.Add(1)) - 1 {
				resp, err := c.http.Do(ctx, &pooldv1.DoRequest{Url: "http://" + loopbackHost(i) + ":" + port + "/"})
				if err != nil || resp.GetStatusCode() != 200 {
					t.Errorf("host %d: %v, %v", i, resp.GetStatusCode(), err)
					cancel()
				}
			}
		})
	}
	wg.Wait()
	burst := time.Since(began)
	peak := peakRSS(t, pid)

	// Every conn idles out after a second and its pool a second later.
	var live int
	for deadline := time.Now().Add(2 * time.Minute); ; {
		list, err := c.pools.ListHosts(ctx, &pooldv1.ListHostsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if live = len(list.GetHosts()); live == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if live != 0 {
		t.Errorf("ListHosts lists %d pools after every connection idled out, want 0", live)
	}
	// The scrapes stop before the memory is measured: at the daemon's
	// GOGC of 400, the garbage of each scrape of its metrics would stay
	// until the next collection, and count against the pools.
	close(stop)
	scrapes.Wait()
	// The memory goes back once the sweeper has removed a batch of pools;
	// the wait only turns a leak into a failure rather than a hang.
	end := procMemory(t, pid, "VmRSS")
	for deadline := time.Now().Add(30 * time.Second); end > start+slack && time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
		end = procMemory(t, pid, "VmRSS")
	}

	totals, err := poolRequestTotals(metricsAddr)
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, v := range totals {
		sum += v
	}
	t.Logf("%d hosts in %v (%.0f/s); poold RSS %.1f MiB at start, %.1f MiB at peak, %.1f MiB after the pools idled out; at most %d host series",
		hosts, burst.Round(time.Millisecond), float64(hosts)/burst.Seconds(),
		float64(start)/(1<<20), float64(peak)/(1<<20), float64(end)/(1<<20), maxSeries.Load())
	if end > start+slack {
		t.Errorf("RSS %.1f MiB after the pools idled out, want within %d MiB of the %.1f MiB it started at",
			float64(end)/(1<<20), slack>>20, float64(start)/(1<<20))
	}
	if n := maxSeries.Load(); n > 101 {
		t.Errorf("up to %d requests_total series, want at most 100 hosts and %q", n, "_other")
	}
	if want := float64(hosts + warmup); sum != want {
		t.Errorf("requests_total sums to %v, want %v", sum, want)
	}
}
