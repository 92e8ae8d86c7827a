package pool

import (
	"context"
	"sync/atomic"

	"github.com/poold/poold/dialer"
)

// EgressScope is a named set of egress rules that requests run under: the
// rules of one kind of caller. A request carries its scope in its context
// (WithEgressScope). Requests of different scopes never share a
// connection: each scope has host pools of its own, so a connection dialled
// under rules that allow an address never serves a caller whose rules deny
// it. Set swaps the rules at once: the next dial is checked by the new
// rules, and a connection to an address they deny is closed when it next
// goes idle and is taken by no request meanwhile.
type EgressScope struct {
	name  string
	rules atomic.Pointer[scopeRules]
}

// scopeRules is one version of a scope's rules. gen tells versions apart,
// so that a conn is checked again only when the rules changed since it was
// last checked, not on every request.
type scopeRules struct {
	checker dialer.EgressChecker
	gen     uint64
}

// NewEgressScope returns a scope named name (part of its pools' keys; ""
// keeps the keys as they are without a scope) checked by c.
func NewEgressScope(name string, c dialer.EgressChecker) *EgressScope {
	s := &EgressScope{name: name}
	s.Set(c)
	return s
}

// Name is the scope's name.
func (s *EgressScope) Name() string { return s.name }

// Set replaces the scope's rules.
func (s *EgressScope) Set(c dialer.EgressChecker) {
	var gen uint64
	if old := s.rules.Load(); old != nil {
		gen = old.gen + 1
	}
	s.rules.Store(&scopeRules{checker: c, gen: gen})
}

// checker returns the rules in force.
func (s *EgressScope) checker() dialer.EgressChecker { return s.rules.Load().checker }

// deniesConn reports whether the rules in force refuse c (of a pool for
// host), checking it only when the rules changed since it was last
// checked. The conn's pool lock is held.
func (s *EgressScope) deniesConn(host string, c *conn) bool {
	r := s.rules.Load()
	if c.egressGen == r.gen+1 {
		return false // allowed by these very rules already
	}
	if r.checker != nil && c.remoteAP.IsValid() && r.checker.CheckEgress(host, c.remoteAP) != nil {
		return true
	}
	c.egressGen = r.gen + 1
	return false
}

// scopeKey is the context key of WithEgressScope.
type scopeKey struct{}

// WithEgressScope returns a context whose requests run under s.
func WithEgressScope(ctx context.Context, s *EgressScope) context.Context {
	return context.WithValue(ctx, scopeKey{}, s)
}

// scopeFrom returns the scope of a request's context, or nil.
func scopeFrom(ctx context.Context) *EgressScope {
	s, _ := ctx.Value(scopeKey{}).(*EgressScope)
	return s
}

// scopedKey is a pool key within scope s.
func scopedKey(key string, s *EgressScope) string {
	if s == nil || s.name == "" {
		return key
	}
	return key + " egress=" + s.name
}
