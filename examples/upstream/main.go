// Command upstream is a tiny keep-alive HTTP server for trying poold on one
// machine: it answers every request with a short text naming the method and
// path, and echoes request bodies back.
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"time"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "address to serve on")
	flag.Parse()
	srv := &http.Server{
		Addr:              *listen,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       5 * time.Minute,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			body, err := io.ReadAll(r.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			fmt.Fprintf(w, "hello from upstream: %s %s\n", r.Method, r.URL.Path)
			w.Write(body)
		}),
	}
	log.Printf("upstream listening on http://%s", *listen)
	log.Fatal(srv.ListenAndServe())
}
