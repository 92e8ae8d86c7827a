package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/poold/poold/dialer"
	"github.com/poold/poold/pool"
	"github.com/poold/poold/server"
)

// run is the whole daemon: parse the configuration, listen, serve until ctx
// ends, then shut down gracefully. It returns nil after a clean shutdown.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cfg, err := parseConfig(args, getenv, stdout, stderr)
	if err != nil {
		return err
	}
	setGCPercent(cfg.gcPercent, getenv)
	setMemoryLimit(int64(cfg.maxBuffered), getenv)
	logger := newLogger(cfg, stderr)
	d, err := newDaemon(cfg, logger)
	var uerr *usageError
	if errors.As(err, &uerr) {
		fmt.Fprintf(stderr, "poold: %v\n", err)
	}
	if err != nil {
		return err
	}
	return d.serve(ctx)
}

func newLogger(cfg *config, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.logLevel}
	if cfg.logFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// daemon owns the listeners and servers of one poold process.
type daemon struct {
	cfg      *config
	engine   *pool.Engine
	policies *server.PolicyStore
	logger   *slog.Logger
	grpc     *server.Server
	grpcLis  net.Listener
	httpLis  net.Listener
	http     *http.Server
	// debugLis and debug serve pprof; nil without --debug-listen.
	debugLis net.Listener
	debug    *http.Server
	// apiLis and api serve the HTTP/JSON API; nil without --http-api-listen.
	apiLis net.Listener
	api    *http.Server

	tokenFiles []*server.TokenFile // reread on SIGHUP and when they change

	// traces is where spans go; nil when poold does not trace.
	traces *sdktrace.TracerProvider
}

// newDaemon builds the servers and opens both listeners, so that a port
// already in use fails before anything is reported ready.
func newDaemon(cfg *config, logger *slog.Logger) (*daemon, error) {
	registry := prometheus.NewRegistry()
	registry.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	tlsConfig, err := dialer.NewTLSConfig(cfg.upstreamCAFile)
	if err != nil {
		return nil, &usageError{msg: fmt.Sprintf("--upstream-ca-file: %v", err)}
	}
	grpcLis, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		return nil, fmt.Errorf("--listen %s: %w", cfg.listen, err)
	}
	httpLis, err := net.Listen("tcp", cfg.httpListen)
	if err != nil {
		grpcLis.Close()
		return nil, fmt.Errorf("--http-listen %s: %w", cfg.httpListen, err)
	}
	var debugLis net.Listener
	if cfg.debugListen != "" {
		if debugLis, err = net.Listen("tcp", cfg.debugListen); err != nil {
			grpcLis.Close()
			httpLis.Close()
			return nil, fmt.Errorf("--debug-listen %s: %w", cfg.debugListen, err)
		}
	}
	var apiLis net.Listener
	if cfg.httpAPIListen != "" {
		if apiLis, err = net.Listen("tcp", cfg.httpAPIListen); err != nil {
			grpcLis.Close()
			httpLis.Close()
			if debugLis != nil {
				debugLis.Close()
			}
			return nil, fmt.Errorf("--http-api-listen %s: %w", cfg.httpAPIListen, err)
		}
	}
	selfAddrs := []netip.AddrPort{listenAddrPort(grpcLis), listenAddrPort(httpLis)}
	for _, l := range []net.Listener{debugLis, apiLis} {
		if l != nil {
			selfAddrs = append(selfAddrs, listenAddrPort(l))
		}
	}
	closeListeners := func() {
		for _, l := range []net.Listener{grpcLis, httpLis, debugLis, apiLis} {
			if l != nil {
				l.Close()
			}
		}
	}
	// poold must never be pointed at itself: its own listeners are denied
	// whatever the rules say.
	egressFlags := dialer.EgressConfig{
		Allow:        cfg.egressAllow,
		Deny:         cfg.egressDeny,
		DefaultDeny:  cfg.egressDefaultDeny,
		AllowedPorts: cfg.egressPorts,
	}
	withSelf := egressFlags
	withSelf.SelfAddrs = selfAddrs
	// The dialer's own rules are the flags'; every HTTPService request
	// runs under its caller's rule set (EgressService), which starts as
	// the same flags.
	egress, err := dialer.NewEgressRules(withSelf)
	if err != nil {
		closeListeners()
		return nil, &usageError{msg: fmt.Sprintf("--egress-allow/--egress-deny: %v", err)}
	}
	// Go's own resolver, as in the static binary the container ships, so a
	// test run and production resolve names the same way.
	resolver := &net.Resolver{PreferGo: true}
	engine, err := pool.New(pool.Options{
		Dialer:          &dialer.Dialer{TLSConfig: tlsConfig, Resolver: resolver, Egress: egress},
		MaxDialsPerHost: cfg.maxDialsPerHost,
		IdleHostTimeout: idleHostTimeout(cfg.idlePool),
		CountedHosts:    cfg.metricsHosts,
		AfterSweep:      newMemoryReturner().afterSweep,
	})
	if err != nil {
		closeListeners()
		return nil, err
	}
	cleanup := func() {
		engine.Close()
		closeListeners()
	}
	// The store applies the saved policies to the engine before anything
	// is served, so no request runs under the built-in defaults by mistake.
	policies, err := openPolicies(cfg, engine, logger)
	if err != nil {
		cleanup()
		return nil, err
	}
	cleanup = func() {
		policies.Close()
		engine.Close()
		closeListeners()
	}
	registry.MustRegister(server.NewPoolCollector(engine), server.NewPolicyStoreCollector(policies))
	var tokenFiles []*server.TokenFile
	loadTokens := func(flag, path string) (*server.TokenFile, error) {
		if path == "" {
			return nil, nil
		}
		f, err := server.LoadTokenFile(path)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", flag, err)
		}
		tokenFiles = append(tokenFiles, f)
		return f, nil
	}
	adminTokens, err := loadTokens("--admin-token-file", cfg.adminTokenFile)
	if err != nil {
		cleanup()
		return nil, err
	}
	clientTokens, err := loadTokens("--client-token-file", cfg.clientTokenFile)
	if err != nil {
		cleanup()
		return nil, err
	}
	var listenerTLS *server.ListenerTLS
	if cfg.tlsCert != "" {
		if listenerTLS, err = server.NewListenerTLS(cfg.tlsCert, cfg.tlsKey, cfg.clientCA); err != nil {
			cleanup()
			return nil, err
		}
	}
	// The provider goes into the server's config only when there is one: a
	// nil *TracerProvider in the interface would read as tracing on.
	var traces *sdktrace.TracerProvider
	var tracerProvider trace.TracerProvider
	if cfg.tracing {
		if traces, err = newTracerProvider(context.Background(), logger); err != nil {
			cleanup()
			return nil, err
		}
		tracerProvider = traces
		undo := cleanup
		cleanup = func() {
			flushTraces(traces, logger)
			undo()
		}
	}
	srv, err := server.New(server.Config{
		Egress:               &server.EgressOptions{Default: egressFlags, SelfAddrs: selfAddrs},
		AdminTokens:          adminTokens,
		ClientTokens:         clientTokens,
		TLS:                  listenerTLS,
		TracerProvider:       tracerProvider,
		MaxInFlight:          cfg.maxInFlight,
		MaxConcurrentStreams: uint32(cfg.maxStreamsPerConn),
		PipelineDepth:        cfg.maxPipelineDepth,
		AccessLog:            cfg.accessLog,
		RevealErrorDetail:    cfg.trustedCallers,
		Transport: server.Transport{
			StreamWorkers:     uint32(cfg.streamWorkers),
			SharedWriteBuffer: cfg.sharedWriteBuffer,
			StreamWindow:      int32(cfg.streamWindow),
		},
		Engine:           engine,
		Policies:         policies,
		MaxBodySize:      int64(cfg.maxBodySize),
		MaxBufferedBytes: int64(cfg.maxBuffered),
		Logger:           logger,
		Registerer:       registry,
		MaxRecvMsgSize:   int(cfg.maxRecvMsgSize),
		MaxSendMsgSize:   int(cfg.maxSendMsgSize),
		Keepalive: server.Keepalive{
			MinPingInterval:       cfg.keepaliveMinTime,
			PermitWithoutStream:   cfg.keepalivePermitWithoutStream,
			MaxConnectionIdle:     cfg.maxConnectionIdle,
			MaxConnectionAge:      cfg.maxConnectionAge,
			MaxConnectionAgeGrace: cfg.maxConnectionAgeGrace,
			Time:                  cfg.keepaliveTime,
			Timeout:               cfg.keepaliveTimeout,
		},
	})
	if err != nil {
		cleanup()
		return nil, err
	}
	d := &daemon{cfg: cfg, engine: engine, policies: policies, logger: logger, grpc: srv, grpcLis: grpcLis, httpLis: httpLis, tokenFiles: tokenFiles, traces: traces}
	d.http = &http.Server{
		Handler:           d.httpHandler(registry),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	if apiLis != nil {
		h, err := srv.HTTPAPI()
		if err != nil {
			cleanup()
			return nil, err
		}
		d.apiLis = apiLis
		d.api = &http.Server{
			Handler:           h,
			ReadHeaderTimeout: 10 * time.Second,
			ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
		}
	}
	if debugLis != nil {
		d.debugLis = debugLis
		d.debug = &http.Server{
			Handler:           debugHandler(),
			ReadHeaderTimeout: 10 * time.Second,
			ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
		}
	}
	return d, nil
}

// httpHandler serves the operator endpoints: Prometheus metrics, liveness
// (the process answers) and readiness (health is SERVING).
func (d *daemon) httpHandler(registry *prometheus.Registry) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(registry, promhttp.HandlerOpts{Registry: registry}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		resp, err := d.grpc.Health.Check(r.Context(), &healthpb.HealthCheckRequest{})
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			http.Error(w, "not serving", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	return mux
}

// serve runs until ctx ends or a server fails, then shuts down: health goes
// NOT_SERVING, calls are still served for the delay, watch streams end,
// gRPC drains under the grace period, the spans of the calls are flushed,
// and the HTTP endpoint closes last so that scrapes see the drain.
func (d *daemon) serve(ctx context.Context) error {
	errc := make(chan error, 4)
	go func() { errc <- d.grpc.GRPC.Serve(d.grpcLis) }()
	go func() {
		if err := d.http.Serve(d.httpLis); !errors.Is(err, http.ErrServerClosed) {
			errc <- err
			return
		}
		errc <- nil
	}()
	if d.api != nil {
		go func() {
			if err := d.api.Serve(d.apiLis); !errors.Is(err, http.ErrServerClosed) {
				errc <- err
			}
		}()
	}
	if d.debug != nil {
		go func() {
			if err := d.debug.Serve(d.debugLis); !errors.Is(err, http.ErrServerClosed) {
				errc <- err
			}
		}()
	}
	reloadDone := make(chan struct{})
	reloadCtx, stopReload := context.WithCancel(ctx)
	go func() {
		defer close(reloadDone)
		d.reloadTokens(reloadCtx)
	}()
	defer func() {
		stopReload()
		<-reloadDone
	}()
	listening := []any{"grpc", d.grpcLis.Addr().String(), "http", d.httpLis.Addr().String()}
	if d.apiLis != nil {
		listening = append(listening, "http_api", d.apiLis.Addr().String())
	}
	if d.debugLis != nil {
		listening = append(listening, "debug", d.debugLis.Addr().String())
	}
	d.logger.Info("poold listening", listening...)

	// Ready only once the policies are loaded, so that a balancer sends
	// nothing to a replica that would run it under the built-in defaults,
	// unless the operator chose to start stale.
	ready := d.policies.Ready()
	if d.cfg.startStale {
		ready = closedChan
	}
	var serveErr error
	for waiting := true; waiting; {
		select {
		case <-ready:
			d.grpc.SetServing()
			ready = nil
		case <-ctx.Done():
			d.logger.Info("shutting down", "delay", d.cfg.shutdownDelay, "grace", d.cfg.shutdownGrace)
			waiting = false
		case serveErr = <-errc:
			d.logger.Error("server failed", "err", serveErr)
			waiting = false
		}
	}

	start := time.Now()
	d.grpc.Shutdown(d.cfg.shutdownDelay, d.cfg.shutdownGrace)
	if d.api != nil {
		// Its calls were gRPC calls: the drain above has ended them.
		d.api.Close()
	}
	if d.traces != nil {
		// Every call has ended, and with it every span: send what is
		// buffered before the process is gone.
		flushTraces(d.traces, d.logger)
	}
	if err := d.policies.Close(); err != nil {
		d.logger.Warn("closing the policy store", "err", err)
	}
	// Only now that no RPC can use it does the engine close its conns.
	if err := d.engine.Close(); err != nil {
		d.logger.Warn("closing upstream connections", "err", err)
	}
	httpCtx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := d.http.Shutdown(httpCtx); err != nil {
		d.http.Close()
	}
	if d.debug != nil {
		// A CPU profile in progress would hold Shutdown for its whole
		// duration; nothing on this listener is worth waiting for.
		d.debug.Close()
	}
	d.logger.Info("stopped", "took", time.Since(start).Round(time.Millisecond))
	if serveErr != nil {
		return fmt.Errorf("serving: %w", serveErr)
	}
	return nil
}

// reloadTokens rereads the token files on SIGHUP, and every two seconds if
// they changed, until ctx ends. A failed reload keeps the old tokens and is
// logged: locking every caller out over a typo would be worse.
func (d *daemon) reloadTokens(ctx context.Context) {
	if len(d.tokenFiles) == 0 {
		return
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	for {
		var forced bool
		select {
		case <-ctx.Done():
			return
		case <-hup:
			forced = true
		case <-tick.C:
		}
		for _, f := range d.tokenFiles {
			reload := f.ReloadIfChanged
			if forced {
				reload = f.Reload
			}
			if err := reload(); err != nil {
				d.logger.Error("reloading tokens; keeping the previous ones", "file", f.Path(), "err", err)
			}
		}
	}
}

func listenAddrPort(l net.Listener) netip.AddrPort {
	return l.Addr().(*net.TCPAddr).AddrPort()
}

var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// openPolicies opens the store --policy-store or --policy-file names. One
// in etcd opens even while etcd is down: it serves the built-in defaults
// and is not ready until its first full read, and a stored value that
// fails validation is logged and left out rather than keeping every
// replica from starting.
func openPolicies(cfg *config, engine *pool.Engine, logger *slog.Logger) (*server.PolicyStore, error) {
	if cfg.policyStore == nil {
		return server.OpenPolicyStore(cfg.policyFile, engine.SetPolicies, time.Now)
	}
	etcd := server.EtcdConfig{
		Endpoints: cfg.policyStore.endpoints,
		Prefix:    cfg.policyStore.prefix,
		CAFile:    cfg.etcdCAFile,
		CertFile:  cfg.etcdCertFile,
		KeyFile:   cfg.etcdKeyFile,
		Username:  cfg.etcdUsername,
	}
	if cfg.etcdPassFile != "" {
		pw, err := os.ReadFile(cfg.etcdPassFile)
		if err != nil {
			return nil, &usageError{msg: fmt.Sprintf("--etcd-password-file: %v", err)}
		}
		etcd.Password = strings.TrimRight(string(pw), "\r\n")
	}
	backend, err := server.OpenEtcdBackend(etcd)
	if err != nil {
		return nil, &usageError{msg: fmt.Sprintf("--policy-store: %v", err)}
	}
	store, err := server.NewPolicyStore(backend, server.StoreOptions{
		Apply:         engine.SetPolicies,
		Now:           time.Now,
		Logger:        logger,
		SkipBadValues: true,
		RetryLoad:     true,
	})
	if err != nil {
		backend.Close()
		return nil, err
	}
	return store, nil
}
