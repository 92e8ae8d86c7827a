// Command bench-e2e measures what a request costs the process that relays
// it: poold over unary Do and over a Pipeline stream, two minimal gRPC hops
// (net/http and fasthttp) and nginx as a keep-alive reverse proxy, all in
// front of one upstream in a process of its own, all on loopback. Two more
// targets, poold and the net/http hop, fetch from a second upstream that
// serves HTTP/2 over TLS, which counts the requests it gets by protocol so
// that a run fails unless all of theirs came over HTTP/2.
//
// For each target and body size it runs closed-loop callers for a fixed
// time and reports the CPU time (utime+stime from /proc/PID/stat) the
// target spent per request served, throughput, latency and errors.
// Repetitions are interleaved (every target at every size, then again), so
// that a noisy neighbour or a thermal change hits all targets alike; the
// table gives medians and the spread.
//
// scripts/bench-e2e.sh builds the programs and runs this.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// config is what the command line asks for.
type config struct {
	pooldBin       string
	pooldArgs      []string
	upstreamBin    string
	hopNetHTTPBin  string
	hopFastHTTPBin string
	nginxBin       string

	targets  []string
	variants []variant
	sizes    []int
	reps     int
	duration time.Duration
	warmup   time.Duration
	callers  int
	conns    int
	out      string
	maxTime  time.Duration
}

// variant is one more poold target with extra flags, so that the effect of
// a flag is measured in the same run as the default.
type variant struct {
	name   string
	bin    string // the poold binary; "" for --poold's
	stream bool
	h2     bool // in front of the HTTP/2 upstream, against poold-h2
	args   []string
}

func main() {
	cfg, err := parseFlags(os.Args[1:], os.Stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "bench-e2e:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, cfg.maxTime)
	defer cancel()
	if err := run(ctx, cfg, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "bench-e2e:", err)
		os.Exit(1)
	}
}

// parseFlags reads the command line into a config.
func parseFlags(args []string, stderr io.Writer) (*config, error) {
	fs := flag.NewFlagSet("bench-e2e", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg := &config{}
	fs.StringVar(&cfg.pooldBin, "poold", "", "poold binary (required)")
	pooldArgs := fs.String("poold-args", "", "extra flags for every poold, space-separated")
	fs.StringVar(&cfg.upstreamBin, "upstream", "", "upstream binary (required)")
	fs.StringVar(&cfg.hopNetHTTPBin, "hop-nethttp", "", "net/http hop binary (required for its target)")
	fs.StringVar(&cfg.hopFastHTTPBin, "hop-fasthttp", "", "fasthttp hop binary (required for its target)")
	fs.StringVar(&cfg.nginxBin, "nginx", "nginx", "nginx binary")
	targets := fs.String("targets", strings.Join(knownTargets, ","), "targets to measure, comma-separated")
	fs.Func("variant", "an extra poold target `name[@binary]=flags`, measured beside the others: another binary (a change against its baseline), other flags or both; a name ending in -stream uses Pipeline, one ending in -h2 the HTTP/2 upstream (repeatable)", func(s string) error {
		name, args, ok := strings.Cut(s, "=")
		name, bin, _ := strings.Cut(name, "@")
		if !ok || name == "" {
			return fmt.Errorf("want name[@binary]=flags, got %q", s)
		}
		if slices.Contains(knownTargets, name) || slices.ContainsFunc(cfg.variants, func(v variant) bool { return v.name == name }) {
			return fmt.Errorf("variant name %q is taken", name)
		}
		cfg.variants = append(cfg.variants, variant{name: name, bin: bin, stream: strings.HasSuffix(name, "-stream"), h2: strings.HasSuffix(name, "-h2"), args: strings.Fields(args)})
		return nil
	})
	sizes := fs.String("sizes", "100,16384", "response body sizes in bytes, comma-separated")
	fs.IntVar(&cfg.reps, "reps", 3, "interleaved repetitions")
	fs.DurationVar(&cfg.duration, "duration", 3*time.Second, "measured time per target, size and repetition")
	fs.DurationVar(&cfg.warmup, "warmup", 500*time.Millisecond, "unmeasured load before each measurement")
	fs.IntVar(&cfg.callers, "callers", 64, "closed-loop callers, each with one request outstanding")
	fs.IntVar(&cfg.conns, "conns", 8, "gRPC connections the callers share (one stream each for Pipeline)")
	fs.StringVar(&cfg.out, "out", "", "also write the table to this file")
	short := fs.Bool("short", false, "a quick run that only proves the benchmark works: one repetition, 100 B, 1s")
	fs.DurationVar(&cfg.maxTime, "max-time", 0, "give up after this long (default: twice the planned time plus a minute)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if *short {
		cfg.reps, cfg.duration, cfg.warmup, *sizes = 1, time.Second, 200*time.Millisecond, "100"
	}
	cfg.pooldArgs = strings.Fields(*pooldArgs)
	for _, t := range strings.Split(*targets, ",") {
		if t = strings.TrimSpace(t); t == "" {
			continue
		}
		if !slices.Contains(knownTargets, t) {
			return nil, fmt.Errorf("--targets: unknown target %q (known: %s)", t, strings.Join(knownTargets, ", "))
		}
		cfg.targets = append(cfg.targets, t)
	}
	for _, s := range strings.Split(*sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 0 {
			return nil, fmt.Errorf("--sizes: %q is not a byte count", s)
		}
		cfg.sizes = append(cfg.sizes, n)
	}
	switch {
	case cfg.pooldBin == "":
		return nil, errors.New("--poold is required")
	case cfg.upstreamBin == "":
		return nil, errors.New("--upstream is required")
	case slices.Contains(cfg.targets, targetHopNetHTTP) && cfg.hopNetHTTPBin == "":
		return nil, errors.New("--hop-nethttp is required for target " + targetHopNetHTTP)
	case slices.Contains(cfg.targets, targetHopNetHTTPH2) && cfg.hopNetHTTPBin == "":
		return nil, errors.New("--hop-nethttp is required for target " + targetHopNetHTTPH2)
	case slices.Contains(cfg.targets, targetHopFastHTTP) && cfg.hopFastHTTPBin == "":
		return nil, errors.New("--hop-fasthttp is required for target " + targetHopFastHTTP)
	case len(cfg.targets)+len(cfg.variants) == 0:
		return nil, errors.New("--targets: nothing to measure")
	case len(cfg.sizes) == 0:
		return nil, errors.New("--sizes: no size given")
	case cfg.reps < 1:
		return nil, errors.New("--reps: must be at least 1")
	case cfg.duration <= 0:
		return nil, errors.New("--duration: must be positive")
	case cfg.warmup < 0:
		return nil, errors.New("--warmup: must not be negative")
	case cfg.callers < 1:
		return nil, errors.New("--callers: must be at least 1")
	case cfg.conns < 1 || cfg.conns > cfg.callers:
		return nil, errors.New("--conns: must be between 1 and --callers")
	}
	if cfg.maxTime <= 0 {
		planned := time.Duration(cfg.reps*len(cfg.sizes)*(len(cfg.targets)+len(cfg.variants))) * (cfg.duration + cfg.warmup)
		cfg.maxTime = 2*planned + time.Minute
	}
	return cfg, nil
}

// run starts every process, measures, prints the table and stops them all.
func run(ctx context.Context, cfg *config, stdout, stderr io.Writer) error {
	dir, err := os.MkdirTemp("", "bench-e2e-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	cs := &children{dir: dir}
	defer cs.stopAll()

	upstream, err := startUpstream(ctx, cs, cfg)
	if err != nil {
		return fmt.Errorf("upstream did not start: %w", err)
	}
	// The HTTP/2 upstream runs only for the targets that use it; if it
	// fails, they fail to start and the others are still measured.
	var tlsUp *tlsUpstream
	var errs []error
	if slices.ContainsFunc(cfg.targets, usesTLSUpstream) || slices.ContainsFunc(cfg.variants, func(v variant) bool { return v.h2 }) {
		if tlsUp, err = startTLSUpstream(ctx, cs, cfg); err != nil {
			errs = append(errs, fmt.Errorf("HTTP/2 upstream did not start: %w", err))
		}
	}
	targets, targetErrs := startTargets(ctx, cs, cfg, upstream, tlsUp)
	errs = append(errs, targetErrs...)
	if len(targets) == 0 {
		return errors.Join(append(errs, errors.New("no target started"))...)
	}
	for _, err := range errs {
		fmt.Fprintln(stderr, "bench-e2e:", err)
	}
	fmt.Fprintf(stderr, "bench-e2e: %d targets × %d sizes × %d reps, %v each after %v warm-up, %d callers on %d conns\n",
		len(targets), len(cfg.sizes), cfg.reps, cfg.duration, cfg.warmup, cfg.callers, cfg.conns)

	results, err := measureAll(ctx, cfg, targets, stderr)
	if err != nil {
		return err
	}
	var b strings.Builder
	writeReport(&b, cfg, targets, results)
	fmt.Fprint(stdout, b.String())
	if cfg.out != "" {
		if err := os.WriteFile(cfg.out, []byte(b.String()), 0o644); err != nil {
			return err
		}
	}
	return errors.Join(append(errs, results.problems(targets, cfg.sizes)...)...)
}
