package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"time"
)

// tlsUpstream is the upstream that serves HTTPS, HTTP/2 preferred by ALPN,
// with a certificate it made at start.
type tlsUpstream struct {
	base   string       // https://127.0.0.1:port
	caFile string       // the PEM CA its certificate chains to
	client *http.Client // trusts caFile, for its counters
}

// pooldArgs are the flags a poold in front of u needs: trust in its CA.
func (u *tlsUpstream) pooldArgs() []string {
	return []string{"--upstream-ca-file=" + u.caFile}
}

// protoCounts is how many /bytes requests an upstream has answered, by the
// major version of HTTP they came over.
type protoCounts struct {
	HTTP2 uint64 `json:"http2"`
	Older uint64 `json:"older"`
}

// startTLSUpstream starts the upstream with --tls-ca-file; it writes the CA
// before it announces its address.
func startTLSUpstream(ctx context.Context, cs *children, cfg *config) (*tlsUpstream, error) {
	caFile := filepath.Join(cs.dir, "upstream-h2-ca.pem")
	_, addr, err := cs.startAnnounced(ctx, "upstream-h2", cfg.upstreamBin, "--listen=127.0.0.1:0", "--tls-ca-file="+caFile)
	if err != nil {
		return nil, err
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("no PEM certificate in %s", caFile)
	}
	u := &tlsUpstream{
		base:   "https://" + addr,
		caFile: caFile,
		client: &http.Client{
			Timeout:   5 * time.Second,
			Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}},
		},
	}
	// One round trip proves the certificate is trusted before any target
	// is pointed at it.
	if _, err := u.counts(); err != nil {
		return nil, err
	}
	return u, nil
}

// counts reads the upstream's request counts by protocol.
func (u *tlsUpstream) counts() (protoCounts, error) {
	resp, err := u.client.Get(u.base + "/stats")
	if err != nil {
		return protoCounts{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return protoCounts{}, fmt.Errorf("GET /stats: %s", resp.Status)
	}
	var c protoCounts
	if err := json.NewDecoder(resp.Body).Decode(&c); err != nil {
		return protoCounts{}, fmt.Errorf("GET /stats: %w", err)
	}
	return c, nil
}
