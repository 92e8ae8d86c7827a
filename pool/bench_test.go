package pool_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/poold/poold/pool"
)

// The benchmarks compare the engine with net/http's Transport on the same
// loopback upstream. The upstream runs in a child process (this test binary
// re-executed), so that memory and goroutines measured here belong to the
// client side alone. See BENCHMARKS.md for results and how to rerun them.

const upstreamEnv = "POOLD_BENCH_UPSTREAM"

// TestBenchUpstreamProcess is not a test: it is the upstream the benchmarks
// start in a child process. It serves until its stdin closes.
func TestBenchUpstreamProcess(t *testing.T) {
	if os.Getenv(upstreamEnv) == "" {
		t.Skip("runs only as the benchmarks' upstream process")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	small := strings.Repeat("x", 100)
	large := strings.Repeat("y", 16<<10)
	// /hold/ROUND/N answers once N requests of that round are held at
	// once, so N connections are open together; they all go idle after.
	type barrier struct {
		held    int
		release chan struct{}
	}
	var mu sync.Mutex
	rounds := map[string]*barrier{}
	mux := http.NewServeMux()
	mux.HandleFunc("/100", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, small) })
	mux.HandleFunc("/16k", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, large) })
	mux.HandleFunc("/hold/", func(w http.ResponseWriter, r *http.Request) {
		round, count, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/hold/"), "/")
		var n int
		fmt.Sscan(count, &n)
		mu.Lock()
		bar := rounds[round]
		if bar == nil {
			bar = &barrier{release: make(chan struct{})}
			rounds[round] = bar
		}
		if bar.held++; bar.held == n {
			close(bar.release)
		}
		mu.Unlock()
		select {
		case <-bar.release:
		case <-time.After(30 * time.Second):
		}
		io.WriteString(w, "ok")
	})
	srv := &http.Server{Handler: mux, IdleTimeout: 5 * time.Minute}
	// HTTP/1.1 and, for the HTTP/2 benchmarks, h2c with prior knowledge.
	srv.Protocols = new(http.Protocols)
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	go srv.Serve(ln)
	fmt.Println(ln.Addr().String())
	io.Copy(io.Discard, os.Stdin)
	srv.Close()
}

// startUpstreamProcess runs TestBenchUpstreamProcess in a child and returns
// its address.
func startUpstreamProcess(b *testing.B) string {
	b.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestBenchUpstreamProcess$", "-test.v=false")
	cmd.Env = append(os.Environ(), upstreamEnv+"=1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		stdin.Close()
		cmd.Wait()
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		b.Fatalf("upstream process: %v", err)
	}
	return strings.TrimSpace(line)
}

// newTransport returns one of the two contenders, configured alike: plenty
// of idle connections per host, no connection limit. The returned func
// closes it; nothing else keeps it alive, so memory measured after it is
// closed does not count it.
func newTransport(b *testing.B, name string, idlePerHost uint32) (http.RoundTripper, func()) {
	b.Helper()
	switch name {
	case "engine=poold":
		policy := benchPolicy(idlePerHost)
		engine, err := pool.New(pool.Options{Policies: pool.PolicySet{Default: policy}})
		if err != nil {
			b.Fatal(err)
		}
		return engine, func() { engine.Close() }
	case "engine=poold-h2c":
		policy := benchPolicy(idlePerHost)
		policy.Protocols = ptrTo(pool.ProtocolsH2C)
		engine, err := pool.New(pool.Options{Policies: pool.PolicySet{Default: policy}})
		if err != nil {
			b.Fatal(err)
		}
		return engine, func() { engine.Close() }
	case "engine=net-http-h2c":
		std := &http.Transport{
			MaxIdleConnsPerHost: int(idlePerHost),
			IdleConnTimeout:     90 * time.Second,
			DisableCompression:  true,
			Protocols:           new(http.Protocols),
		}
		std.Protocols.SetUnencryptedHTTP2(true)
		return std, std.CloseIdleConnections
	case "engine=net-http":
		std := &http.Transport{
			MaxIdleConnsPerHost: int(idlePerHost),
			IdleConnTimeout:     90 * time.Second,
			DisableCompression:  true, // the engine does not negotiate gzip either
		}
		return std, std.CloseIdleConnections
	}
	b.Fatalf("unknown transport %q", name)
	return nil, nil
}

// benchPolicy is the built-in policy with room for idlePerHost
// idle conns per host and no global idle limit.
func benchPolicy(idlePerHost uint32) pool.Policy {
	policy := pool.DefaultPolicy()
	policy.MaxIdleConnsPerHost = &idlePerHost
	unlimited := uint32(0)
	policy.MaxIdleConns = &unlimited
	return policy
}

func BenchmarkParallelGET(b *testing.B) {
	addr := startUpstreamProcess(b)
	for _, size := range []struct{ name, path string }{{"body=100B", "/100"}, {"body=16KiB", "/16k"}} {
		for _, name := range []string{"engine=poold", "engine=net-http"} {
			b.Run(size.name+"/"+name, func(b *testing.B) {
				parallelGET(b, name, context.Background(), "http://"+addr+size.path)
			})
		}
	}
}

// BenchmarkParallelGETH2C is BenchmarkParallelGET over HTTP/2 with prior
// knowledge: every goroutine's requests share one conn as streams.
func BenchmarkParallelGETH2C(b *testing.B) {
	addr := startUpstreamProcess(b)
	for _, size := range []struct{ name, path string }{{"body=100B", "/100"}, {"body=16KiB", "/16k"}} {
		for _, name := range []string{"engine=poold-h2c", "engine=net-http-h2c"} {
			b.Run(size.name+"/"+name, func(b *testing.B) {
				parallelGET(b, name, context.Background(), "http://"+addr+size.path)
			})
		}
	}
}

func ptrTo[T any](v T) *T { return &v }

// BenchmarkParallelGETWithDeadline is BenchmarkParallelGET's 100-byte case
// with a request context that can end, as every request through the daemon
// has (gRPC calls carry a deadline): the engine then arms a cancellation
// watcher per request, which costs allocations a background context does not.
func BenchmarkParallelGETWithDeadline(b *testing.B) {
	addr := startUpstreamProcess(b)
	for _, name := range []string{"engine=poold", "engine=net-http"} {
		b.Run(name, func(b *testing.B) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
			defer cancel()
			parallelGET(b, name, ctx, "http://"+addr+"/100")
		})
	}
}

// parallelGET runs GETs of url with ctx on the named engine from every
// benchmark goroutine, reading each body to the end.
func parallelGET(b *testing.B, name string, ctx context.Context, url string) {
	rt, closeRT := newTransport(b, name, 256)
	defer closeRT()
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
		for pb.Next() {
			resp, err := rt.RoundTrip(req)
			if err != nil {
				b.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	})
}

// BenchmarkIdleConns opens 10,000 connections at once, lets them go idle,
// and reports what each idle connection costs the client: bytes of heap and
// goroutine stacks, and goroutines.
func BenchmarkIdleConns(b *testing.B) {
	const conns = 10000
	addr := startUpstreamProcess(b)
	round := 0
	for _, name := range []string{"engine=poold", "engine=net-http"} {
		b.Run(name, func(b *testing.B) {
			for range b.N {
				rt, closeRT := newTransport(b, name, conns)
				heap0, g0 := heapAndGoroutines()
				var wg sync.WaitGroup
				var failed atomic.Int64
				round++
				url := fmt.Sprintf("http://%s/hold/%s-%d/%d", addr, name, round, conns)
				for range conns {
					wg.Add(1)
					go func() {
						defer wg.Done()
						req, _ := http.NewRequest("GET", url, nil)
						resp, err := rt.RoundTrip(req)
						if err != nil {
							failed.Add(1)
							return
						}
						io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
					}()
				}
				wg.Wait()
				if n := failed.Load(); n > 0 {
					b.Fatalf("%d of %d requests failed", n, conns)
				}
				heap1, g1 := heapAndGoroutines()
				if e, ok := rt.(*pool.Engine); ok {
					if h, _ := e.Host(addr); h.Idle != conns {
						b.Fatalf("%d idle conns, want %d: the measurement would be per the wrong count", h.Idle, conns)
					}
				}
				if path := os.Getenv("POOLD_IDLE_HEAP_PROFILE"); path != "" && name == "engine=poold" {
					writeHeapProfile(b, path)
				}
				b.ReportMetric(float64(heap1-heap0)/conns, "B/idle-conn")
				b.ReportMetric(float64(g1-g0)/conns, "goroutines/idle-conn")
				closeRT()
			}
		})
	}
}

func heapAndGoroutines() (int64, int) {
	// Let finished request goroutines exit before counting.
	deadline := time.Now().Add(2 * time.Second)
	g := runtime.NumGoroutine()
	for time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		if n := runtime.NumGoroutine(); n == g {
			break
		} else {
			g = n
		}
	}
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	// Stacks count: an idle connection's goroutines are memory too.
	return int64(ms.HeapAlloc + ms.StackInuse), runtime.NumGoroutine()
}

// writeHeapProfile records what is live while the idle conns are held, to
// see what an idle conn costs.
func writeHeapProfile(b *testing.B, path string) {
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := pprof.WriteHeapProfile(f); err != nil {
		b.Fatal(err)
	}
}
