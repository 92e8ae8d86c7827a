package main

import "runtime/debug"

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
