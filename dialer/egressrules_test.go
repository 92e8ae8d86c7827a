package dialer

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

// These tests only classify addresses; no traffic goes anywhere.

var (
	cfgDefault         = EgressConfig{}
	cfgAllowLo         = EgressConfig{Allow: []string{"127.0.0.1/32"}}
	cfgAllowMapped     = EgressConfig{Allow: []string{"::ffff:127.0.0.0/104"}}
	cfgDenyInAllow     = EgressConfig{Allow: []string{"10.0.0.0/8"}, Deny: []string{"10.1.0.0/16"}}
	cfgAllowInDeny     = EgressConfig{Deny: []string{"10.0.0.0/8"}, Allow: []string{"10.2.0.0/16"}}
	cfgTie             = EgressConfig{Allow: []string{"10.9.0.0/16"}, Deny: []string{"10.9.0.0/16"}}
	cfgAllowAll        = EgressConfig{Allow: []string{"0.0.0.0/0", "::/0"}}
	cfgAllowV6Lo       = EgressConfig{Allow: []string{"::1"}}
	cfgAllowNAT64Local = EgressConfig{Allow: []string{"64:ff9b:1::/48"}}
	cfgAllowList       = EgressConfig{DefaultDeny: true, Allow: []string{"10.0.0.0/8", "*.internal.example", "api.partner.example"}}
	cfgDenyHosts       = EgressConfig{Allow: []string{"203.0.113.7"}, Deny: []string{"*.evil.example", "Bad.Example."}}
	cfgPorts           = EgressConfig{AllowedPorts: []uint16{443, 8443}}
	cfgSelf            = EgressConfig{
		Allow:     []string{"127.0.0.1/32", "10.0.0.0/8"},
		SelfAddrs: []netip.AddrPort{netip.MustParseAddrPort("[::]:7070"), netip.MustParseAddrPort("10.0.0.5:9090")},
	}
)

// egressCases is shared with the fuzz target as its seed corpus. want is ""
// when the dial is allowed, else the message after "dialer: egress denied: ".
var egressCases = []struct {
	name string
	cfg  *EgressConfig
	host string
	addr string // ip:port
	want string
}{
	// Built-in denies, in every notation an address can hide in.
	{"loopback", &cfgDefault, "", "127.0.0.1:80", "127.0.0.1 matches built-in deny loopback 127.0.0.0/8"},
	{"loopback, top of the block", &cfgDefault, "", "127.255.255.254:80", "127.255.255.254 matches built-in deny loopback 127.0.0.0/8"},
	{"IPv6 loopback", &cfgDefault, "", "[::1]:80", "::1 matches built-in deny loopback ::1/128"},
	// ::1 and :: sit inside ::/96 but are not IPv4-compatible addresses;
	// reading ::1 as 0.0.0.1 would make an explicit allow of it useless.
	{"IPv6 loopback explicitly allowed", &cfgAllowV6Lo, "", "[::1]:80", ""},
	{"IPv6 unspecified with IPv6 loopback allowed", &cfgAllowV6Lo, "", "[::]:80", ":: matches built-in deny unspecified ::/128"},
	{"IPv4-mapped loopback", &cfgDefault, "", "[::ffff:127.0.0.1]:80", "127.0.0.1 matches built-in deny loopback 127.0.0.0/8"},
	{"metadata", &cfgDefault, "", "169.254.169.254:80", "169.254.169.254 matches built-in deny cloud-metadata 169.254.169.254/32"},
	{"IPv4-mapped metadata in hex", &cfgDefault, "", "[::ffff:a9fe:a9fe]:80", "169.254.169.254 matches built-in deny cloud-metadata 169.254.169.254/32"},
	{"NAT64 loopback", &cfgDefault, "", "[64:ff9b::7f00:1]:80", "64:ff9b::7f00:1 embeds 127.0.0.1 (nat64), which matches built-in deny loopback 127.0.0.0/8"},
	{"NAT64 metadata", &cfgDefault, "", "[64:ff9b::a9fe:a9fe]:80", "64:ff9b::a9fe:a9fe embeds 169.254.169.254 (nat64), which matches built-in deny cloud-metadata 169.254.169.254/32"},
	{"NAT64 local-use loopback", &cfgDefault, "", "[64:ff9b:1::7f00:1]:80", "64:ff9b:1::7f00:1 matches built-in deny nat64-local 64:ff9b:1::/48"},
	{"NAT64 local-use, allowed, still unpacked", &cfgAllowNAT64Local, "", "[64:ff9b:1::7f00:1]:80", "64:ff9b:1::7f00:1 embeds 127.0.0.1 (nat64-local), which matches built-in deny loopback 127.0.0.0/8"},
	{"NAT64 local-use of a public address, allowed", &cfgAllowNAT64Local, "", "[64:ff9b:1::808:808]:443", ""},
	{"SIIT loopback", &cfgDefault, "", "[::ffff:0:7f00:1]:80", "::ffff:0:7f00:1 embeds 127.0.0.1 (ipv4-translated), which matches built-in deny loopback 127.0.0.0/8"},
	{"SIIT of a public address", &cfgDefault, "", "[::ffff:0:808:808]:443", ""},
	{"6to4 loopback", &cfgDefault, "", "[2002:7f00:1::1]:80", "2002:7f00:1::1 embeds 127.0.0.1 (6to4), which matches built-in deny loopback 127.0.0.0/8"},
	{"Teredo loopback client", &cfgDefault, "", "[2001:0:4136:e378:8000:63bf:80ff:fffe]:80", "2001:0:4136:e378:8000:63bf:80ff:fffe embeds 127.0.0.1 (teredo), which matches built-in deny loopback 127.0.0.0/8"},
	{"IPv4-compatible loopback", &cfgDefault, "", "[::127.0.0.1]:80", "::7f00:1 embeds 127.0.0.1 (ipv4-compatible), which matches built-in deny loopback 127.0.0.0/8"},
	{"IPv6 unspecified", &cfgDefault, "", "[::]:80", ":: matches built-in deny unspecified ::/128"},
	{"IPv4 unspecified", &cfgDefault, "", "0.0.0.0:80", "0.0.0.0 matches built-in deny unspecified 0.0.0.0/8"},
	{"multicast", &cfgDefault, "", "224.0.0.1:80", "224.0.0.1 matches built-in deny multicast 224.0.0.0/4"},
	{"IPv6 multicast", &cfgDefault, "", "[ff02::1]:80", "ff02::1 matches built-in deny multicast ff00::/8"},
	{"broadcast", &cfgDefault, "", "255.255.255.255:80", "255.255.255.255 matches built-in deny broadcast 255.255.255.255/32"},
	{"IPv6 metadata", &cfgDefault, "", "[fd00:ec2::254]:80", "fd00:ec2::254 matches built-in deny cloud-metadata fd00:ec2::254/128"},
	{"IPv6 link-local with a zone", &cfgDefault, "", "[fe80::1%eth0]:80", "fe80::1 matches built-in deny link-local fe80::/10"},

	// Allowed by default.
	{"private", &cfgDefault, "", "10.0.0.1:443", ""},
	{"public", &cfgDefault, "", "8.8.8.8:443", ""},
	{"IPv6 public", &cfgDefault, "", "[2001:4860:4860::8888]:443", ""},
	{"IPv6 unique local", &cfgDefault, "", "[fd12:3456::1]:443", ""},
	{"6to4 of a public address", &cfgDefault, "", "[2002:808:808::1]:443", ""},
	{"carrier-grade NAT", &cfgDefault, "", "100.64.0.1:443", ""},

	// Explicit rules.
	{"allow /32 opens one loopback address", &cfgAllowLo, "", "127.0.0.1:8080", ""},
	{"allow /32 leaves the rest of loopback", &cfgAllowLo, "", "127.0.0.2:8080", "127.0.0.2 matches built-in deny loopback 127.0.0.0/8"},
	{"allow /32 covers the mapped form", &cfgAllowLo, "", "[::ffff:127.0.0.1]:8080", ""},
	{"allow /32 covers the NAT64 form", &cfgAllowLo, "", "[64:ff9b::7f00:1]:8080", ""},
	{"IPv4-mapped allow CIDR means IPv4", &cfgAllowMapped, "", "127.0.0.9:8080", ""},
	{"deny inside an allow", &cfgDenyInAllow, "", "10.1.2.3:443", "10.1.2.3 matches deny 10.1.0.0/16"},
	{"allow around a deny", &cfgDenyInAllow, "", "10.2.0.1:443", ""},
	{"allow inside a deny", &cfgAllowInDeny, "", "10.2.0.1:443", ""},
	{"deny around an allow", &cfgAllowInDeny, "", "10.3.0.1:443", "10.3.0.1 matches deny 10.0.0.0/8"},
	{"deny wins a tie", &cfgTie, "", "10.9.0.1:443", "10.9.0.1 matches deny 10.9.0.0/16"},
	{"allow everything still denies loopback", &cfgAllowAll, "", "127.0.0.1:80", "127.0.0.1 matches built-in deny loopback 127.0.0.0/8"},
	{"allow everything still denies metadata", &cfgAllowAll, "", "[fd00:ec2::254]:80", "fd00:ec2::254 matches built-in deny cloud-metadata fd00:ec2::254/128"},
	{"allow everything allows public", &cfgAllowAll, "", "8.8.8.8:443", ""},

	// Allow-list mode.
	{"allow-list allows a listed CIDR", &cfgAllowList, "", "10.1.2.3:443", ""},
	{"allow-list denies the rest", &cfgAllowList, "", "8.8.8.8:443", "8.8.8.8 matches no allow rule (default deny)"},
	{"allow-list allows a host under a pattern", &cfgAllowList, "db.internal.example", "192.168.1.5:5432", ""},
	{"allow-list pattern does not match its apex", &cfgAllowList, "internal.example", "192.168.1.5:5432", "192.168.1.5 matches no allow rule (default deny)"},
	{"allow-list allows an exact host", &cfgAllowList, "API.Partner.Example.", "8.8.4.4:443", ""},
	{"allowed host does not open loopback", &cfgAllowList, "db.internal.example", "127.0.0.1:5432", "127.0.0.1 matches built-in deny loopback 127.0.0.0/8"},
	{"allow-list decides the outer address too", &cfgAllowList, "", "[2002:a00:1::1]:443", "2002:a00:1::1 matches no allow rule (default deny)"},

	// Host denies.
	{"denied host pattern", &cfgDenyHosts, "x.evil.example", "8.8.8.8:443", "host x.evil.example matches deny *.evil.example"},
	{"denied host beats an allowed IP", &cfgDenyHosts, "bad.example", "203.0.113.7:443", "host bad.example matches deny Bad.Example."},
	{"other hosts pass", &cfgDenyHosts, "good.example", "203.0.113.7:443", ""},

	// Ports.
	{"allowed port", &cfgPorts, "", "8.8.8.8:8443", ""},
	{"other port", &cfgPorts, "", "8.8.8.8:22", "8.8.8.8:22: port 22 is not an allowed port"},

	// poold's own listeners.
	{"own port on loopback", &cfgSelf, "", "127.0.0.1:7070", "127.0.0.1:7070 is poold's own listening address [::]:7070"},
	{"own port, mapped", &cfgSelf, "", "[::ffff:127.0.0.1]:7070", "127.0.0.1:7070 is poold's own listening address [::]:7070"},
	{"own port behind NAT64", &cfgSelf, "", "[64:ff9b::7f00:1]:7070", "[64:ff9b::7f00:1]:7070 is poold's own listening address [::]:7070"},
	{"own port on IPv6 unspecified", &cfgSelf, "", "[::]:7070", "[::]:7070 is poold's own listening address [::]:7070"},
	{"own specific address", &cfgSelf, "", "10.0.0.5:9090", "10.0.0.5:9090 is poold's own listening address 10.0.0.5:9090"},
	{"allowed loopback on another port", &cfgSelf, "", "127.0.0.1:8080", ""},
	{"own address on another port", &cfgSelf, "", "10.0.0.5:9091", ""},
}

func TestEgressRulesVerdicts(t *testing.T) {
	built := map[*EgressConfig]*EgressRules{}
	for _, tt := range egressCases {
		t.Run(tt.name, func(t *testing.T) {
			r, ok := built[tt.cfg]
			if !ok {
				var err error
				if r, err = NewEgressRules(*tt.cfg); err != nil {
					t.Fatal(err)
				}
				built[tt.cfg] = r
			}

			err := r.CheckEgress(tt.host, netip.MustParseAddrPort(tt.addr))

			switch {
			case tt.want == "" && err != nil:
				t.Errorf("CheckEgress(%q, %s) = %v, want allowed", tt.host, tt.addr, err)
			case tt.want != "" && err == nil:
				t.Errorf("CheckEgress(%q, %s) allowed, want %q", tt.host, tt.addr, tt.want)
			case err != nil && (err.Error() != "dialer: egress denied: "+tt.want || !errors.Is(err, ErrEgressDenied)):
				t.Errorf("CheckEgress(%q, %s) =\n%v\nwant ErrEgressDenied with\n%s", tt.host, tt.addr, err, tt.want)
			}
		})
	}
}

func TestNewEgressRulesNamesTheBadEntry(t *testing.T) {
	tests := []struct {
		name string
		cfg  EgressConfig
		want string
	}{
		{"host bits past the mask", EgressConfig{Allow: []string{"10.0.0.0/8", "10.0.0.1/8"}}, `allow[1] "10.0.0.1/8": CIDR has bits set past /8 (did you mean 10.0.0.0/8?)`},
		{"prefix too long", EgressConfig{Deny: []string{"10.0.0.0/33"}}, `deny[0] "10.0.0.0/33": not a CIDR`},
		{"host with a port", EgressConfig{Allow: []string{"api.example.com:443"}}, `allow[0] "api.example.com:443": not an IP`},
		{"bare wildcard", EgressConfig{Allow: []string{"*."}}, `allow[0] "*.": not an IP`},
		{"wildcard in the middle", EgressConfig{Deny: []string{"api.*.example"}}, `deny[0] "api.*.example": not an IP`},
		{"empty entry", EgressConfig{Deny: []string{""}}, `deny[0] "": empty entry`},
		{"zone", EgressConfig{Deny: []string{"fe80::1%eth0"}}, `deny[0] "fe80::1%eth0": an IP zone cannot be matched`},
		{"mistyped IP", EgressConfig{Allow: []string{"10.0.0.300"}}, `allow[0] "10.0.0.300": not an IP, a CIDR or a host pattern (name.example or *.name.example); an all-numeric last label looks like a mistyped IP`},
		{"port zero", EgressConfig{AllowedPorts: []uint16{443, 0}}, `allowed_ports[1]: port 0 is not a port`},
		{"self without a port", EgressConfig{SelfAddrs: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")}}, `self_addrs[0] "127.0.0.1:0"`},
		{"zero self address", EgressConfig{SelfAddrs: []netip.AddrPort{{}}}, `self_addrs[0] "invalid AddrPort"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewEgressRules(tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("NewEgressRules() error = %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestClassifyNamesTheAddressKind(t *testing.T) {
	tests := []struct {
		addr string
		want string
	}{
		{"127.0.0.1", "loopback"},
		{"::1", "loopback"},
		{"::ffff:127.0.0.1", "loopback"},
		{"169.254.169.254", "cloud-metadata"},
		{"169.254.1.1", "link-local"},
		{"fe80::1%eth0", "link-local"},
		{"fd00:ec2::254", "cloud-metadata"},
		{"0.0.0.0", "unspecified"},
		{"::", "unspecified"},
		{"224.0.0.1", "multicast"},
		{"ff02::1", "multicast"},
		{"255.255.255.255", "broadcast"},
		{"10.1.2.3", "private"},
		{"172.16.0.1", "private"},
		{"192.168.1.1", "private"},
		{"fd12::1", "private"},
		{"100.64.0.1", "shared"},
		{"192.0.2.1", "documentation"},
		{"2001:db8::1", "documentation"},
		{"198.18.0.1", "benchmarking"},
		{"240.0.0.1", "reserved"},
		{"64:ff9b::7f00:1", "nat64"},
		{"64:ff9b:1::7f00:1", "nat64-local"},
		{"::ffff:0:7f00:1", "ipv4-translated"},
		{"2002:7f00:1::1", "6to4"},
		{"2001:0:4136:e378:8000:63bf:80ff:fffe", "teredo"},
		{"::7f00:1", "ipv4-compatible"},
		{"8.8.8.8", "public"},
		{"2606:4700::1111", "public"},
	}
	for _, tt := range tests {
		if got := Classify(netip.MustParseAddr(tt.addr)); got != tt.want {
			t.Errorf("Classify(%s) = %q, want %q", tt.addr, got, tt.want)
		}
	}
	if got := Classify(netip.Addr{}); got != "invalid" {
		t.Errorf("Classify(zero) = %q, want invalid", got)
	}
}

func TestEgressRulesDenyTheZeroAddress(t *testing.T) {
	r, err := NewEgressRules(EgressConfig{Allow: []string{"0.0.0.0/0"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.CheckEgress("", netip.AddrPort{}); !errors.Is(err, ErrEgressDenied) {
		t.Errorf("CheckEgress(zero) = %v, want a denial", err)
	}
}

// Every cloud metadata and platform endpoint known here is denied with no
// configuration at all, in each notation that reaches it. Only CheckEgress
// runs: nothing is dialed, so a missing deny fails the test rather than
// sending a packet off this machine.
func TestBuiltInDeniesCoverTheClouds(t *testing.T) {
	r, err := NewEgressRules(EgressConfig{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		who, addr, class string
	}{
		{"AWS, GCP, Azure, Oracle, DigitalOcean, OpenStack IMDS", "169.254.169.254", "cloud-metadata"},
		{"AWS IMDS over IPv6", "fd00:ec2::254", "cloud-metadata"},
		{"AWS EKS Pod Identity over IPv6", "fd00:ec2::23", "cloud-metadata"},
		{"AWS ECS task credentials", "169.254.170.2", "cloud-metadata"},
		{"AWS EKS Pod Identity", "169.254.170.23", "cloud-metadata"},
		{"GCP metadata over IPv6", "fd20:ce::254", "cloud-metadata"},
		{"Azure WireServer", "168.63.129.16", "cloud-metadata"},
		{"Alibaba Cloud metadata", "100.100.100.200", "cloud-metadata"},
		{"Oracle Cloud metadata over IPv6", "fd00:c1::a9fe:a9fe", "cloud-metadata"},
		{"Oracle Cloud Classic metadata", "192.0.0.192", "cloud-metadata"},
		{"Tencent Cloud metadata", "169.254.0.23", "cloud-metadata"},
		{"loopback through NAT64 local-use", "64:ff9b:1::7f00:1", "nat64-local"},
		{"loopback through SIIT", "::ffff:0:7f00:1", "ipv4-translated"},
		{"IMDS through SIIT", "::ffff:0:a9fe:a9fe", "ipv4-translated"},
		{"Alibaba through NAT64", "64:ff9b::6464:64c8", "nat64"},
	} {
		t.Run(tc.who, func(t *testing.T) {
			a := netip.MustParseAddr(tc.addr)
			if got := Classify(a); got != tc.class {
				t.Errorf("Classify(%s) = %q, want %q", a, got, tc.class)
			}
			for _, port := range []uint16{80, 443} {
				if err := r.CheckEgress("", netip.AddrPortFrom(a, port)); !errors.Is(err, ErrEgressDenied) {
					t.Errorf("CheckEgress(%s port %d) = %v, want a denial", a, port, err)
				}
			}
		})
	}
}

// A Denial says which rule set refused and why, in words that name neither
// the address nor the rule, so a caller can be told them.
func TestDenialsNameTheirRuleSetAndReason(t *testing.T) {
	for _, tc := range []struct {
		cfg             *EgressConfig
		host, addr      string
		ruleSet, reason string
	}{
		{&cfgDefault, "", "127.0.0.1:80", RuleSetBuiltIn, "loopback"},
		{&cfgDefault, "", "169.254.169.254:80", RuleSetBuiltIn, "cloud-metadata"},
		{&cfgSelf, "", "127.0.0.1:7070", RuleSetBuiltIn, "poold's own listener"},
		{&cfgPorts, "", "8.8.8.8:80", RuleSetOperator, "port not allowed"},
		{&cfgDenyHosts, "x.evil.example", "8.8.8.8:443", RuleSetOperator, "host denied"},
		{&cfgDenyInAllow, "", "10.1.2.3:443", RuleSetOperator, "address denied"},
		{&cfgAllowList, "", "8.8.8.8:443", RuleSetOperator, "not allowed"},
	} {
		r, err := NewEgressRules(*tc.cfg)
		if err != nil {
			t.Fatal(err)
		}
		err = r.CheckEgress(tc.host, netip.MustParseAddrPort(tc.addr))
		var d *Denial
		if !errors.As(err, &d) || !errors.Is(err, ErrEgressDenied) {
			t.Fatalf("CheckEgress(%q, %s) = %v, want a *Denial", tc.host, tc.addr, err)
		}
		if d.RuleSet != tc.ruleSet || d.Reason != tc.reason {
			t.Errorf("CheckEgress(%q, %s): rule set %q, reason %q; want %q, %q", tc.host, tc.addr, d.RuleSet, d.Reason, tc.ruleSet, tc.reason)
		}
		if strings.Contains(d.RuleSet+d.Reason, strings.Split(tc.addr, ":")[0]) {
			t.Errorf("the reason %q names the address", d.Reason)
		}
	}
}
