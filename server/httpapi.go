package server

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"

	"connectrpc.com/vanguard"
	"connectrpc.com/vanguard/vanguardgrpc"

	pooldv1 "github.com/poold/poold/gen/poold/v1"
)

// httpAPIMethods are the methods the HTTP/JSON API serves: Do for callers
// that have no gRPC stack, and the calls that read pools and policies.
// Changing policy or dropping connections stays on gRPC, where an operator
// works with grpcurl or poolctl.
var httpAPIMethods = func() map[string]bool {
	m := map[string]bool{}
	add := func(service string, methods ...string) {
		for _, name := range methods {
			m["/"+service+"/"+name] = true
		}
	}
	add(pooldv1.HTTPService_ServiceDesc.ServiceName, "Do")
	add(pooldv1.PoolService_ServiceDesc.ServiceName, "ListHosts", "GetHost", "ListConnections")
	add(pooldv1.PolicyService_ServiceDesc.ServiceName, "GetPolicy", "ListPolicies", "GetEffectivePolicy")
	return m
}()

// HTTPAPI serves the HTTP/JSON API: each method in httpAPIMethods as a
// Connect unary call (POST /poold.v1.HTTPService/Do with a JSON body in
// protojson names, bytes fields as base64), and the same over gRPC-Web.
// vanguard transcodes each call into a gRPC call on s.GRPC itself, so the
// interceptors, tokens, limits, metrics and error mapping are the ones gRPC
// callers get; a gRPC status becomes the HTTP status Connect assigns it
// (INVALID_ARGUMENT 400, UNAUTHENTICATED 401, PERMISSION_DENIED 403,
// RESOURCE_EXHAUSTED 429, UNAVAILABLE 503) with the status details, the
// ErrorInfo included, in the JSON body.
func (s *Server) HTTPAPI() (http.Handler, error) {
	transcoder, err := vanguardgrpc.NewTranscoder(s.GRPC,
		vanguard.WithDefaultServiceOptions(vanguard.WithMaxMessageBufferBytes(64<<20)))
	if err != nil {
		return nil, fmt.Errorf("server: HTTP/JSON API: %w", err)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !httpAPIMethods[r.URL.Path] {
			// The error body Connect itself writes.
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusNotFound)
			_ = json.NewEncoder(w).Encode(map[string]string{
				"code":    "unimplemented",
				"message": r.URL.Path + " is not served over HTTP/JSON; use gRPC",
			})
			return
		}
		// A plain JSON POST is a Connect unary call; vanguard would take it
		// for a REST call (for which the API has no HTTP annotations)
		// unless it carries the header Connect clients send.
		if r.Header.Get("Connect-Protocol-Version") == "" && strings.HasPrefix(r.Header.Get("Content-Type"), "application/json") {
			r.Header.Set("Connect-Protocol-Version", "1")
		}
		transcoder.ServeHTTP(w, r)
	}), nil
}
