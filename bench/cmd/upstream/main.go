// Command upstream is the HTTP/1.1 origin of the end-to-end benchmark: every
// target under test fetches its bodies from here.
//
// GET /bytes/N answers N bytes with a Content-Length, so keep-alive
// connections are reused and no chunked framing enters the measurement.
// After it listens it prints its address on one line of standard output,
// which is how the orchestrator learns the port it picked.
package main

import (
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
	"syscall"
	"time"
)

// maxBody bounds N so that a mistyped size cannot make the origin stream
// for minutes.
const maxBody = 64 << 20

// filler is written repeatedly; its size is the largest single write.
var filler = []byte(strings.Repeat("x", 64<<10))

func main() {
	addr := flag.String("listen", "127.0.0.1:0", "address to listen on (port 0 picks a free one)")
	flag.Parse()

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatalf("upstream: %v", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /bytes/{n}", serveBytes)
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       5 * time.Minute,
	}
	fmt.Println(ln.Addr().String())

	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
		<-sig
		_ = srv.Close()
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Fatalf("upstream: %v", err)
	}
}

// serveBytes answers /bytes/N with N bytes of filler.
func serveBytes(w http.ResponseWriter, r *http.Request) {
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
