// Command hop-nethttp is the smallest gRPC-to-HTTP hop that can be built on
// grpc-go and net/http: HTTPService.Do and nothing else, on one shared
// http.Transport. It is the baseline that tells what poold costs beyond the
// libraries it is made of.
//
// With --ca-file it trusts that CA for https upstreams and attempts
// HTTP/2 there, as net/http does for a Transport without a custom TLS
// config; without it the Transport is the HTTP/1.1 one it always was.
//
// After it listens it prints its address on one line of standard output.
package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pooldv1 "github.com/poold/poold/gen/poold/v1"
)

// hop implements HTTPService.Do on one shared transport.
type hop struct {
	pooldv1.UnimplementedHTTPServiceServer
	transport *http.Transport
}

// Do sends the request upstream and answers with the whole response.
func (h *hop) Do(ctx context.Context, in *pooldv1.DoRequest) (*pooldv1.DoResponse, error) {
	method := in.GetMethod()
	if method == "" {
		method = http.MethodGet
	}
	var body io.Reader
	if len(in.GetBody()) > 0 {
		body = bytes.NewReader(in.GetBody())
	}
	req, err := http.NewRequestWithContext(ctx, method, in.GetUrl(), body)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	for _, hd := range in.GetHeaders() {
		req.Header.Add(hd.GetName(), hd.GetValue())
	}
	// RoundTrip, not a Client: a hop forwards redirects rather than following them.
	resp, err := h.transport.RoundTrip(req)
	if err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	defer resp.Body.Close()
	respBody, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	out := &pooldv1.DoResponse{
		StatusCode: int32(resp.StatusCode),
		Protocol:   resp.Proto,
		Body:       respBody,
		Url:        in.GetUrl(),
	}
	for name, values := range resp.Header {
		for _, v := range values {
			out.Headers = append(out.Headers, &pooldv1.Header{Name: name, Value: v})
		}
	}
	return out, nil
}

func main() {
	addr := flag.String("listen", "127.0.0.1:0", "gRPC address to listen on (port 0 picks a free one)")
	caFile := flag.String("ca-file", "", "PEM CA to trust for https upstreams, which then get HTTP/2 by ALPN")
	flag.Parse()

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatalf("hop-nethttp: %v", err)
	}
	h := &hop{transport: &http.Transport{
		// Enough idle connections that the closed-loop callers never force
		// a fresh dial per request.
		MaxIdleConns:        256,
		MaxIdleConnsPerHost: 256,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}}
	if *caFile != "" {
		pem, err := os.ReadFile(*caFile)
		if err != nil {
			log.Fatalf("hop-nethttp: %v", err)
		}
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			log.Fatalf("hop-nethttp: no PEM certificate in %s", *caFile)
		}
		h.transport.TLSClientConfig = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
		// A TLS config of one's own turns net/http's HTTP/2 off unless
		// asked for.
		h.transport.ForceAttemptHTTP2 = true
	}
	srv := grpc.NewServer()
	pooldv1.RegisterHTTPServiceServer(srv, h)
	fmt.Println(ln.Addr().String())

	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
		<-sig
		srv.Stop()
	}()
	if err := srv.Serve(ln); err != nil {
		log.Fatalf("hop-nethttp: %v", err)
	}
}
