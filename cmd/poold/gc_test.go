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
