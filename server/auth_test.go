package server

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthgrpc "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pooldv1 "github.com/poold/poold/gen/poold/v1"
)

func writeTokens(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// serveWithInterceptors starts a gRPC server on loopback whose poold
// services are unimplemented, so that a call that passes the interceptors
// answers UNIMPLEMENTED.
func serveWithInterceptors(t *testing.T, unary []grpc.UnaryServerInterceptor, stream []grpc.StreamServerInterceptor) *grpc.ClientConn {
	t.Helper()
	s := grpc.NewServer(grpc.ChainUnaryInterceptor(unary...), grpc.ChainStreamInterceptor(stream...))
	pooldv1.RegisterHTTPServiceServer(s, pooldv1.UnimplementedHTTPServiceServer{})
	pooldv1.RegisterPoolServiceServer(s, pooldv1.UnimplementedPoolServiceServer{})
	pooldv1.RegisterPolicyServiceServer(s, pooldv1.UnimplementedPolicyServiceServer{})
	healthgrpc.RegisterHealthServer(s, health.NewServer())
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(lis)
	t.Cleanup(s.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func withToken(ctx context.Context, token string) context.Context {
	if token == "" {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
}

func TestTokensGuardTheirServicesAndLeaveHealthOpen(t *testing.T) {
	dir := t.TempDir()
	writeTokens(t, filepath.Join(dir, "admin"), "# operators\nadmin-1\n\nadmin-2\n")
	writeTokens(t, filepath.Join(dir, "client"), "client-1\n")
	admin, err := LoadTokenFile(filepath.Join(dir, "admin"))
	if err != nil {
		t.Fatal(err)
	}
	client, err := LoadTokenFile(filepath.Join(dir, "client"))
	if err != nil {
		t.Fatal(err)
	}
	unary, stream := authInterceptors(
		authRule{services: adminServiceNames, tokens: admin},
		authRule{services: map[string]bool{httpServiceName: true}, tokens: client},
	)
	conn := serveWithInterceptors(t, unary, stream)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	pools := pooldv1.NewPoolServiceClient(conn)
	policies := pooldv1.NewPolicyServiceClient(conn)
	httpc := pooldv1.NewHTTPServiceClient(conn)
	tests := []struct {
		name  string
		call  func(context.Context) error
		token string
		want  codes.Code
	}{
		{"pool service without a token", func(ctx context.Context) error {
			_, err := pools.ListHosts(ctx, &pooldv1.ListHostsRequest{})
			return err
		}, "", codes.Unauthenticated},
		{"pool service with a wrong token", func(ctx context.Context) error {
			_, err := pools.ListHosts(ctx, &pooldv1.ListHostsRequest{})
			return err
		}, "nope", codes.PermissionDenied},
		{"pool service with a client token", func(ctx context.Context) error {
			_, err := pools.ListHosts(ctx, &pooldv1.ListHostsRequest{})
			return err
		}, "client-1", codes.PermissionDenied},
		{"pool service with the second admin token", func(ctx context.Context) error {
			_, err := pools.ListHosts(ctx, &pooldv1.ListHostsRequest{})
			return err
		}, "admin-2", codes.Unimplemented},
		{"policy service with an admin token", func(ctx context.Context) error {
			_, err := policies.ListPolicies(ctx, &pooldv1.ListPoliciesRequest{})
			return err
		}, "admin-1", codes.Unimplemented},
		{"policy service without a token", func(ctx context.Context) error {
			_, err := policies.ListPolicies(ctx, &pooldv1.ListPoliciesRequest{})
			return err
		}, "", codes.Unauthenticated},
		{"watch stream without a token", func(ctx context.Context) error {
			s, err := pools.WatchEvents(ctx, &pooldv1.WatchEventsRequest{})
			if err != nil {
				return err
			}
			_, err = s.Recv()
			return err
		}, "", codes.Unauthenticated},
		{"http service with an admin token", func(ctx context.Context) error { _, err := httpc.Do(ctx, &pooldv1.DoRequest{}); return err }, "admin-1", codes.PermissionDenied},
		{"http service with a client token", func(ctx context.Context) error { _, err := httpc.Do(ctx, &pooldv1.DoRequest{}); return err }, "client-1", codes.Unimplemented},
		{"health without a token", func(ctx context.Context) error {
			_, err := healthgrpc.NewHealthClient(conn).Check(ctx, &healthgrpc.HealthCheckRequest{})
			return err
		}, "", codes.OK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := status.Code(tt.call(withToken(ctx, tt.token))); got != tt.want {
				t.Errorf("code = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestRotatedTokensTakeEffectWithoutARestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tokens")
	writeTokens(t, path, "old\n")
	tokens, err := LoadTokenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !tokens.Valid("old") || tokens.Valid("new") {
		t.Fatal("initial tokens wrong")
	}
	writeTokens(t, path, "new\n")
	// Make the change visible even on filesystems with coarse timestamps.
	later := time.Now().Add(time.Minute)
	os.Chtimes(path, later, later)
	if err := tokens.ReloadIfChanged(); err != nil {
		t.Fatal(err)
	}
	if tokens.Valid("old") || !tokens.Valid("new") {
		t.Error("after rotation: old token still valid or new one refused")
	}

	writeTokens(t, path, "# all commented out\n")
	if err := tokens.Reload(); err == nil {
		t.Error("reloading a file without tokens succeeded; it would lock every caller out")
	}
	if !tokens.Valid("new") {
		t.Error("a failed reload dropped the tokens in force")
	}
}

func TestInFlightCapFailsFastOverTheLimit(t *testing.T) {
	limit := newInFlightLimit(2)
	if err := limit.acquire(); err != nil {
		t.Fatal(err)
	}
	if err := limit.acquire(); err != nil {
		t.Fatal(err)
	}
	code, reason := codeAndReason(limit.acquire())
	if code != codes.ResourceExhausted || reason != ReasonOverloaded {
		t.Errorf("third acquire = %v %s, want RESOURCE_EXHAUSTED %s", code, reason, ReasonOverloaded)
	}
	limit.release()
	if err := limit.acquire(); err != nil {
		t.Errorf("acquire after a release = %v, want a free slot", err)
	}
}
