package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// Target names, in the order they are measured by default.
const (
	targetPoold       = "poold"
	targetPooldStream = "poold-stream"
	targetHopNetHTTP  = "hop-nethttp"
	targetHopFastHTTP = "hop-fasthttp"
	targetNginx       = "nginx"
	// The same unary poold and net/http hop, to an upstream serving
	// HTTP/2 over TLS.
	targetPooldH2      = "poold-h2"
	targetHopNetHTTPH2 = "hop-nethttp-h2"
)

// knownTargets is every target the benchmark can run.
var knownTargets = []string{targetPoold, targetPooldStream, targetHopNetHTTP, targetHopFastHTTP, targetNginx, targetPooldH2, targetHopNetHTTPH2}

// usesTLSUpstream tells the targets that fetch from the HTTP/2 upstream.
func usesTLSUpstream(name string) bool {
	return name == targetPooldH2 || name == targetHopNetHTTPH2
}

// target is one process under test and the way load is put on it.
type target struct {
	name string
	// pids returns the processes whose CPU time is the target's.
	pids func() ([]int, error)
	// open prepares the clients for one measurement at one body size.
	open func(ctx context.Context, size int) (driver, error)
	proc *child
	// protoCounts, if set, reads the upstream's count of the requests it
	// answered over HTTP/2 and over older versions, so that a measurement
	// can prove which protocol carried it.
	protoCounts func() (protoCounts, error)
	// baseline is the target a variant is compared with; "" for the
	// built-in targets.
	baseline string
}

// startAttempts is how often a program given a picked port is started
// before giving up: the port can be taken between picking and binding.
const startAttempts = 3

// readyTimeout bounds the wait for one process to start serving.
const readyTimeout = 15 * time.Second

// startUpstream starts the origin server and returns its base URL.
func startUpstream(ctx context.Context, cs *children, cfg *config) (string, error) {
	_, addr, err := cs.startAnnounced(ctx, "upstream", cfg.upstreamBin, "--listen=127.0.0.1:0")
	if err != nil {
		return "", err
	}
	return "http://" + addr, nil
}

// startHop starts one of the gRPC hops and returns its address.
func startHop(ctx context.Context, cs *children, name, bin string, extra ...string) (*child, string, error) {
	return cs.startAnnounced(ctx, name, bin, append([]string{"--listen=127.0.0.1:0"}, extra...)...)
}

// startPoold starts a poold and returns its gRPC address once /readyz
// answers 200.
func startPoold(ctx context.Context, cs *children, cfg *config, name, bin string, extra []string) (*child, string, error) {
	if bin == "" {
		bin = cfg.pooldBin
	}
	var lastErr error
	for range startAttempts {
		grpcPort, err := freePort()
		if err != nil {
			return nil, "", err
		}
		httpPort, err := freePort()
		if err != nil {
			return nil, "", err
		}
		grpcAddr := "127.0.0.1:" + strconv.Itoa(grpcPort)
		httpAddr := "127.0.0.1:" + strconv.Itoa(httpPort)
		args := append([]string{
			"--listen=" + grpcAddr,
			"--http-listen=" + httpAddr,
			"--egress-allow=127.0.0.1/32",
			"--log-level=warn",
		}, cfg.pooldArgs...)
		args = append(args, extra...)
		c, err := cs.start(name, nil, bin, args...)
		if err != nil {
			return nil, "", err
		}
		err = waitReady(ctx, c, readyTimeout, func() error { return httpOK("http://" + httpAddr + "/readyz") })
		if err == nil {
			return c, grpcAddr, nil
		}
		c.stop()
		lastErr = err
		if ctx.Err() != nil {
			break
		}
	}
	return nil, "", lastErr
}

// startNginx writes a reverse-proxy config in front of the upstream and
// starts nginx on it, returning its base URL once a proxied request
// succeeds.
func startNginx(ctx context.Context, cs *children, cfg *config, upstream string) (*child, string, error) {
	dir := filepath.Join(cs.dir, "nginx")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, "", err
	}
	var lastErr error
	for range startAttempts {
		port, err := freePort()
		if err != nil {
			return nil, "", err
		}
		conf := filepath.Join(dir, "nginx.conf")
		listen := "127.0.0.1:" + strconv.Itoa(port)
		if err := os.WriteFile(conf, []byte(nginxConfig(dir, listen, upstream, os.Geteuid() == 0)), 0o644); err != nil {
			return nil, "", err
		}
		c, err := cs.start("nginx", nil, cfg.nginxBin, "-p", dir, "-c", conf, "-e", filepath.Join(dir, "error.log"))
		if err != nil {
			return nil, "", err
		}
		base := "http://" + listen
		err = waitReady(ctx, c, readyTimeout, func() error { return httpOK(base + "/bytes/1") })
		if err == nil {
			return c, base, nil
		}
		c.stop()
		lastErr = fmt.Errorf("%w%s", err, fileTail(filepath.Join(dir, "error.log")))
		if ctx.Err() != nil {
			break
		}
	}
	return nil, "", lastErr
}

// httpOK GETs url and succeeds on a 200.
func httpOK(url string) error {
	client := http.Client{Timeout: time.Second}
	resp, err := client.Get(url)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return nil
}

// fileTail returns the end of a log file for an error message.
func fileTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil || len(b) == 0 {
		return ""
	}
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return "\n--- " + path + " ---\n" + string(b)
}

// startTargets starts every requested target. A target that fails to start
// is reported and left out, so the others are still measured; the run then
// exits non-zero.
func startTargets(ctx context.Context, cs *children, cfg *config, upstream string, tlsUp *tlsUpstream) ([]*target, []error) {
	var targets []*target
	var errs []error
	for _, name := range cfg.targets {
		t, err := startTarget(ctx, cs, cfg, name, upstream, tlsUp)
		if err != nil {
			errs = append(errs, fmt.Errorf("target %s did not start: %w", name, err))
			if ctx.Err() != nil {
				break
			}
			continue
		}
		targets = append(targets, t)
	}
	for _, v := range cfg.variants {
		args, up := v.args, upstream
		if v.h2 {
			if tlsUp == nil {
				errs = append(errs, fmt.Errorf("variant %s: the HTTP/2 upstream is not running", v.name))
				continue
			}
			args, up = append(tlsUp.pooldArgs(), args...), tlsUp.base
		}
		c, addr, err := startPoold(ctx, cs, cfg, v.name, v.bin, args)
		if err != nil {
			errs = append(errs, fmt.Errorf("variant %s did not start: %w", v.name, err))
			if ctx.Err() != nil {
				break
			}
			continue
		}
		t := &target{name: v.name, baseline: targetPoold}
		switch {
		case v.stream:
			t.baseline = targetPooldStream
		case v.h2:
			t.baseline = targetPooldH2
			t.protoCounts = tlsUp.counts
		}
		grpcTarget(t, cfg, c, addr, up, v.stream)
		targets = append(targets, t)
	}
	return targets, errs
}

// grpcTarget wires t to a gRPC server at addr that implements HTTPService.
func grpcTarget(t *target, cfg *config, c *child, addr, upstream string, stream bool) {
	t.proc = c
	t.pids = func() ([]int, error) { return []int{c.cmd.Process.Pid}, nil }
	t.open = func(ctx context.Context, size int) (driver, error) {
		url := fmt.Sprintf("%s/bytes/%d", upstream, size)
		if stream {
			return openPipeline(ctx, addr, cfg.conns, cfg.callers, url, size)
		}
		return openUnary(ctx, addr, cfg.conns, cfg.callers, url, size)
	}
}

// startTarget starts one target's process and wires up its load driver.
func startTarget(ctx context.Context, cs *children, cfg *config, name, upstream string, tlsUp *tlsUpstream) (*target, error) {
	t := &target{name: name}
	if usesTLSUpstream(name) && tlsUp == nil {
		return nil, errors.New("the HTTP/2 upstream is not running")
	}
	switch name {
	case targetPoold, targetPooldStream:
		c, addr, err := startPoold(ctx, cs, cfg, name, "", nil)
		if err != nil {
			return nil, err
		}
		grpcTarget(t, cfg, c, addr, upstream, name == targetPooldStream)
	case targetHopNetHTTP, targetHopFastHTTP:
		bin := cfg.hopNetHTTPBin
		if name == targetHopFastHTTP {
			bin = cfg.hopFastHTTPBin
		}
		c, addr, err := startHop(ctx, cs, name, bin)
		if err != nil {
			return nil, err
		}
		grpcTarget(t, cfg, c, addr, upstream, false)
	case targetNginx:
		c, base, err := startNginx(ctx, cs, cfg, upstream)
		if err != nil {
			return nil, err
		}
		t.proc = c
		// The workers are looked up per measurement: nginx respawns one
		// that dies, and its CPU then belongs to a new pid.
		t.pids = func() ([]int, error) { return processTree(c.cmd.Process.Pid) }
		t.open = func(ctx context.Context, size int) (driver, error) {
			return openHTTP(fmt.Sprintf("%s/bytes/%d", base, size), cfg.callers, size), nil
		}
	case targetPooldH2:
		c, addr, err := startPoold(ctx, cs, cfg, name, "", tlsUp.pooldArgs())
		if err != nil {
			return nil, err
		}
		grpcTarget(t, cfg, c, addr, tlsUp.base, false)
		t.protoCounts = tlsUp.counts
	case targetHopNetHTTPH2:
		c, addr, err := startHop(ctx, cs, name, cfg.hopNetHTTPBin, "--ca-file="+tlsUp.caFile)
		if err != nil {
			return nil, err
		}
		grpcTarget(t, cfg, c, addr, tlsUp.base, false)
		t.protoCounts = tlsUp.counts
	default:
		return nil, fmt.Errorf("unknown target %q (known: %v)", name, knownTargets)
	}
	return t, nil
}
