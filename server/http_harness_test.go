package server

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/poold/poold/dialer"
	pooldv1 "github.com/poold/poold/gen/poold/v1"
	"github.com/poold/poold/pool"
)

// httpHarness is an HTTPService on a real gRPC server on loopback, backed by
// a real engine, and a client for it.
type httpHarness struct {
	engine *pool.Engine
	client pooldv1.HTTPServiceClient
	conn   *grpc.ClientConn
}

// harnessConfig adjusts the engine and the service a harness starts.
type harnessConfig struct {
	pool   pool.Options
	http   HTTPOptions
	server []grpc.ServerOption
	client []grpc.DialOption
}

// newHTTPHarness starts the service. Everything it starts stops when the
// test ends.
func newHTTPHarness(t *testing.T, configure ...func(*harnessConfig)) *httpHarness {
	t.Helper()
	cfg := harnessConfig{}
	// Tests only ever talk to loopback, never through a proxy from the
	// environment.
	cfg.pool.Proxy = func(*url.URL) (*url.URL, error) { return nil, nil }
	for _, f := range configure {
		f(&cfg)
	}
	engine, err := pool.New(cfg.pool)
	if err != nil {
		t.Fatalf("pool.New: %v", err)
	}
	t.Cleanup(func() { _ = engine.Close() })

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	// The daemon's codec (codec.go), so that requests are read as in
	// production.
	srv := grpc.NewServer(append([]grpc.ServerOption{grpc.ForceServerCodecV2(newVTCodec())}, cfg.server...)...)
	pooldv1.RegisterHTTPServiceServer(srv, NewHTTPServer(engine, cfg.http))
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(lis)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-served
	})

	dialOpts := append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, cfg.client...)
	cc, err := grpc.NewClient("passthrough:///"+lis.Addr().String(), dialOpts...)
	if err != nil {
		t.Fatalf("grpc.NewClient: %v", err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return &httpHarness{engine: engine, client: pooldv1.NewHTTPServiceClient(cc), conn: cc}
}

func withPolicy(p pool.Policy) func(*harnessConfig) {
	return func(c *harnessConfig) { c.pool.Policies.Default = p }
}

func withMaxBodySize(n int64) func(*harnessConfig) {
	return func(c *harnessConfig) { c.http.MaxBodySize = n }
}

// withFlowControlWindow fixes gRPC's flow-control windows on both ends,
// which otherwise grow with the measured bandwidth-delay product up to
// 16 MiB per connection in each direction.
func withFlowControlWindow(n int32) func(*harnessConfig) {
	return func(c *harnessConfig) {
		c.server = append(c.server, grpc.InitialWindowSize(n), grpc.InitialConnWindowSize(n))
		c.client = append(c.client, grpc.WithInitialWindowSize(n), grpc.WithInitialConnWindowSize(n))
	}
}

func withResolver(r dialer.Resolver) func(*harnessConfig) {
	return func(c *harnessConfig) { c.pool.Dialer = &dialer.Dialer{Resolver: r} }
}

// testContext is bounded so that a hung request fails the test instead of
// the whole run.
func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// do calls Do and fails the test on an error.
func (h *httpHarness) do(t *testing.T, req *pooldv1.DoRequest) *pooldv1.DoResponse {
	t.Helper()
	resp, err := h.client.Do(testContext(t), req)
	if err != nil {
		t.Fatalf("Do(%s %s): %v", req.GetMethod(), req.GetUrl(), err)
	}
	return resp
}

// upstream is a loopback HTTP server for one test.
func upstream(t *testing.T, h http.HandlerFunc) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

// stall is a handler that answers nothing until the request is abandoned
// or the test ends. started receives one value per request, aborted one per
// request whose context the server saw canceled.
type stall struct {
	started chan struct{}
	aborted chan struct{}
	done    chan struct{}
}

func newStall(t *testing.T) *stall {
	s := &stall{started: make(chan struct{}, 16), aborted: make(chan struct{}, 16), done: make(chan struct{})}
	t.Cleanup(func() { close(s.done) })
	return s
}

func (s *stall) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.started <- struct{}{}
	select {
	case <-r.Context().Done():
		s.aborted <- struct{}{}
	case <-s.done:
	}
}

// receive waits for one value on ch, failing the test if none comes in time.
func receive[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
	var zero T
	return zero
}

// wantStatus checks err's code and ErrorInfo reason.
func wantStatus(t *testing.T, err error, code codes.Code, reason string) {
	t.Helper()
	st, ok := status.FromError(err)
	if !ok || err == nil {
		t.Fatalf("got error %v, want %v %s", err, code, reason)
	}
	if st.Code() != code {
		t.Fatalf("got code %v (%s), want %v %s", st.Code(), st.Message(), code, reason)
	}
	if got := errorReason(st); got != reason {
		t.Fatalf("got reason %q (%s), want %q", got, st.Message(), reason)
	}
}

func errorReason(st *status.Status) string {
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			if info.GetDomain() != ErrorDomain {
				return "wrong domain " + info.GetDomain()
			}
			return info.GetReason()
		}
	}
	return ""
}

// wantFieldViolation checks that err is INVALID_ARGUMENT naming field.
func wantFieldViolation(t *testing.T, err error, field string) {
	t.Helper()
	wantStatus(t, err, codes.InvalidArgument, ReasonInvalidArgument)
	var fields []string
	for _, d := range status.Convert(err).Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				if v.GetField() == field {
					if v.GetDescription() == "" {
						t.Errorf("violation of %s has no description", field)
					}
					return
				}
				fields = append(fields, v.GetField())
			}
		}
	}
	t.Fatalf("error %v names fields %q, want %q", err, fields, field)
}

// closedPort returns a loopback address nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	addr := lis.Addr().String()
	_ = lis.Close()
	return addr
}

// rawServer is a loopback TCP server that answers each connection with
// reply, whatever the request, and then closes it.
func rawServer(t *testing.T, reply string) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				// Take the request head first, so the client is reading
				// when the reply comes.
				br := bufio.NewReader(c)
				for {
					line, err := br.ReadString('\n')
					if err != nil || line == "\r\n" {
						break
					}
				}
				_, _ = io.WriteString(c, reply)
			}()
		}
	}()
	t.Cleanup(func() {
		_ = lis.Close()
		wg.Wait()
	})
	return lis.Addr().String()
}

// hijackAfter is a handler that writes raw bytes on the connection and
// closes it, to break a response part way.
func hijackAfter(raw string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			panic(err)
		}
		defer c.Close()
		_, _ = brw.WriteString(raw)
		_ = brw.Flush()
	}
}

// failingResolver fails every lookup as if the name did not exist.
type failingResolver struct{}

func (failingResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

func cmpProto() cmp.Option { return protocmp.Transform() }

func ptr[T any](v T) *T { return &v }

// headerValues collects the values of name in order.
func headerValues(hs []*pooldv1.Header, name string) []string {
	var out []string
	for _, h := range hs {
		if http.CanonicalHeaderKey(h.GetName()) == http.CanonicalHeaderKey(name) {
			out = append(out, h.GetValue())
		}
	}
	return out
}
