package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/descriptorpb"

	pooldv1 "github.com/poold/poold/gen/poold/v1"
)

// testDaemon is a poold started in-process by run, as main starts it.
type testDaemon struct {
	grpcAddr, httpAddr string
	debugAddr          string // "" without --debug-listen
	apiAddr            string // "" without --http-api-listen
	conn               *grpc.ClientConn
	done               chan error
	cancel             context.CancelFunc
}

// startDaemon runs the daemon on loopback ports chosen by the kernel and
// waits for its "poold listening" log line.
func startDaemon(t *testing.T, args ...string) *testDaemon {
	t.Helper()
	return startDaemonEnv(t, nil, args...)
}

// startDaemonEnv is startDaemon with env as the environment run reads.
func startDaemonEnv(t *testing.T, env map[string]string, args ...string) *testDaemon {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	args = append([]string{"--listen=127.0.0.1:0", "--http-listen=127.0.0.1:0", "--log-format=json", "--shutdown-grace=2s", "--shutdown-delay=0s", "--egress-allow=127.0.0.1/32"}, args...)
	d := &testDaemon{done: make(chan error, 1), cancel: cancel}
	go func() {
		err := run(ctx, args, func(k string) string { return env[k] }, io.Discard, pw)
		pw.Close()
		d.done <- err
	}()
	addrs := make(chan [4]string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			var line struct {
				Msg, GRPC, HTTP, Debug string
				HTTPAPI                string `json:"http_api"`
			}
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "poold listening" {
				addrs <- [4]string{line.GRPC, line.HTTP, line.Debug, line.HTTPAPI}
			}
		}
		io.Copy(io.Discard, pr)
	}()
	select {
	case a := <-addrs:
		d.grpcAddr, d.httpAddr, d.debugAddr, d.apiAddr = a[0], a[1], a[2], a[3]
	case err := <-d.done:
		t.Fatalf("daemon exited before listening: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("daemon did not report listening within 10s")
	}
	conn, err := grpc.NewClient(d.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	d.conn = conn
	t.Cleanup(func() {
		conn.Close()
		d.stop(t)
	})
	return d
}

func (d *testDaemon) stop(t *testing.T) {
	t.Helper()
	d.cancel()
	select {
	case err := <-d.done:
		if err != nil {
			t.Errorf("run returned %v after shutdown, want nil", err)
		}
		d.done <- err // later stop calls see it too
	case <-time.After(10 * time.Second):
		t.Error("daemon did not stop within 10s")
	}
}

func TestBadConfigurationExitsTwoNamingTheFlag(t *testing.T) {
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"listen without port", []string{"--listen=notaport"}, nil, `--listen`},
		{"http-listen port out of range", []string{"--http-listen=:99999"}, nil, `--http-listen`},
		{"unknown log format", []string{"--log-format=xml"}, nil, `--log-format`},
		{"unknown log level", []string{"--log-level=loud"}, nil, `--log-level`},
		{"negative grace", []string{"--shutdown-grace=-1s"}, nil, `--shutdown-grace`},
		{"negative delay", []string{"--shutdown-delay=-1s"}, nil, `--shutdown-delay`},
		{"buffer budget under the body limit", []string{"--max-buffered-bytes=1MiB"}, nil, `--max-buffered-bytes`},
		{"zero message size", []string{"--max-recv-msg-size=0"}, nil, `--max-recv-msg-size`},
		{"unknown flag", []string{"--no-such-flag"}, nil, `--no-such-flag`},
		{"stray argument", []string{"serve"}, nil, `"serve"`},
		{"debug listener on every interface", []string{"--debug-listen=:6060"}, nil, `--debug-listen`},
		{"debug listener on a routable address", []string{"--debug-listen=192.0.2.1:6060"}, nil, `--debug-listen-public`},
		{"pipeline depth of zero", []string{"--max-pipeline-depth=0"}, nil, `--max-pipeline-depth`},
		{"stream window below HTTP/2's minimum", []string{"--grpc-stream-window=1KiB"}, nil, `--grpc-stream-window`},
		{"negative gc percent", []string{"--gc-percent=-5"}, nil, `--gc-percent`},
		{"absurd stream workers", []string{"--grpc-stream-workers=1000000"}, nil, `--grpc-stream-workers`},
		{"bad value from the environment", nil, map[string]string{"POOLD_LISTEN": "notaport"}, `--listen (from POOLD_LISTEN)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stderr strings.Builder
			getenv := func(k string) string { return tt.env[k] }
			err := run(context.Background(), tt.args, getenv, io.Discard, &stderr)
			if code := exitCode(err); code != 2 {
				t.Fatalf("exit code = %d (err %v), want 2", code, err)
			}
			if !strings.Contains(stderr.String(), tt.want) {
				t.Errorf("stderr = %q, want it to name %s", stderr.String(), tt.want)
			}
		})
	}
}

func TestFlagsFallBackToTheEnvironmentAndFlagsWin(t *testing.T) {
	env := map[string]string{"POOLD_LOG_FORMAT": "json", "POOLD_SHUTDOWN_GRACE": "3s"}
	cfg, err := parseConfig([]string{"--shutdown-grace=7s"}, func(k string) string { return env[k] }, io.Discard, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.logFormat != "json" {
		t.Errorf("log format = %q, want json from POOLD_LOG_FORMAT", cfg.logFormat)
	}
	if cfg.shutdownGrace != 7*time.Second {
		t.Errorf("shutdown grace = %v, want the flag's 7s over the environment's 3s", cfg.shutdownGrace)
	}
}

func TestHelpListsEveryFlagWithItsEnvironmentVariable(t *testing.T) {
	var stdout strings.Builder
	err := run(context.Background(), []string{"--help"}, func(string) string { return "" }, &stdout, io.Discard)
	if code := exitCode(err); code != 0 {
		t.Fatalf("exit code = %d, want 0", code)
	}
	for _, want := range []string{"--listen", "POOLD_LISTEN", "--http-listen", "--log-level", "--log-format", "--shutdown-grace", "--max-recv-msg-size", "--max-send-msg-size", "--grpc-keepalive-min-time", ":7070", ":9090"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("--help output lacks %q", want)
		}
	}
}

func TestDaemonServesHealthReflectionAndMetrics(t *testing.T) {
	d := startDaemon(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	resp, err := healthpb.NewHealthClient(d.conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health = %v, %v; want SERVING", resp, err)
	}

	services := reflectServices(ctx, t, d.conn)
	for _, want := range []string{"poold.v1.HTTPService", "poold.v1.PoolService", "poold.v1.PolicyService", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"} {
		if !strings.Contains(strings.Join(services, " "), want) {
			t.Errorf("reflection lists %v, missing %s", services, want)
		}
	}

	// Operators read the contract through grpcurl describe: every field of
	// every poold.v1 message must reach them with its comment.
	for _, file := range []string{"poold/v1/http.proto", "poold/v1/pool.proto", "poold/v1/policy.proto"} {
		fd := reflectFile(ctx, t, d.conn, file)
		assertEverythingDocumented(t, fd)
	}

	for _, path := range []string{"/healthz", "/readyz"} {
		if body := httpGet(t, "http://"+d.httpAddr+path); !strings.Contains(body, "ok") {
			t.Errorf("%s = %q, want ok", path, body)
		}
	}
	if body := httpGet(t, "http://"+d.httpAddr+"/metrics"); !strings.Contains(body, `grpc_server_handled_total{grpc_code="OK",grpc_method="Check",grpc_service="grpc.health.v1.Health"`) {
		t.Errorf("/metrics lacks the health Check in grpc_server_handled_total")
	}
}

// assertEverythingDocumented fails for every message, field, enum value,
// service and method of fd that has no leading comment.
func assertEverythingDocumented(t *testing.T, fd *descriptorpb.FileDescriptorProto) {
	t.Helper()
	documented := map[string]bool{}
	for _, loc := range fd.GetSourceCodeInfo().GetLocation() {
		if strings.TrimSpace(loc.GetLeadingComments()) != "" {
			documented[pathKey(loc.GetPath())] = true
		}
	}
	if len(documented) == 0 {
		t.Fatalf("%s: reflection served no comments at all", fd.GetName())
	}
	const (
		fileMessage = 4
		fileEnum    = 5
		fileService = 6
		msgField    = 2
		enumValue   = 2
		svcMethod   = 2
	)
	for i, m := range fd.GetMessageType() {
		if !documented[pathKey([]int32{fileMessage, int32(i)})] {
			t.Errorf("message %s has no comment", m.GetName())
		}
		for j, f := range m.GetField() {
			if !documented[pathKey([]int32{fileMessage, int32(i), msgField, int32(j)})] {
				t.Errorf("field %s.%s has no comment", m.GetName(), f.GetName())
			}
		}
	}
	for i, e := range fd.GetEnumType() {
		if !documented[pathKey([]int32{fileEnum, int32(i)})] {
			t.Errorf("enum %s has no comment", e.GetName())
		}
		for j, v := range e.GetValue() {
			if !documented[pathKey([]int32{fileEnum, int32(i), enumValue, int32(j)})] {
				t.Errorf("enum value %s has no comment", v.GetName())
			}
		}
	}
	for i, s := range fd.GetService() {
		if !documented[pathKey([]int32{fileService, int32(i)})] {
			t.Errorf("service %s has no comment", s.GetName())
		}
		for j, m := range s.GetMethod() {
			if !documented[pathKey([]int32{fileService, int32(i), svcMethod, int32(j)})] {
				t.Errorf("rpc %s.%s has no comment", s.GetName(), m.GetName())
			}
		}
	}
}

// pathKey names a source-info location path, e.g. [4 2 2 0] (the first
// field of the third message).
func pathKey(p []int32) string { return fmt.Sprint(p) }

func reflectServices(ctx context.Context, t *testing.T, conn *grpc.ClientConn) []string {
	t.Helper()
	resp := reflect(ctx, t, conn, &reflectionpb.ServerReflectionRequest{
		MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{},
	})
	var names []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		names = append(names, s.GetName())
	}
	return names
}

func reflectFile(ctx context.Context, t *testing.T, conn *grpc.ClientConn, name string) *descriptorpb.FileDescriptorProto {
	t.Helper()
	resp := reflect(ctx, t, conn, &reflectionpb.ServerReflectionRequest{
		MessageRequest: &reflectionpb.ServerReflectionRequest_FileByFilename{FileByFilename: name},
	})
	for _, raw := range resp.GetFileDescriptorResponse().GetFileDescriptorProto() {
		var fd descriptorpb.FileDescriptorProto
		if err := proto.Unmarshal(raw, &fd); err != nil {
			t.Fatal(err)
		}
		if fd.GetName() == name {
			return &fd
		}
	}
	t.Fatalf("reflection did not return %s", name)
	return nil
}

func reflect(ctx context.Context, t *testing.T, conn *grpc.ClientConn, req *reflectionpb.ServerReflectionRequest) *reflectionpb.ServerReflectionResponse {
	t.Helper()
	stream, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer stream.CloseSend()
	if err := stream.Send(req); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func httpGet(t *testing.T, url string) string {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(body)
}

// buildPoold builds the daemon binary once per test run for tests that send
// it real signals.
func buildPoold(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "poold")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("building poold: %v", err)
	}
	return bin
}

func TestDebugListenerServesProfilesOnlyWhenAsked(t *testing.T) {
	d := startDaemon(t, "--debug-listen=127.0.0.1:0")
	resp, err := http.Get("http://" + d.debugAddr + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "goroutine profile:") {
		t.Fatalf("GET /debug/pprof/goroutine = %d %.80q, want 200 and a goroutine profile", resp.StatusCode, body)
	}
	// The operator port must not grow profiling by accident.
	resp, err = http.Get("http://" + d.httpAddr + "/debug/pprof/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET /debug/pprof/ on --http-listen = %d, want 404", resp.StatusCode)
	}

	if _, err := parseConfig([]string{"--debug-listen=0.0.0.0:0", "--debug-listen-public"}, func(string) string { return "" }, io.Discard, io.Discard); err != nil {
		t.Errorf("--debug-listen=0.0.0.0:0 --debug-listen-public: %v, want it accepted", err)
	}
}

// With idle watchers and nothing in flight, shutdown costs the delay, not
// the grace: health says NOT_SERVING at once, calls are still served for
// the delay (a new connection included), then the watch streams end with
// UNAVAILABLE and poold exits 0.
func TestSIGTERMWithIdleWatchersTakesTheDelayNotTheGrace(t *testing.T) {
	bin := buildPoold(t)
	const delay, grace = 3 * time.Second, 60 * time.Second
	cmd, grpcAddr := startPooldBinary(t, bin, "--shutdown-delay="+delay.String(), "--shutdown-grace="+grace.String())

	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	watch, err := healthpb.NewHealthClient(conn).Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := watch.Recv(); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health Watch = %v, %v; want SERVING", r, err)
	}
	events, err := pooldv1.NewPoolServiceClient(conn).WatchEvents(ctx, &pooldv1.WatchEventsRequest{})
	if err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitErr := make(chan error, 1)
	go func() { waitErr <- cmd.Wait() }()

	if r, err := watch.Recv(); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("health Watch after SIGTERM = %v, %v; want NOT_SERVING", r, err)
	}
	// Within the delay a caller that has not noticed yet is still served,
	// on a new connection too.
	late, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer late.Close()
	checkCtx, checkCancel := context.WithTimeout(ctx, delay)
	r, err := healthpb.NewHealthClient(late).Check(checkCtx, &healthpb.HealthCheckRequest{})
	checkCancel()
	if err != nil || r.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Errorf("a call on a new connection during the delay = %v, %v; want it served, NOT_SERVING", r, err)
	}

	for name, recv := range map[string]func() error{
		"health Watch": func() error { _, err := watch.Recv(); return err },
		"WatchEvents":  func() error { _, err := events.Recv(); return err },
	} {
		var err error
		for err == nil {
			err = recv()
		}
		if code, reason := errorInfoReason(err); code != codes.Unavailable || reason != "SHUTTING_DOWN" {
			t.Errorf("%s ended with %v, want UNAVAILABLE SHUTTING_DOWN", name, err)
		}
	}
	select {
	case err := <-waitErr:
		if err != nil {
			t.Fatalf("poold exited with %v, want 0", err)
		}
	case <-time.After(delay + 10*time.Second):
		t.Fatalf("poold still running %v after SIGTERM (delay %v, grace %v)", time.Since(start), delay, grace)
	}
	took := time.Since(start)
	if took < delay || took > delay+2*time.Second {
		t.Errorf("shutdown took %v, want the %v delay (and at most 2s more), not the %v grace", took, delay, grace)
	}
}
