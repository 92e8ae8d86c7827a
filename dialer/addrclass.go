package dialer

import "net/netip"

// addrClass is one special-purpose address block: its name for logs and
// whether egress denies it unless an operator allows it.
type addrClass struct {
	prefix netip.Prefix
	class  string
	deny   bool
}

// addrClasses are the IANA special-purpose blocks (RFC 6890 and successors)
// that matter to an egress decision or to a reader of a log line, and the
// clouds' metadata and platform endpoints. Denied are the blocks an
// upstream has no business being in, and which reach poold's own host or
// the credentials of the machine it runs on: loopback, link-local,
// unspecified, multicast, broadcast, every cloud metadata address known
// here, and the NAT64 local-use prefix, whose IPv4 address may sit at any
// of six offsets depending on the network, so it cannot be checked. Private
// ranges are allowed: calling internal services is what poold is for.
var addrClasses = []addrClass{
	{netip.MustParsePrefix("0.0.0.0/8"), "unspecified", true},
	{netip.MustParsePrefix("10.0.0.0/8"), "private", false},
	{netip.MustParsePrefix("100.64.0.0/10"), "shared", false},
	{netip.MustParsePrefix("100.100.100.200/32"), "cloud-metadata", true}, // Alibaba Cloud
	{netip.MustParsePrefix("127.0.0.0/8"), "loopback", true},
	{netip.MustParsePrefix("168.63.129.16/32"), "cloud-metadata", true}, // Azure WireServer: agent, extensions, their secrets
	{netip.MustParsePrefix("169.254.0.0/16"), "link-local", true},
	{netip.MustParsePrefix("169.254.0.23/32"), "cloud-metadata", true},    // Tencent Cloud
	{netip.MustParsePrefix("169.254.169.254/32"), "cloud-metadata", true}, // AWS, GCP, Azure, Oracle, DigitalOcean, OpenStack and more
	{netip.MustParsePrefix("169.254.170.2/32"), "cloud-metadata", true},   // AWS ECS task credentials
	{netip.MustParsePrefix("169.254.170.23/32"), "cloud-metadata", true},  // AWS EKS Pod Identity
	{netip.MustParsePrefix("172.16.0.0/12"), "private", false},
	{netip.MustParsePrefix("192.0.0.0/24"), "reserved", false},
	{netip.MustParsePrefix("192.0.0.192/32"), "cloud-metadata", true}, // Oracle Cloud Classic
	{netip.MustParsePrefix("192.0.2.0/24"), "documentation", false},
	{netip.MustParsePrefix("192.168.0.0/16"), "private", false},
	{netip.MustParsePrefix("198.18.0.0/15"), "benchmarking", false},
	{netip.MustParsePrefix("198.51.100.0/24"), "documentation", false},
	{netip.MustParsePrefix("203.0.113.0/24"), "documentation", false},
	{netip.MustParsePrefix("224.0.0.0/4"), "multicast", true},
	{netip.MustParsePrefix("240.0.0.0/4"), "reserved", false},
	{netip.MustParsePrefix("255.255.255.255/32"), "broadcast", true},
	{netip.MustParsePrefix("::/128"), "unspecified", true},
	{netip.MustParsePrefix("::1/128"), "loopback", true},
	{netip.MustParsePrefix("::/96"), "ipv4-compatible", false},
	{netip.MustParsePrefix("64:ff9b::/96"), "nat64", false},
	{netip.MustParsePrefix("64:ff9b:1::/48"), "nat64-local", true},       // RFC 8215
	{netip.MustParsePrefix("::ffff:0:0:0/96"), "ipv4-translated", false}, // SIIT, RFC 7915
	{netip.MustParsePrefix("100::/64"), "discard", false},
	{netip.MustParsePrefix("2001::/32"), "teredo", false},
	{netip.MustParsePrefix("2001:db8::/32"), "documentation", false},
	{netip.MustParsePrefix("2002::/16"), "6to4", false},
	{netip.MustParsePrefix("fc00::/7"), "private", false},
	{netip.MustParsePrefix("fd00:c1::a9fe:a9fe/128"), "cloud-metadata", true}, // Oracle Cloud
	{netip.MustParsePrefix("fd00:ec2::/32"), "cloud-metadata", true},          // AWS: ECS, EKS Pod Identity, DNS
	{netip.MustParsePrefix("fd00:ec2::254/128"), "cloud-metadata", true},      // AWS
	{netip.MustParsePrefix("fd20:ce::254/128"), "cloud-metadata", true},       // GCP
	{netip.MustParsePrefix("fe80::/10"), "link-local", true},
	{netip.MustParsePrefix("ff00::/8"), "multicast", true},
}

// Classify names the kind of address addr is, for logs: "loopback",
// "link-local", "cloud-metadata", "unspecified", "multicast", "broadcast",
// "private", "shared" (carrier-grade NAT), "documentation",
// "benchmarking", "reserved", "discard", "nat64", "nat64-local", "6to4",
// "teredo", "ipv4-compatible", "ipv4-translated", "public" for anything
// else, or "invalid" for the zero Addr. An IPv4-mapped address is
// classified as its IPv4 address; an address that embeds IPv4 (nat64,
// 6to4, teredo, ipv4-translated) is classified by its outer form.
func Classify(addr netip.Addr) string {
	a := normalize(addr)
	if !a.IsValid() {
		return "invalid"
	}
	if c, ok := classOf(a); ok {
		return c.class
	}
	return "public"
}

// classOf returns the most specific class a belongs to.
func classOf(a netip.Addr) (addrClass, bool) {
	var best addrClass
	found := false
	for _, c := range addrClasses {
		if c.prefix.Contains(a) && (!found || c.prefix.Bits() > best.prefix.Bits()) {
			best, found = c, true
		}
	}
	return best, found
}

// normalize returns the form rules are matched against: IPv4-mapped IPv6
// as plain IPv4 (the kernel dials ::ffff:127.0.0.1 as 127.0.0.1) and no
// zone (netip.Prefix.Contains never matches a zoned address).
func normalize(a netip.Addr) netip.Addr {
	return a.Unmap().WithZone("")
}

var (
	nat64Prefix      = netip.MustParsePrefix("64:ff9b::/96")
	nat64LocalPrefix = netip.MustParsePrefix("64:ff9b:1::/48")
	siitPrefix       = netip.MustParsePrefix("::ffff:0:0:0/96")
	sixToFourPrefix  = netip.MustParsePrefix("2002::/16")
	teredoPrefix     = netip.MustParsePrefix("2001::/32")
	ipv4CompatRange  = netip.MustParsePrefix("::/96")
)

// embeddedIPv4 returns the IPv4 address that a normalized IPv6 address
// carries to an IPv4 host, and the mechanism's name: a gateway or relay
// turns a connection to the outer address into one to the inner address,
// so a rule that denies the inner one must see it.
func embeddedIPv4(a netip.Addr) (netip.Addr, string, bool) {
	if !a.Is6() {
		return netip.Addr{}, "", false
	}
	b := a.As16()
	switch {
	case nat64Prefix.Contains(a): // RFC 6052: the last 32 bits
		return netip.AddrFrom4([4]byte(b[12:16])), "nat64", true
	case nat64LocalPrefix.Contains(a):
		// RFC 8215 lets the network choose a prefix from /48 to /96, which
		// moves the IPv4 address; the prefix is denied outright for that.
		// An operator who allows it most likely uses a /96, so that form
		// is still checked.
		return netip.AddrFrom4([4]byte(b[12:16])), "nat64-local", true
	case siitPrefix.Contains(a): // RFC 7915 IPv4-translated: the last 32 bits
		return netip.AddrFrom4([4]byte(b[12:16])), "ipv4-translated", true
	case sixToFourPrefix.Contains(a): // RFC 3056: bits 16 to 48
		return netip.AddrFrom4([4]byte(b[2:6])), "6to4", true
	case teredoPrefix.Contains(a): // RFC 4380: client address, bits inverted
		return netip.AddrFrom4([4]byte{^b[12], ^b[13], ^b[14], ^b[15]}), "teredo", true
	case ipv4CompatRange.Contains(a) && a != netip.IPv6Unspecified() && a != netip.IPv6Loopback():
		// RFC 4291 IPv4-compatible, deprecated but still routed by some
		// stacks. :: and ::1 are not: they are the IPv6 unspecified and
		// loopback addresses, decided by their own classes, and reading
		// ::1 as 0.0.0.1 would make an allow of ::1 impossible.
		return netip.AddrFrom4([4]byte(b[12:16])), "ipv4-compatible", true
	}
	return netip.Addr{}, "", false
}
