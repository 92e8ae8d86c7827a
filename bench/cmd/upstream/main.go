// Command upstream is the origin of the end-to-end benchmark: every target
// under test fetches its bodies from here.
//
// GET /bytes/N answers N bytes with a Content-Length, so keep-alive
// connections are reused and no chunked framing enters the measurement.
// GET /stats answers how many /bytes requests came over HTTP/2 and over
// older versions, as JSON, so that the benchmark can prove which protocol
// carried a measurement.
//
// By default it serves plain HTTP/1.1. With --tls-ca-file it serves HTTPS,
// HTTP/2 and HTTP/1.1 offered by ALPN, with a certificate for 127.0.0.1
// made at start, and writes the CA that signed it to that file.
//
// After it listens it prints its address on one line of standard output,
// which is how the orchestrator learns the port it picked; the CA file is
// written by then.
package main

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// maxBody bounds N so that a mistyped size cannot make the origin stream
// for minutes.
const maxBody = 64 << 20

// filler is written repeatedly; its size is the largest single write.
var filler = []byte(strings.Repeat("x", 64<<10))

// Requests to /bytes, by the major version of HTTP they came over.
var servedHTTP2, servedOlder atomic.Uint64

// stats is what GET /stats answers.
type stats struct {
	HTTP2 uint64 `json:"http2"`
	Older uint64 `json:"older"`
}

func main() {
	addr := flag.String("listen", "127.0.0.1:0", "address to listen on (port 0 picks a free one)")
	caFile := flag.String("tls-ca-file", "", "serve HTTPS (h2 and http/1.1 by ALPN) with a certificate made at start, and write the PEM CA that signed it to this file")
	flag.Parse()

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatalf("upstream: %v", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /bytes/{n}", serveBytes)
	mux.HandleFunc("GET /stats", serveStats)
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       5 * time.Minute,
	}
	if *caFile != "" {
		cert, caPEM, err := newCertificate("127.0.0.1")
		if err != nil {
			log.Fatalf("upstream: %v", err)
		}
		if err := os.WriteFile(*caFile, caPEM, 0o644); err != nil {
			log.Fatalf("upstream: %v", err)
		}
		// ServeTLS adds h2 and http/1.1 to NextProtos.
		srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	fmt.Println(ln.Addr().String())

	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
		<-sig
		_ = srv.Close()
	}()
	if srv.TLSConfig != nil {
		err = srv.ServeTLS(ln, "", "")
	} else {
		err = srv.Serve(ln)
	}
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Fatalf("upstream: %v", err)
	}
}

// serveBytes answers /bytes/N with N bytes of filler.
func serveBytes(w http.ResponseWriter, r *http.Request) {
	if r.ProtoMajor == 2 {
		servedHTTP2.Add(1)
	} else {
		servedOlder.Add(1)
	}
	n, err := strconv.Atoi(r.PathValue("n"))
	if err != nil || n < 0 || n > maxBody {
		http.Error(w, "size must be 0.."+strconv.Itoa(maxBody), http.StatusBadRequest)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Content-Length", strconv.Itoa(n))
	for n > 0 {
		chunk := min(n, len(filler))
		if _, err := w.Write(filler[:chunk]); err != nil {
			return
		}
		n -= chunk
	}
}

// serveStats answers the request counts by protocol.
func serveStats(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(stats{HTTP2: servedHTTP2.Load(), Older: servedOlder.Load()})
}
