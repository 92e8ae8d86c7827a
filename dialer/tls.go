package dialer

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"sync"
	"time"
)

// sessionCacheSize bounds the TLS session cache: enough tickets for the
// upstream hosts one sidecar talks to, small enough not to matter in memory.
const sessionCacheSize = 1024

// NewTLSConfig returns a base client TLS config: system roots plus the PEM
// CAs in extraCAFile ("" = none), a client session cache (LRU, 1024
// entries) so that redials resume sessions instead of doing full
// handshakes, and MinVersion TLS 1.2.
func NewTLSConfig(extraCAFile string) (*tls.Config, error) {
	cfg := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		ClientSessionCache: tls.NewLRUClientSessionCache(sessionCacheSize),
	}
	if extraCAFile == "" {
		// nil RootCAs means the system roots, loaded once by crypto/x509.
		return cfg, nil
	}
	pem, err := os.ReadFile(extraCAFile)
	if err != nil {
		return nil, fmt.Errorf("dialer: reading CA file: %w", err)
	}
	roots, err := x509.SystemCertPool()
	if err != nil {
		// No system roots (some minimal images): trust only the given CAs
		// rather than refusing to start.
		roots = x509.NewCertPool()
	}
	if !roots.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("dialer: no PEM certificates in CA file %s", extraCAFile)
	}
	cfg.RootCAs = roots
	return cfg, nil
}

// defaultTLSConfig backs Dialers with no TLSConfig, shared so that they
// share one session cache.
var defaultTLSConfig = sync.OnceValue(func() *tls.Config {
	cfg, _ := NewTLSConfig("") // cannot fail without a CA file
	return cfg
})

// handshake runs the TLS client handshake over raw under its own timeout:
// the dial timeout has already been spent on getting here.
func (d *Dialer) handshake(ctx context.Context, raw net.Conn, t Target, timeout time.Duration) (*tls.Conn, error) {
	base := d.TLSConfig
	if base == nil {
		base = defaultTLSConfig()
	}
	cfg := base.Clone()
	cfg.ServerName = t.ServerName
	if cfg.ServerName == "" {
		// For an IP literal this makes crypto/tls verify the IP SAN and
		// send no SNI, as RFC 6066 asks.
		cfg.ServerName = trimBrackets(t.Host)
	}
	if t.NextProtos != nil {
		cfg.NextProtos = t.NextProtos
	}
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	tc := tls.Client(raw, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, ctxErr(ctx, err)
	}
	return tc, nil
}
