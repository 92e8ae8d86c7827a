package main

import (
	"runtime/debug"
	"time"
)

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

// idleHostTimeout maps --idle-pool-timeout, where 0 keeps every pool, to
// the engine's option, where 0 means its default.
func idleHostTimeout(flagValue time.Duration) time.Duration {
	if flagValue == 0 {
		return -1
	}
	return flagValue
}

// Removed host pools whose memory is worth handing back to the operating
// system: every returnAfterPools of them during a wave of removals (about
// 4 MB), and the rest once the wave ends if there are at least
// returnTailPools. A trickle below that is left to the runtime's
// scavenger, as a full collection for a few KB would cost more than it
// frees.
const (
	returnAfterPools = 1024
	returnTailPools  = 64
)

// memoryReturner hands memory back to the operating system once enough
// host pools are removed. Without it the memory would come back only when
// the collector next ran and its scavenger caught up, minutes later on a
// daemon that has gone quiet, which is exactly when its pools idle out.
// Only the engine's sweeper calls it.
type memoryReturner struct {
	pending int // pools removed since the memory was last returned
	free    func()
}

func newMemoryReturner() *memoryReturner {
	return &memoryReturner{free: debug.FreeOSMemory}
}

// afterSweep is the engine's AfterSweep hook.
func (m *memoryReturner) afterSweep(removed int) {
	m.pending += removed
	if m.pending >= returnAfterPools || (removed == 0 && m.pending >= returnTailPools) {
		m.pending = 0
		m.free()
	}
}
