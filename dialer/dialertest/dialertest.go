// Package dialertest provides loopback fixtures for testing code that
// dials: a listener whose connects never complete, and a certificate
// authority made fresh for a test.
//
//	ln := dialertest.Blackhole(t, "tcp4", "127.0.0.1:0")
//	_, err := dialer.Dial(ctx, target(ln.Addr()), opts) // times out
//
//	ca := dialertest.NewCA(t)
//	srv.TLS = &tls.Config{Certificates: []tls.Certificate{ca.Certificate(t, 2, "127.0.0.1")}}
//	client.TLS = &tls.Config{RootCAs: ca.Pool}
package dialertest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"syscall"
	"testing"
	"time"
)

// Blackhole returns a loopback listener whose accept queue is full, so a
// connect to it gets no answer at all and runs into the dialer's timeout:
// Linux drops a SYN for a listener whose queue is full. The queue is shrunk
// to one slot by listening again with backlog 0, then filled by connecting
// until a connect stalls. network is "tcp4" or "tcp6", addr e.g.
// "127.0.0.1:0". The test is skipped where the kernel does not allow it.
func Blackhole(t testing.TB, network, addr string) *net.TCPListener {
	t.Helper()
	l, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	ln := l.(*net.TCPListener)
	t.Cleanup(func() { ln.Close() })
	rc, err := ln.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var lerr error
	if err := rc.Control(func(fd uintptr) { lerr = syscall.Listen(int(fd), 0) }); err != nil || lerr != nil {
		t.Skipf("cannot shrink the listen backlog: %v %v", err, lerr)
	}
	for range 8 {
		c, err := net.DialTimeout(network, ln.Addr().String(), 200*time.Millisecond)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return ln
		}
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
	}
	t.Skip("could not fill the listen backlog")
	return nil
}

// CA is a certificate authority made for one test, valid for an hour
// either side of now.
type CA struct {
	// Cert is the CA's own certificate.
	Cert *x509.Certificate
	// Pool trusts Cert alone: use it as RootCAs or ClientCAs.
	Pool *x509.CertPool
	// PEM is Cert, PEM-encoded, as a CA file holds it.
	PEM []byte

	key *ecdsa.PrivateKey
}

// NewCA makes a fresh CA.
func NewCA(t testing.TB) *CA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "poold test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &CA{
		Cert: cert,
		Pool: pool,
		PEM:  pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		key:  key,
	}
}

// Issue returns a PEM certificate and key signed by the CA, for the given
// host names and IP addresses, usable by a server or a client. serial
// tells certificates apart, e.g. before and after a rotation.
func (ca *CA) Issue(t testing.TB, serial int64, hosts ...string) (certPEM, keyPEM []byte) {
	t.Helper()
	der, key := ca.issue(t, serial, hosts)
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
}

// Certificate is Issue as a tls.Certificate, ready for a tls.Config.
func (ca *CA) Certificate(t testing.TB, serial int64, hosts ...string) tls.Certificate {
	t.Helper()
	der, key := ca.issue(t, serial, hosts)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func (ca *CA) issue(t testing.TB, serial int64, hosts []string) ([]byte, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	if len(hosts) > 0 {
		tmpl.Subject = pkix.Name{CommonName: hosts[0]}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return der, key
}
