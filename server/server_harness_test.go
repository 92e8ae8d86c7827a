package server

import (
	"net"
	"net/url"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/poold/poold/pool"
)

// newEngineAndStore starts an engine that never takes a proxy from the
// environment, whatever opts say, and a policy store over it (in memory
// for policyFile ""); both end with the test.
func newEngineAndStore(t *testing.T, opts pool.Options, policyFile string) (*pool.Engine, *PolicyStore) {
	t.Helper()
	opts.Proxy = func(*url.URL) (*url.URL, error) { return nil, nil }
	engine, err := pool.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = engine.Close() })
	store, err := OpenPolicyStore(policyFile, engine.SetPolicies, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	return engine, store
}

// serveTest runs srv on a loopback listener and returns its address, a
// client connection to it (over clientCreds; nil is plaintext) and a
// channel closed once Serve has returned. The server stops, if the test did not
// stop it, before the test's engine closes.
func serveTest(t *testing.T, srv *Server, clientCreds credentials.TransportCredentials) (string, *grpc.ClientConn, <-chan struct{}) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.GRPC.Serve(lis)
	}()
	t.Cleanup(func() {
		srv.Stop(time.Second)
		<-served
	})
	if clientCreds == nil {
		clientCreds = insecure.NewCredentials()
	}
	cc, err := grpc.NewClient("passthrough:///"+lis.Addr().String(), grpc.WithTransportCredentials(clientCreds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return lis.Addr().String(), cc, served
}
