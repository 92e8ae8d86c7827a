package dialer

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strconv"
)

// Resolver is what the Dialer resolves names with; *net.Resolver satisfies
// it. Tests plug in their own.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

var _ Resolver = (*net.Resolver)(nil)

// errNoAddresses is returned when a resolver answers with an empty list, which
// some resolvers do instead of an error.
var errNoAddresses = errors.New("no addresses")

func (d *Dialer) resolver() Resolver {
	if d.Resolver != nil {
		return d.Resolver
	}
	return net.DefaultResolver
}

// lookup returns the addresses of host. An IP literal is its own answer, so
// dialing an IP never waits on DNS and never depends on it.
func (d *Dialer) lookup(ctx context.Context, host string) ([]netip.Addr, error) {
	if ip, ok := parseIPLiteral(host); ok {
		return []netip.Addr{ip}, nil
	}
	addrs, err := d.resolver().LookupNetIP(ctx, "ip", host)
	if err != nil {
		return nil, ctxErr(ctx, err)
	}
	if len(addrs) == 0 {
		return nil, errNoAddresses
	}
	out := make([]netip.Addr, 0, len(addrs))
	for _, a := range addrs {
		// net.Resolver hands back IPv4 answers in IPv4-mapped form; unmapped
		// they dial as IPv4, compare equal to literals and match IPv4 rules.
		if a.IsValid() {
			out = append(out, a.Unmap())
		}
	}
	if len(out) == 0 {
		return nil, errNoAddresses
	}
	return out, nil
}

// parseIPLiteral reports whether host is an IP address, tolerating the
// brackets of URL notation.
func parseIPLiteral(host string) (netip.Addr, bool) {
	ip, err := netip.ParseAddr(trimBrackets(host))
	if err != nil {
		return netip.Addr{}, false
	}
	return ip.Unmap(), true
}

// parsePort accepts a number or a service name ("https").
func parsePort(ctx context.Context, port string) (uint16, error) {
	if n, err := strconv.ParseUint(port, 10, 16); err == nil {
		return uint16(n), nil
	}
	n, err := net.DefaultResolver.LookupPort(ctx, "tcp", port)
	if err != nil {
		return 0, err
	}
	return uint16(n), nil
}

// interleave orders addrs for happy eyeballs (RFC 8305 section 4): the
// resolver's order within each family is kept, the family of the first
// answer goes first, and the families alternate so that one broken family
// costs at most one attempt delay before the other is tried.
func interleave(addrs []netip.Addr) []netip.Addr {
	if len(addrs) < 2 {
		return addrs
	}
	first := addrs[0].Is4()
	var primary, secondary []netip.Addr
	for _, a := range addrs {
		if a.Is4() == first {
			primary = append(primary, a)
		} else {
			secondary = append(secondary, a)
		}
	}
	out := make([]netip.Addr, 0, len(addrs))
	for i := 0; i < len(primary) || i < len(secondary); i++ {
		if i < len(primary) {
			out = append(out, primary[i])
		}
		if i < len(secondary) {
			out = append(out, secondary[i])
		}
	}
	return out
}

// hostPort joins host and port the way error messages and CONNECT expect.
func hostPort(host, port string) string {
	return net.JoinHostPort(trimBrackets(host), port)
}

// trimBrackets drops the brackets of an IPv6 literal written URL style.
func trimBrackets(host string) string {
	if len(host) > 1 && host[0] == '[' && host[len(host)-1] == ']' {
		return host[1 : len(host)-1]
	}
	return host
}
