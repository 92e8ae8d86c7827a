package dialer

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
)

// EgressChecker decides whether poold may connect to a resolved address. It
// is asked for every resolved IP before connecting to it, so a name that
// resolves to a forbidden address is caught however it was spelled. A
// denied address is skipped; a dial with every address denied fails with
// an *Error at StepEgress. A nil EgressChecker allows everything.
//
// Through a proxy the origin is checked and the proxy's own address is not:
// the operator chose the proxy, the caller chose the origin. This holds for
// a plain-http origin too, which the proxy connects to on poold's behalf
// all the same. An origin IP literal is checked as is; an origin name is
// resolved locally and the dial denied if any answer is, since poold cannot
// steer the proxy away from that one. A name that does not resolve locally
// implies no denial and is left to the proxy to resolve: proxies are often
// there because they see names poold cannot.
type EgressChecker interface {
	// CheckEgress returns nil to allow host (as the caller named it) at
	// addr, or an error wrapping ErrEgressDenied that says why not.
	CheckEgress(host string, addr netip.AddrPort) error
}

// ErrEgressDenied is what every egress denial wraps, so callers can tell a
// policy refusal from a network failure with errors.Is.
var ErrEgressDenied = errors.New("dialer: egress denied")

// The rule sets a Denial names.
const (
	// RuleSetBuiltIn is poold's own: the special-purpose and cloud
	// metadata blocks, and poold's listeners.
	RuleSetBuiltIn = "built-in"
	// RuleSetOperator is what the operator configured.
	RuleSetOperator = "operator"
)

// Denial is an egress refusal from EgressRules. RuleSet and Reason are
// what a caller may be told: which rule set refused ("built-in" or
// "operator") and why, in a word ("loopback", "cloud-metadata", "port not
// allowed"), neither naming the resolved address nor the rule's text.
// Detail has both, for the operator's log.
type Denial struct {
	RuleSet string
	Reason  string
	Detail  string
}

// Error reads "dialer: egress denied: <detail>".
func (d *Denial) Error() string { return ErrEgressDenied.Error() + ": " + d.Detail }

// Is makes every Denial match ErrEgressDenied.
func (d *Denial) Is(target error) bool { return target == ErrEgressDenied }

// egressKey is the context key of WithEgress.
type egressKey struct{}

// WithEgress returns a context under which a dial is checked by c instead
// of the Dialer's own Egress: the rules of the caller a dial is made for,
// where callers have rules of their own.
func WithEgress(ctx context.Context, c EgressChecker) context.Context {
	return context.WithValue(ctx, egressKey{}, c)
}

// egressFor returns the checker for a dial under ctx.
func (d *Dialer) egressFor(ctx context.Context) EgressChecker {
	if c, ok := ctx.Value(egressKey{}).(EgressChecker); ok {
		return c
	}
	return d.Egress
}

// checkEgress asks c about addr and makes sure a denial wraps
// ErrEgressDenied even when a checker forgot to.
func checkEgress(c EgressChecker, host string, addr netip.AddrPort) error {
	if c == nil {
		return nil
	}
	err := c.CheckEgress(host, addr)
	if err == nil || errors.Is(err, ErrEgressDenied) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrEgressDenied, err)
}
