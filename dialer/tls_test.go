package dialer

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestDialTLSRecordsServerNameAndALPN(t *testing.T) {
	pki := newTestPKI(t)
	up := newTLSUpstream(t, pki, "http/1.1")
	tests := []struct {
		name     string
		target   Target
		wantSNI  string // sent, seen by the server and recorded in Conn.TLS
		wantALPN string
	}{
		{
			name:     "host name",
			target:   Target{Host: "example.test", NextProtos: []string{"h2", "http/1.1"}},
			wantSNI:  "example.test",
			wantALPN: "http/1.1",
		},
		{
			name:     "IP literal verifies the IP and sends no SNI",
			target:   Target{Host: "127.0.0.1", NextProtos: []string{"http/1.1"}},
			wantSNI:  "",
			wantALPN: "http/1.1",
		},
		{
			name:     "ServerName overrides the host",
			target:   Target{Host: "127.0.0.1", ServerName: "example.test"},
			wantSNI:  "example.test",
			wantALPN: "",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := &Dialer{
				Resolver:  &fakeResolver{hosts: map[string][]netip.Addr{"example.test": addrs("127.0.0.1")}},
				TLSConfig: pki.clientConfig(),
			}
			tt.target.Port, tt.target.TLS = up.port, true

			c, err := d.Dial(testContext(t), tt.target, Options{DialTimeout: time.Second, TLSHandshakeTimeout: 5 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()

			roundTrip(t, c, "over TLS")
			if _, ok := c.Conn.(*tls.Conn); !ok || c.TLS == nil || c.TCP == nil {
				t.Fatalf("Conn = %T, TLS = %v, TCP = %v; want a *tls.Conn with its state and socket", c.Conn, c.TLS, c.TCP)
			}
			if !c.TLS.HandshakeComplete || c.TLS.ServerName != tt.wantSNI || c.TLS.NegotiatedProtocol != tt.wantALPN {
				t.Errorf("TLS state: complete %v, ServerName %q, ALPN %q; want %q, %q",
					c.TLS.HandshakeComplete, c.TLS.ServerName, c.TLS.NegotiatedProtocol, tt.wantSNI, tt.wantALPN)
			}
			if sni := <-up.sni; sni != tt.wantSNI {
				t.Errorf("server saw SNI %q, want %q", sni, tt.wantSNI)
			}
			if c.TLSHandshake <= 0 {
				t.Errorf("TLSHandshake = %v, want it measured", c.TLSHandshake)
			}
			if d.TLSConfig.ServerName != "" || d.TLSConfig.NextProtos != nil {
				t.Errorf("the base config was modified: %q %v", d.TLSConfig.ServerName, d.TLSConfig.NextProtos)
			}
		})
	}
}

func TestTLSHandshakeAgainstASilentListenerTimesOut(t *testing.T) {
	// The kernel completes the TCP handshake; nobody ever answers the
	// ClientHello.
	ln := listen(t, "tcp4", "127.0.0.1:0")
	d := &Dialer{}

	start := time.Now()
	_, err := d.Dial(testContext(t), Target{Host: "127.0.0.1", Port: portOf(ln.Addr()), TLS: true},
		Options{DialTimeout: time.Second, TLSHandshakeTimeout: 100 * time.Millisecond})

	de := dialError(t, err, StepTLS)
	if !de.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("err = %v: Timeout() = %v, want a deadline error", err, de.Timeout())
	}
	if elapsed := time.Since(start); elapsed > 5*time.Second {
		t.Errorf("the handshake timeout took %v", elapsed)
	}
}

func TestTLSWithAnUntrustedCertificateFailsAtTLS(t *testing.T) {
	pki := newTestPKI(t)
	up := newTLSUpstream(t, pki)
	d := &Dialer{} // system roots do not know the test CA

	_, err := d.Dial(testContext(t), Target{Host: "127.0.0.1", Port: up.port, TLS: true}, Options{TLSHandshakeTimeout: 5 * time.Second})

	de := dialError(t, err, StepTLS)
	var unknown x509.UnknownAuthorityError
	if !errors.As(err, &unknown) || de.Timeout() {
		t.Errorf("err = %v, want an x509.UnknownAuthorityError that is no timeout", err)
	}
}

func TestNewTLSConfigTrustsTheExtraCAFile(t *testing.T) {
	pki := newTestPKI(t)
	up := newTLSUpstream(t, pki)
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, pki.caPEM, 0o600); err != nil {
		t.Fatal(err)
	}

	cfg, err := NewTLSConfig(caFile)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MinVersion != tls.VersionTLS12 || cfg.ClientSessionCache == nil {
		t.Errorf("MinVersion = %x, ClientSessionCache = %v", cfg.MinVersion, cfg.ClientSessionCache)
	}
	d := &Dialer{TLSConfig: cfg}
	c, err := d.Dial(testContext(t), Target{Host: "127.0.0.1", Port: up.port, TLS: true}, Options{TLSHandshakeTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}

func TestNewTLSConfigRejectsAMissingOrEmptyCAFile(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty.pem")
	if err := os.WriteFile(empty, []byte("no certificates here\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{filepath.Join(dir, "missing.pem"), empty} {
		if _, err := NewTLSConfig(path); err == nil {
			t.Errorf("NewTLSConfig(%q) succeeded", path)
		}
	}
}

func TestTLSHandshakeHonoursTheCallersCancellation(t *testing.T) {
	ln := listen(t, "tcp4", "127.0.0.1:0")
	ctx, cancel := context.WithCancel(testContext(t))
	// Cancel once the handshake is underway: the ClientHello is queued at
	// the silent listener, so accept it and cancel when it arrives.
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.Read(make([]byte, 1))
		cancel()
	}()
	_, err := (&Dialer{}).Dial(ctx, Target{Host: "127.0.0.1", Port: portOf(ln.Addr()), TLS: true}, Options{})
	<-done

	de := dialError(t, err, StepTLS)
	if de.Timeout() || !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v, want a cancellation that is no timeout", err)
	}
}
