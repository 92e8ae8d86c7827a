package main

import (
	"runtime/debug"
	"testing"
)

func TestGCPercentFlagThenGOGCThenDefault(t *testing.T) {
	orig := debug.SetGCPercent(100)
	t.Cleanup(func() { debug.SetGCPercent(orig) })
	env := func(gogc string) func(string) string {
		return func(k string) string {
			if k == "GOGC" {
				return gogc
			}
			return ""
		}
	}
	for _, tc := range []struct {
		name string
		flag int
		gogc string
		want int // 100 is what the runtime had before
	}{
		{"the flag wins over GOGC", 250, "50", 250},
		{"GOGC is respected without the flag", gcPercentUnset, "50", 100},
		{"poold's default without either", gcPercentUnset, "", defaultGCPercent},
		{"off", -1, "", -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			debug.SetGCPercent(100)
			setGCPercent(tc.flag, env(tc.gogc))
			if got := debug.SetGCPercent(100); got != tc.want {
				t.Errorf("GC percent %d, want %d", got, tc.want)
			}
		})
	}
}

func TestMemoryIsReturnedDuringAndAfterAWaveOfRemovals(t *testing.T) {
	for _, tc := range []struct {
		name   string
		sweeps []int // pools each sweep removed
		frees  int
	}{
		{"nothing removed", []int{0, 0, 0}, 0},
		{"a trickle is left to the runtime", []int{1, 0, 5, 0, 30, 0}, 0},
		{"a small wave, once it ends", []int{40, 30, 0, 0}, 1},
		{"a large wave, every 1024 and at its end", []int{700, 700, 700, 0}, 2},
		{"a wave ending below the tail is not returned again", []int{1024, 10, 0}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			frees := 0
			m := &memoryReturner{free: func() { frees++ }}
			for _, n := range tc.sweeps {
				m.afterSweep(n)
			}
			if frees != tc.frees {
				t.Errorf("memory returned %d times, want %d", frees, tc.frees)
			}
		})
	}
}
