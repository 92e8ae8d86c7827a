package main

import "runtime/debug"

// memoryLimitBase is the soft memory limit's room for everything but
// buffered bodies: pools, buffers, goroutines, the runtime.
const memoryLimitBase = 256 << 20

// setMemoryLimit gives the collector a soft limit that follows the byte
// budget, unless GOMEMLIMIT was given: twice the budget (a body, and the
// copy gRPC marshals it into) plus a base. With a heap growth of 400% the
// collector would otherwise let garbage from buffered bodies pile up to
// several times the budget before it ran.
func setMemoryLimit(budget int64, getenv func(string) string) {
	if budget <= 0 || getenv("GOMEMLIMIT") != "" {
		return
	}
	debug.SetMemoryLimit(2*budget + memoryLimitBase)
}

// gcPercentUnset marks --gc-percent as not given.
const gcPercentUnset = -2

// defaultGCPercent is poold's GOGC. Its live heap is small (pools, policies,
// the requests in flight), so at Go's 100 the collector runs every few
// megabytes of request garbage, which under load is thousands of times a
// second. Four times the headroom cuts the collector's share of the CPU
// (BENCHMARKS.md) for a few megabytes more of memory.
const defaultGCPercent = 400

// setGCPercent applies --gc-percent, or the default where neither it nor
// GOGC was given: an operator's GOGC is respected.
func setGCPercent(flagValue int, getenv func(string) string) {
	switch {
	case flagValue != gcPercentUnset:
		debug.SetGCPercent(flagValue)
	case getenv("GOGC") == "":
		debug.SetGCPercent(defaultGCPercent)
	}
}
