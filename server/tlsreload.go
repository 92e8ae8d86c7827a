package server

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"
)

// ListenerTLS serves the gRPC listener's certificate, and with a client CA
// requires and verifies client certificates (mTLS). Files are rechecked at
// most once a second as handshakes arrive and reloaded when they change, so
// a renewed certificate takes effect without a restart; a bad new file keeps
// the previous one in force.
type ListenerTLS struct {
	certFile, keyFile, caFile string

	mu        sync.Mutex // guards the following fields
	config    *tls.Config
	stamps    map[string]time.Time
	checkedAt time.Time
	lastErr   error
}

// NewListenerTLS loads the key pair, and the client CA when caFile is not
// empty.
func NewListenerTLS(certFile, keyFile, caFile string) (*ListenerTLS, error) {
	if certFile == "" || keyFile == "" {
		return nil, errors.New("--tls-cert and --tls-key go together")
	}
	l := &ListenerTLS{certFile: certFile, keyFile: keyFile, caFile: caFile}
	cfg, stamps, err := l.load()
	if err != nil {
		return nil, err
	}
	l.config, l.stamps, l.checkedAt = cfg, stamps, time.Now()
	return l, nil
}

// Config is the tls.Config to give the gRPC server credentials.
func (l *ListenerTLS) Config() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return l.current(), nil
		},
	}
}

// LastError is the error of the last failed reload, nil after a good one.
func (l *ListenerTLS) LastError() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lastErr
}

func (l *ListenerTLS) current() *tls.Config {
	l.mu.Lock()
	defer l.mu.Unlock()
	if time.Since(l.checkedAt) < time.Second {
		return l.config
	}
	l.checkedAt = time.Now()
	if !l.changedLocked() {
		return l.config
	}
	cfg, stamps, err := l.load()
	if err != nil {
		l.lastErr = err
		return l.config
	}
	l.config, l.stamps, l.lastErr = cfg, stamps, nil
	return l.config
}

func (l *ListenerTLS) changedLocked() bool {
	for file, stamp := range l.stamps {
		st, err := os.Stat(file)
		if err != nil || !st.ModTime().Equal(stamp) {
			return true
		}
	}
	return false
}

func (l *ListenerTLS) load() (*tls.Config, map[string]time.Time, error) {
	stamps := map[string]time.Time{}
	for _, f := range []string{l.certFile, l.keyFile, l.caFile} {
		if f == "" {
			continue
		}
		st, err := os.Stat(f)
		if err != nil {
			return nil, nil, err
		}
		stamps[f] = st.ModTime()
	}
	cert, err := tls.LoadX509KeyPair(l.certFile, l.keyFile)
	if err != nil {
		return nil, nil, fmt.Errorf("--tls-cert/--tls-key: %w", err)
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2"}}
	if l.caFile != "" {
		pem, err := os.ReadFile(l.caFile)
		if err != nil {
			return nil, nil, fmt.Errorf("--client-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, nil, fmt.Errorf("--client-ca %s: no PEM certificate found", l.caFile)
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, stamps, nil
}
