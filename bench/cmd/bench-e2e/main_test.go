package main

import (
	"io"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseFlags(t *testing.T) {
	base := []string{"--poold=/p", "--upstream=/u", "--hop-nethttp=/n", "--hop-fasthttp=/f"}
	cfg, err := parseFlags(append(base, "--variant", "gc100-stream@/other=--gc-percent=100 --access-log", "--sizes=100, 2048"), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cfg.targets, knownTargets) {
		t.Errorf("targets %v, want every known one", cfg.targets)
	}
	if !slices.Equal(cfg.sizes, []int{100, 2048}) {
		t.Errorf("sizes %v", cfg.sizes)
	}
	want := variant{name: "gc100-stream", bin: "/other", stream: true, args: []string{"--gc-percent=100", "--access-log"}}
	if len(cfg.variants) != 1 || cfg.variants[0].name != want.name || cfg.variants[0].bin != want.bin ||
		cfg.variants[0].stream != want.stream || !slices.Equal(cfg.variants[0].args, want.args) {
		t.Errorf("variants %+v, want [%+v]", cfg.variants, want)
	}
	if cfg.maxTime <= 0 {
		t.Errorf("no overall time bound: %v", cfg.maxTime)
	}

	short, err := parseFlags(append(base, "--short"), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if short.reps != 1 || short.duration > 2*time.Second || !slices.Equal(short.sizes, []int{100}) {
		t.Errorf("--short: %d reps of %v at %v", short.reps, short.duration, short.sizes)
	}

	for _, tc := range []struct {
		args []string
		want string // in the error
	}{
		{[]string{"--upstream=/u", "--targets=nginx"}, "--poold"},
		{[]string{"--poold=/p", "--targets=nginx"}, "--upstream"},
		{[]string{"--poold=/p", "--upstream=/u", "--targets=hop-fasthttp"}, "--hop-fasthttp"},
		{[]string{"--poold=/p", "--upstream=/u", "--targets=hop-nethttp-h2"}, "--hop-nethttp"},
		{append(base, "--targets=squid"), "squid"},
		{append(base, "--sizes=10k"), "--sizes"},
		{append(base, "--reps=0"), "--reps"},
		{append(base, "--duration=0s"), "--duration"},
		{append(base, "--callers=4", "--conns=8"), "--conns"},
		{append(base, "--variant=poold=--access-log"), "taken"},
		{append(base, "--variant=a=", "--variant=a=--access-log"), "taken"},
		{append(base, "--variant=--access-log"), "name"},
		{append(base, "extra"), "extra"},
	} {
		_, err := parseFlags(tc.args, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parseFlags(%q) = %v, want an error about %s", tc.args, err, tc.want)
		}
	}
}

func TestByteSize(t *testing.T) {
	for n, want := range map[int]string{0: "0 B", 100: "100 B", 1000: "1000 B", 16384: "16 KiB", 1536: "1536 B", 1 << 20: "1 MiB"} {
		if got := byteSize(n); got != want {
			t.Errorf("byteSize(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestRatioPairsRepetitions(t *testing.T) {
	r := results{
		{"a", 100}: {cpu: []float64{10, 20, 30}},
		{"b", 100}: {cpu: []float64{20, 20, 20}},
	}
	med, lo, hi, ok := ratio(r, "a", "b", 100)
	if !ok || med != 1 || lo != 0.5 || hi != 1.5 {
		t.Errorf("ratio = %v (%v–%v) %v, want 1 (0.5–1.5) true", med, lo, hi, ok)
	}
	if _, _, _, ok := ratio(r, "a", "c", 100); ok {
		t.Error("a ratio against a target that was not measured")
	}
}

func TestAMeasurementNotAllOverHTTP2IsAProblem(t *testing.T) {
	counted := &target{name: "poold-h2", protoCounts: func() (protoCounts, error) { return protoCounts{}, nil }}
	for _, tc := range []struct {
		name string
		t    *target
		c    cell
		want bool // a problem
	}{
		{"all over HTTP/2", counted, cell{ok: 10, seen: protoCounts{HTTP2: 10}}, false},
		{"a retry adds a stream", counted, cell{ok: 10, seen: protoCounts{HTTP2: 11}}, false},
		{"one over HTTP/1.1", counted, cell{ok: 10, seen: protoCounts{HTTP2: 9, Older: 1}}, true},
		{"fewer counted than answered", counted, cell{ok: 10, seen: protoCounts{HTTP2: 9}}, true},
		{"a target whose upstream counts nothing", &target{name: "poold"}, cell{ok: 10}, false},
	} {
		if err := tc.c.protocolProblem(tc.t); (err != nil) != tc.want {
			t.Errorf("%s: protocolProblem = %v, want a problem: %v", tc.name, err, tc.want)
		}
		r := results{{tc.t.name, 100}: &tc.c}
		if errs := r.problems([]*target{tc.t}, []int{100}); (len(errs) > 0) != tc.want {
			t.Errorf("%s: problems = %v, want some: %v", tc.name, errs, tc.want)
		}
	}
}
