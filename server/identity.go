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

// tokenName is the name of the token the call came with; "" for none or
// an unnamed one. Its identity is "token:" + the name.
func tokenName(ctx context.Context) string {
	name, _ := ctx.Value(tokenNameKey{}).(string)
	return name
}

// certIdentities are the identities of the call's verified client
// certificate, "cert:" + its subject common name and each DNS, URI and
// e-mail SAN; nil without one.
func certIdentities(ctx context.Context) []string {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.VerifiedChains) == 0 || len(info.State.VerifiedChains[0]) == 0 {
		return nil
	}
	cert := info.State.VerifiedChains[0][0]
	var ids []string
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
