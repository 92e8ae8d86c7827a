package server

import (
	"context"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// tokenNameKey is the context key of the caller's token name.
type tokenNameKey struct{}

// withTokenName records the name of the token a call came with.
func withTokenName(ctx context.Context, name string) context.Context {
	return context.WithValue(ctx, tokenNameKey{}, name)
}

// callerIdentities are the identities a call can be bound by, in the order
// they are tried: "token:NAME" for a named bearer token, then "cert:ID" for
// the verified client certificate's subject common name and its DNS, URI
// and e-mail SANs.
func callerIdentities(ctx context.Context) []string {
	var ids []string
	if name, ok := ctx.Value(tokenNameKey{}).(string); ok && name != "" {
		ids = append(ids, "token:"+name)
	}
	p, ok := peer.FromContext(ctx)
	if !ok {
		return ids
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.VerifiedChains) == 0 || len(info.State.VerifiedChains[0]) == 0 {
		return ids
	}
	cert := info.State.VerifiedChains[0][0]
	if cn := cert.Subject.CommonName; cn != "" {
		ids = append(ids, "cert:"+cn)
	}
	for _, n := range cert.DNSNames {
		ids = append(ids, "cert:"+n)
	}
	for _, u := range cert.URIs {
		ids = append(ids, "cert:"+u.String())
	}
	for _, e := range cert.EmailAddresses {
		ids = append(ids, "cert:"+e)
	}
	return ids
}
