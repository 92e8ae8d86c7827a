package server

import (
	"crypto/tls"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"

	"github.com/poold/poold/dialer"
	"github.com/poold/poold/dialer/dialertest"
	pooldv1 "github.com/poold/poold/gen/poold/v1"
	"github.com/poold/poold/pool"
)

// With mTLS, a caller is bound to a rule set by its client certificate:
// two callers with certificates for different names get different egress
// answers for the same URL.
func TestEgressRuleSetsBindClientCertificates(t *testing.T) {
	up := upstream(t, func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) })
	dir := t.TempDir()
	ca := dialertest.NewCA(t)
	cert, key := ca.Issue(t, 100, "127.0.0.1")
	start := time.Now().Add(-time.Minute)
	certFile, keyFile, caFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"), filepath.Join(dir, "ca.pem")
	writeFile(t, certFile, cert, start)
	writeFile(t, keyFile, key, start)
	writeFile(t, caFile, ca.PEM, start)
	lt, err := NewListenerTLS(certFile, keyFile, caFile)
	if err != nil {
		t.Fatal(err)
	}

	engine, store := newEngineAndStore(t, pool.Options{}, "")
	srv, err := New(Config{Engine: engine, Policies: store, TLS: lt, Egress: &EgressOptions{Default: dialer.EgressConfig{}}})
	if err != nil {
		t.Fatal(err)
	}
	addr, _, _ := serveTest(t, srv, credentials.NewTLS(&tls.Config{RootCAs: ca.Pool}))
	ctx := testContext(t)
	if _, err := store.UpdateEgress(ctx, &pooldv1.EgressRuleSet{
		Name: "egressRuleSets/billing", Allow: []string{"127.0.0.1/32"}, Callers: []string{"cert:billing.clients.example"},
	}, nil, true); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name string
		want codes.Code
	}{
		{"billing.clients.example", codes.OK},
		{"reports.clients.example", codes.PermissionDenied},
	} {
		clientCert := ca.Certificate(t, 200, tc.name)
		cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
			RootCAs: ca.Pool, Certificates: []tls.Certificate{clientCert},
		})))
		if err != nil {
			t.Fatal(err)
		}
		_, err = pooldv1.NewHTTPServiceClient(cc).Do(ctx, &pooldv1.DoRequest{Url: up.URL})
		cc.Close()
		if code, _ := codeAndReason(err); code != tc.want {
			t.Errorf("a caller with a certificate for %s: %v, want %v", tc.name, err, tc.want)
		}
	}
}
