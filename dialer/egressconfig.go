package dialer

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// CheckEgressEntry says what is wrong with one Allow or Deny entry, or nil
// if it is a CIDR, an IP, a host name or a *.suffix pattern. The error is
// the reason alone, for a caller that names the entry its own way.
func CheckEgressEntry(e string) error {
	_, _, err := parseEgressEntry(e)
	return err
}

// parseEgressEntry reads one Allow or Deny entry as a prefix or, failing
// that, a host pattern.
func parseEgressEntry(e string) (netip.Prefix, *hostPattern, error) {
	if e == "" {
		return netip.Prefix{}, nil, fmt.Errorf("empty entry")
	}
	if strings.Contains(e, "/") {
		p, err := netip.ParsePrefix(e)
		if err != nil {
			return netip.Prefix{}, nil, fmt.Errorf("not a CIDR: %v", err)
		}
		if p != p.Masked() {
			return netip.Prefix{}, nil, fmt.Errorf("CIDR has bits set past /%d (did you mean %s?)", p.Bits(), p.Masked())
		}
		return normalizePrefix(p)
	}
	if ip, err := netip.ParseAddr(e); err == nil {
		if ip.Zone() != "" {
			return netip.Prefix{}, nil, fmt.Errorf("an IP zone cannot be matched")
		}
		ip = ip.Unmap()
		return netip.PrefixFrom(ip, ip.BitLen()), nil, nil
	}
	h, err := parseHostPattern(e)
	if err != nil {
		return netip.Prefix{}, nil, err
	}
	return netip.Prefix{}, h, nil
}

// normalizePrefix turns an IPv4-mapped prefix into the IPv4 prefix it
// means, since addresses are unmapped before they are matched. A masked
// prefix can only be IPv4-mapped at /96 or longer.
func normalizePrefix(p netip.Prefix) (netip.Prefix, *hostPattern, error) {
	if p.Addr().Is4In6() {
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	return p, nil, nil
}

// parseHostPattern accepts "name.example" and "*.name.example".
func parseHostPattern(e string) (*hostPattern, error) {
	name := strings.TrimSuffix(strings.ToLower(e), ".")
	h := &hostPattern{text: e}
	if rest, ok := strings.CutPrefix(name, "*."); ok {
		name, h.suffix = rest, true
	}
	if err := checkHostName(name); err != nil {
		return nil, err
	}
	h.name = name
	if h.suffix {
		h.name = "." + name
	}
	return h, nil
}

// checkHostName rejects what cannot be a DNS name, so a typo such as a port
// or a mistyped IP fails at load time instead of silently never matching.
func checkHostName(name string) error {
	const bad = "not an IP, a CIDR or a host pattern (name.example or *.name.example)"
	if name == "" || len(name) > 253 {
		return fmt.Errorf("%s", bad)
	}
	labels := strings.Split(name, ".")
	for _, l := range labels {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return fmt.Errorf("%s", bad)
		}
		for _, ch := range l {
			if !(ch >= 'a' && ch <= 'z' || ch >= '0' && ch <= '9' || ch == '-' || ch == '_') {
				return fmt.Errorf("%s", bad)
			}
		}
	}
	if strings.Trim(labels[len(labels)-1], "0123456789") == "" {
		return fmt.Errorf("%s; an all-numeric last label looks like a mistyped IP", bad)
	}
	return nil
}

// localAddrs lists this host's interface addresses. It is read once: an
// address added later is still covered by the loopback and unspecified
// matches, and by the built-in denies, unless an operator allowed it.
func localAddrs() map[netip.Addr]bool {
	out := map[netip.Addr]bool{}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return out
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok {
				out[normalize(ip)] = true
			}
		}
	}
	return out
}
