package dialer

import (
	"errors"
	"net/netip"
	"testing"
)

// FuzzEgressClassify feeds CheckEgress and Classify arbitrary addresses,
// ports and host names. Properties: nothing panics; every denial wraps
// ErrEgressDenied; an IPv4 address and its IPv4-mapped form get the same
// verdict and class; an IPv4 address that is denied stays denied when it
// hides inside NAT64, 6to4 or Teredo.
func FuzzEgressClassify(f *testing.F) {
	for _, tt := range egressCases {
		ap := netip.MustParseAddrPort(tt.addr)
		f.Add(ap.Addr().String(), ap.Port())
	}
	var rules []*EgressRules
	for _, cfg := range []EgressConfig{cfgDefault, cfgAllowLo, cfgDenyInAllow, cfgAllowList, cfgDenyHosts, cfgPorts, cfgSelf} {
		r, err := NewEgressRules(cfg)
		if err != nil {
			f.Fatal(err)
		}
		rules = append(rules, r)
	}

	f.Fuzz(func(t *testing.T, s string, port uint16) {
		a, err := netip.ParseAddr(s)
		if err != nil {
			a = addrFromBytes([]byte(s)) // also explore the raw address space
		}
		class := Classify(a)
		if !a.Is4() {
			for _, r := range rules {
				if err := r.CheckEgress(s, netip.AddrPortFrom(a, port)); err != nil && !errors.Is(err, ErrEgressDenied) {
					t.Fatalf("CheckEgress(%s) = %v, not an ErrEgressDenied", a, err)
				}
			}
			return
		}

		mapped := netip.AddrFrom16(a.As16())
		if got := Classify(mapped); got != class {
			t.Errorf("Classify(%s) = %q but Classify(%s) = %q", a, class, mapped, got)
		}
		v4 := a.As4()
		hidden := []netip.Addr{
			netip.AddrFrom16([16]byte{0x00, 0x64, 0xff, 0x9b, 12: v4[0], 13: v4[1], 14: v4[2], 15: v4[3]}), // NAT64
			netip.AddrFrom16([16]byte{0x20, 0x02, v4[0], v4[1], v4[2], v4[3], 15: 1}),                      // 6to4
			netip.AddrFrom16([16]byte{0x20, 0x01, 12: ^v4[0], 13: ^v4[1], 14: ^v4[2], 15: ^v4[3]}),         // Teredo
		}
		for _, r := range rules {
			plain := r.CheckEgress(s, netip.AddrPortFrom(a, port))
			if plain != nil && !errors.Is(plain, ErrEgressDenied) {
				t.Fatalf("CheckEgress(%s) = %v, not an ErrEgressDenied", a, plain)
			}
			if viaMapped := r.CheckEgress(s, netip.AddrPortFrom(mapped, port)); (plain == nil) != (viaMapped == nil) {
				t.Errorf("%s: %v, but its mapped form %s: %v", a, plain, mapped, viaMapped)
			}
			if plain == nil {
				continue
			}
			for _, h := range hidden {
				if r.CheckEgress(s, netip.AddrPortFrom(h, port)) == nil {
					t.Errorf("%s is denied (%v) but %s, which embeds it, is allowed", a, plain, h)
				}
			}
		}
	})
}

// addrFromBytes reads an address from the leading bytes of b; too few bytes
// give the zero Addr, which must be handled too.
func addrFromBytes(b []byte) netip.Addr {
	switch {
	case len(b) >= 16:
		return netip.AddrFrom16([16]byte(b[:16]))
	case len(b) >= 4:
		return netip.AddrFrom4([4]byte(b[:4]))
	}
	return netip.Addr{}
}
