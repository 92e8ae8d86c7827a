package main

import (
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
)

// debugHandler serves net/http/pprof, so that an operator can profile a
// poold under real load (go tool pprof http://ADDR/debug/pprof/profile).
// It gets a mux of its own: pprof's init registers on
// http.DefaultServeMux, which poold never serves.
func debugHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("POST /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	return mux
}

// checkDebugListen refuses a debug address reachable from other hosts
// unless public is set: profiles and goroutine dumps show request URLs,
// headers and memory contents, and the CPU profile costs the daemon CPU
// for as long as a caller asks.
func checkDebugListen(addr string, public bool) error {
	if addr == "" || public {
		return nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if host == "localhost" {
		return nil
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || !ip.IsLoopback() {
		return fmt.Errorf("%q is not a loopback address; profiles expose request data, so add --debug-listen-public to serve them beyond this host", addr)
	}
	return nil
}
