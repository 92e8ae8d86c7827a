package dialer

import (
	"fmt"
	"net/netip"
	"strings"
)

// EgressConfig is an operator's egress policy, as written in configuration.
type EgressConfig struct {
	// Allow and Deny hold CIDRs ("10.0.0.0/8", "fd00::/8"), single IPs
	// ("10.1.2.3"), exact host names ("api.example.com") or suffix patterns
	// ("*.internal.example", which matches names under internal.example but
	// not internal.example itself). Host names are matched against the name
	// the caller dialed, IPs and CIDRs against every resolved address.
	Allow, Deny []string
	// DefaultDeny turns the policy into an allow-list: an address no rule
	// allows is denied.
	DefaultDeny bool
	// AllowedPorts, when not empty, is the only ports poold may dial.
	AllowedPorts []uint16
	// SelfAddrs are poold's own listening addresses, denied so that poold
	// can never be pointed at itself. An unspecified address (":7070")
	// stands for every local address on that port.
	SelfAddrs []netip.AddrPort
}

// EgressRules is an EgressChecker built from an EgressConfig. It is
// immutable once built, so one value serves concurrent dials.
//
// A dial to host at addr:port is decided in this order; the first step that
// decides wins:
//
//  1. A port outside a non-empty AllowedPorts is denied.
//  2. An address that is one of SelfAddrs is denied. Nothing overrides this:
//     poold calling itself is a loop, never an upstream.
//  3. A host matching a Deny host pattern is denied.
//  4. The address is normalized (IPv4-mapped becomes IPv4, zones dropped),
//     and when it embeds an IPv4 address (NAT64 64:ff9b::/96 and, as a /96,
//     64:ff9b:1::/48, SIIT ::ffff:0:0:0/96, 6to4 2002::/16, Teredo
//     2001::/32, IPv4-compatible ::/96) that address is
//     decided too; the dial is denied if either is. Each is decided by the
//     most specific prefix that contains it among the explicit Deny rules,
//     the explicit Allow rules and the built-in deny list; on a tie an
//     explicit deny beats an explicit allow, which beats a built-in deny.
//     So Allow "127.0.0.1/32" opens one loopback address, Deny
//     "10.1.0.0/16" closes a hole in Allow "10.0.0.0/8", and Allow
//     "0.0.0.0/0" opens the internet but not loopback or link-local.
//  5. An address no prefix matched is allowed, unless DefaultDeny is set;
//     then only a host matching an Allow host pattern lets it through.
//
// The built-in deny list is loopback (127.0.0.0/8, ::1), link-local
// (169.254.0.0/16, fe80::/10), every cloud metadata and platform address in
// addrClasses (169.254.169.254, fd00:ec2::/32, 100.100.100.200,
// 168.63.129.16 and more), the NAT64 local-use prefix 64:ff9b:1::/48,
// unspecified (0.0.0.0/8, ::), multicast (224.0.0.0/4, ff00::/8) and
// broadcast (255.255.255.255/32). It applies with DefaultDeny too, where it
// only matters against an allow rule wider than it.
//
// Host patterns match the name the caller asked for, which DNS does not
// vouch for, so an allowed name never overrides a denied address: it only
// lifts DefaultDeny.
type EgressRules struct {
	prefixes    []prefixRule
	denyHosts   []hostPattern
	allowHosts  []hostPattern
	defaultDeny bool
	ports       map[uint16]bool // nil = any port
	self        []netip.AddrPort
	local       map[netip.Addr]bool // this host's addresses, for unspecified SelfAddrs
}

var _ EgressChecker = (*EgressRules)(nil)

// ruleKind ranks prefix rules of equal length: lower wins.
type ruleKind int

const (
	ruleDeny ruleKind = iota
	ruleAllow
	ruleBuiltin
)

type prefixRule struct {
	prefix netip.Prefix
	kind   ruleKind
	text   string // the entry as written, or the built-in class name
}

// hostPattern is an exact name, or with suffix set, the ".example.com" a
// "*.example.com" pattern matches under.
type hostPattern struct {
	name   string
	suffix bool
	text   string
}

// NewEgressRules checks cfg and builds its rules. An error names the entry
// that is wrong and why.
func NewEgressRules(cfg EgressConfig) (*EgressRules, error) {
	r := &EgressRules{defaultDeny: cfg.DefaultDeny}
	for _, c := range addrClasses {
		if c.deny {
			r.prefixes = append(r.prefixes, prefixRule{prefix: c.prefix, kind: ruleBuiltin, text: c.class})
		}
	}
	lists := []struct {
		field   string
		entries []string
		kind    ruleKind
		hosts   *[]hostPattern
	}{
		{"deny", cfg.Deny, ruleDeny, &r.denyHosts},
		{"allow", cfg.Allow, ruleAllow, &r.allowHosts},
	}
	for _, l := range lists {
		for i, e := range l.entries {
			p, h, err := parseEgressEntry(e)
			if err != nil {
				return nil, fmt.Errorf("dialer: egress %s[%d] %q: %v", l.field, i, e, err)
			}
			if h != nil {
				*l.hosts = append(*l.hosts, *h)
			} else {
				r.prefixes = append(r.prefixes, prefixRule{prefix: p, kind: l.kind, text: e})
			}
		}
	}
	if len(cfg.AllowedPorts) > 0 {
		r.ports = make(map[uint16]bool, len(cfg.AllowedPorts))
		for i, p := range cfg.AllowedPorts {
			if p == 0 {
				return nil, fmt.Errorf("dialer: egress allowed_ports[%d]: port 0 is not a port", i)
			}
			r.ports[p] = true
		}
	}
	for i, s := range cfg.SelfAddrs {
		if !s.IsValid() || s.Port() == 0 {
			return nil, fmt.Errorf("dialer: egress self_addrs[%d] %q: need an IP and a non-zero port", i, s)
		}
		s = netip.AddrPortFrom(normalize(s.Addr()), s.Port())
		r.self = append(r.self, s)
		if s.Addr().IsUnspecified() && r.local == nil {
			r.local = localAddrs()
		}
	}
	return r, nil
}

// CheckEgress decides host at addr by the order in the EgressRules doc
// comment. A denial wraps ErrEgressDenied and names the address and the
// rule, for the operator reading the log.
func (r *EgressRules) CheckEgress(host string, addr netip.AddrPort) error {
	a := normalize(addr.Addr())
	if !a.IsValid() {
		return denied(RuleSetBuiltIn, "invalid address", "invalid address %v", addr)
	}
	port := addr.Port()
	if r.ports != nil && !r.ports[port] {
		return denied(RuleSetOperator, "port not allowed", "%s: port %d is not an allowed port", netip.AddrPortFrom(a, port), port)
	}
	inner, via, embeds := embeddedIPv4(a)

	for _, s := range r.self {
		if r.isSelf(s, a, port) || embeds && r.isSelf(s, inner, port) {
			return denied(RuleSetBuiltIn, "poold's own listener", "%s is poold's own listening address %s", netip.AddrPortFrom(a, port), s)
		}
	}

	name := strings.TrimSuffix(strings.ToLower(trimBrackets(host)), ".")
	if p, ok := matchHost(r.denyHosts, name); ok {
		return denied(RuleSetOperator, "host denied", "host %s matches deny %s", name, p.text)
	}
	_, hostAllowed := matchHost(r.allowHosts, name)

	if err := r.decide(a, a, "", hostAllowed); err != nil {
		return err
	}
	if embeds {
		return r.decide(a, inner, via, hostAllowed)
	}
	return nil
}

// decide applies steps 4 and 5 of the rule order to a, which is outer
// itself or the address outer embeds by way of via.
func (r *EgressRules) decide(outer, a netip.Addr, via string, hostAllowed bool) error {
	what := a.String()
	if via != "" {
		what = fmt.Sprintf("%s embeds %s (%s), which", outer, a, via)
	}
	rule, ok := r.longestMatch(a)
	switch {
	case ok && rule.kind == ruleAllow:
		return nil
	case ok && rule.kind == ruleBuiltin:
		return denied(RuleSetBuiltIn, rule.text, "%s matches built-in deny %s %s", what, rule.text, rule.prefix)
	case ok:
		return denied(RuleSetOperator, "address denied", "%s matches deny %s", what, rule.text)
	case r.defaultDeny && !hostAllowed:
		return denied(RuleSetOperator, "not allowed", "%s matches no allow rule (default deny)", what)
	}
	return nil
}

// longestMatch returns the most specific prefix rule containing a, ranked
// by kind on a tie. The lists are short (built-ins plus what an operator
// writes by hand), so a scan beats building a trie.
func (r *EgressRules) longestMatch(a netip.Addr) (prefixRule, bool) {
	var best prefixRule
	found := false
	for _, p := range r.prefixes {
		if !p.prefix.Contains(a) {
			continue
		}
		if !found || p.prefix.Bits() > best.prefix.Bits() ||
			p.prefix.Bits() == best.prefix.Bits() && p.kind < best.kind {
			best, found = p, true
		}
	}
	return best, found
}

// isSelf reports whether a:port reaches the listener at s. A listener on an
// unspecified address answers on every local address, loopback and the
// unspecified address itself (which the kernel dials as a local one).
func (r *EgressRules) isSelf(s netip.AddrPort, a netip.Addr, port uint16) bool {
	if s.Port() != port {
		return false
	}
	if !s.Addr().IsUnspecified() {
		return s.Addr() == a
	}
	return a.IsLoopback() || a.IsUnspecified() || r.local[a]
}

// matchHost returns the first pattern that name matches.
func matchHost(patterns []hostPattern, name string) (hostPattern, bool) {
	if name == "" {
		return hostPattern{}, false
	}
	for _, p := range patterns {
		if p.suffix && strings.HasSuffix(name, p.name) || !p.suffix && name == p.name {
			return p, true
		}
	}
	return hostPattern{}, false
}

func denied(ruleSet, reason, format string, args ...any) error {
	return &Denial{RuleSet: ruleSet, Reason: reason, Detail: fmt.Sprintf(format, args...)}
}
