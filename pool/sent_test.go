package pool

import (
	"context"
	"errors"
	"net"
	"net/http"
	"testing"
)

// Error.Sent is what lets a caller retry safely: false only when nothing of
// the request can have reached the upstream.
func TestErrorSaysWhetherTheRequestWasSent(t *testing.T) {
	refused := func(t *testing.T) string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		return "http://" + addr
	}
	serving := func(h handler) func(t *testing.T) string {
		return func(t *testing.T) string { return newUpstream(t, h).URL }
	}
	for _, tc := range []struct {
		name  string
		url   func(t *testing.T) string
		phase Phase
		sent  bool
	}{
		{"connection refused", refused, PhaseDial, false},
		{"read, then closed", serving(func(*serverConn, *http.Request) bool { return false }), PhaseResponseHeader, true},
		{"garbage for a response", serving(func(s *serverConn, _ *http.Request) bool {
			s.write("SSH-2.0-OpenSSH_9.6\r\n\r\n")
			return false
		}), PhaseResponseHeader, true},
		{"closed mid-body", serving(func(s *serverConn, _ *http.Request) bool {
			s.write("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
			return false
		}), PhaseBody, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newTestEngine(t, Options{})
			_, err := do(e, newRequest(t, context.Background(), http.MethodPost, tc.url(t)+"/pay", "once"))
			var pe *Error
			if !errors.As(err, &pe) {
				t.Fatalf("got %v, want a *pool.Error", err)
			}
			if pe.Phase != tc.phase || pe.Sent != tc.sent {
				t.Errorf("got phase %s, Sent %v (%v); want %s, %v", pe.Phase, pe.Sent, err, tc.phase, tc.sent)
			}
		})
	}
}
