package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/poold/poold/server"
)

// run is the whole daemon: parse the configuration, listen, serve until ctx
// ends, then shut down gracefully. It returns nil after a clean shutdown.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cfg, err := parseConfig(args, getenv, stdout, stderr)
	if err != nil {
		return err
	}
	logger := newLogger(cfg, stderr)
	d, err := newDaemon(cfg, logger)
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
	cfg     *config
	logger  *slog.Logger
	grpc    *server.Server
	grpcLis net.Listener
	httpLis net.Listener
	http    *http.Server
}

// newDaemon builds the servers and opens both listeners, so that a port
// already in use fails before anything is reported ready.
func newDaemon(cfg *config, logger *slog.Logger) (*daemon, error) {
	registry := prometheus.NewRegistry()
	registry.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	srv, err := server.New(server.Config{
		Logger:         logger,
		Registerer:     registry,
		MaxRecvMsgSize: int(cfg.maxRecvMsgSize),
		MaxSendMsgSize: int(cfg.maxSendMsgSize),
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
		return nil, err
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
	d := &daemon{cfg: cfg, logger: logger, grpc: srv, grpcLis: grpcLis, httpLis: httpLis}
	d.http = &http.Server{
		Handler:           d.httpHandler(registry),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
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
// NOT_SERVING, gRPC drains under the grace period, and the HTTP endpoint
// closes last so that scrapes see the drain.
func (d *daemon) serve(ctx context.Context) error {
	errc := make(chan error, 2)
	go func() { errc <- d.grpc.GRPC.Serve(d.grpcLis) }()
	go func() {
		if err := d.http.Serve(d.httpLis); !errors.Is(err, http.ErrServerClosed) {
			errc <- err
			return
		}
		errc <- nil
	}()
	d.grpc.SetServing()
	d.logger.Info("poold listening", "grpc", d.grpcLis.Addr().String(), "http", d.httpLis.Addr().String())

	var serveErr error
	select {
	case <-ctx.Done():
		d.logger.Info("shutting down", "grace", d.cfg.shutdownGrace)
	case serveErr = <-errc:
		d.logger.Error("server failed", "err", serveErr)
	}

	start := time.Now()
	d.grpc.Stop(d.cfg.shutdownGrace)
	httpCtx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := d.http.Shutdown(httpCtx); err != nil {
		d.http.Close()
	}
	d.logger.Info("stopped", "took", time.Since(start).Round(time.Millisecond))
	if serveErr != nil {
		return fmt.Errorf("serving: %w", serveErr)
	}
	return nil
}
