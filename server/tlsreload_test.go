package server

import (
	"context"
	"crypto/tls"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/poold/poold/dialer/dialertest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthgrpc "google.golang.org/grpc/health/grpc_health_v1"
)

func writeFile(t *testing.T, path string, data []byte, mtime time.Time) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	// An explicit mtime: coarse filesystem timestamps must not hide a change.
	if err := os.Chtimes(path, mtime, mtime); err != nil {
		t.Fatal(err)
	}
}

func TestMutualTLSRequiresClientCertificatesAndPicksUpRotatedOnes(t *testing.T) {
	dir := t.TempDir()
	ca := dialertest.NewCA(t)
	certFile, keyFile, caFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"), filepath.Join(dir, "ca.pem")
	cert, key := ca.Issue(t, 100, "127.0.0.1")
	start := time.Now().Add(-time.Minute)
	writeFile(t, certFile, cert, start)
	writeFile(t, keyFile, key, start)
	writeFile(t, caFile, ca.PEM, start)

	lt, err := NewListenerTLS(certFile, keyFile, caFile)
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer(grpc.Creds(credentials.NewTLS(lt.Config())))
	healthgrpc.RegisterHealthServer(s, health.NewServer())
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(lis)
	defer s.Stop()

	roots := ca.Pool
	clientCertPEM, clientKeyPEM := ca.Issue(t, 200, "127.0.0.1")
	clientCert, err := tls.X509KeyPair(clientCertPEM, clientKeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	check := func(cfg *tls.Config) error {
		conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
		if err != nil {
			return err
		}
		defer conn.Close()
		_, err = healthgrpc.NewHealthClient(conn).Check(ctx, &healthgrpc.HealthCheckRequest{})
		return err
	}
	if err := check(&tls.Config{RootCAs: roots, Certificates: []tls.Certificate{clientCert}}); err != nil {
		t.Fatalf("client with a certificate from the CA: %v", err)
	}
	if err := check(&tls.Config{RootCAs: roots}); err == nil {
		t.Fatal("client without a certificate was served; --client-ca must require one")
	}

	servedSerial := func() int64 {
		c, err := tls.Dial("tcp", lis.Addr().String(), &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{clientCert}, NextProtos: []string{"h2"}})
		if err != nil {
			t.Fatalf("TLS handshake: %v", err)
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].SerialNumber.Int64()
	}
	if got := servedSerial(); got != 100 {
		t.Fatalf("served certificate serial %d, want 100", got)
	}

	// Rotate: a new key pair lands on disk; new handshakes use it, with no
	// restart, within the one-second recheck.
	cert, key = ca.Issue(t, 101, "127.0.0.1")
	now := time.Now()
	writeFile(t, certFile, cert, now)
	writeFile(t, keyFile, key, now)
	deadline := time.Now().Add(5 * time.Second)
	for servedSerial() != 101 {
		if time.Now().After(deadline) {
			t.Fatal("rotated certificate not served within 5s")
		}
		time.Sleep(100 * time.Millisecond)
	}

	// A broken file keeps the last good certificate in force.
	writeFile(t, certFile, []byte("not a certificate"), now.Add(time.Minute))
	deadline = time.Now().Add(5 * time.Second)
	for lt.LastError() == nil {
		if time.Now().After(deadline) {
			t.Fatal("a broken certificate file was not noticed within 5s")
		}
		if got := servedSerial(); got != 101 {
			t.Fatalf("while the certificate file is broken the served serial is %d, want the last good 101", got)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got := servedSerial(); got != 101 {
		t.Errorf("after a broken rotation the served serial is %d, want the last good 101", got)
	}
}
