package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"runtime/debug"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	"github.com/poold/poold/dialer"
	pooldv1 "github.com/poold/poold/gen/poold/v1"
	"github.com/poold/poold/pool"
)

// Config is what the gRPC server is built from.
type Config struct {
	// Engine runs the HTTP requests and answers PoolService. Required.
	Engine *pool.Engine
	// Policies backs PolicyService; its changes go to Engine. Required.
	Policies *PolicyStore
	// MaxBodySize bounds the upstream response body Do returns, in bytes.
	// 0 means DefaultMaxBodySize.
	MaxBodySize int64
	// Logger receives failed calls (at a level by code), every recovered
	// panic, and with AccessLog one line per call.
	Logger *slog.Logger
	// AccessLog logs every call when it ends, not only failed ones.
	AccessLog bool
	// Registerer receives the gRPC server metrics. Nil registers nothing.
	Registerer prometheus.Registerer
	// MaxRecvMsgSize bounds one received message in bytes, and so the body of
	// a Do request. 0 means grpc-go's 4 MiB.
	MaxRecvMsgSize int
	// MaxSendMsgSize bounds one sent message in bytes, and so the body of a
	// Do response. 0 means grpc-go's default (no limit).
	MaxSendMsgSize int
	// Keepalive is what the server sends and enforces on caller connections.
	Keepalive Keepalive
	// MaxConcurrentStreams caps RPCs in flight on one caller connection.
	// 0 means grpc-go's default.
	MaxConcurrentStreams uint32
	// MaxInFlight caps upstream requests running at once across all
	// callers (Do and Stream calls, and each request of a Pipeline); one
	// more fails at once with RESOURCE_EXHAUSTED. 0 = no cap.
	MaxInFlight int
	// PipelineDepth caps the requests one Pipeline call runs at once. 0
	// means DefaultPipelineDepth.
	PipelineDepth int
	// RevealErrorDetail tells callers the whole cause of a failure, resolved
	// addresses and egress rules included; see HTTPOptions.
	RevealErrorDetail bool
	// MaxBufferedBytes bounds the response bodies Do and Pipeline hold at
	// once; see HTTPOptions.
	MaxBufferedBytes int64
	// Egress, when set, turns on egress rule sets per caller
	// (EgressService): Default is the default rule set until one is saved
	// over the API, and SelfAddrs are poold's listeners, denied under
	// every rule set. Without it the engine's dialer rules apply to all.
	Egress *EgressOptions
	// Transport tunes the HTTP/2 server under the gRPC services.
	Transport Transport
	// AdminTokens, when set, guard PoolService and PolicyService.
	AdminTokens *TokenFile
	// ClientTokens, when set, guard HTTPService.
	ClientTokens *TokenFile
	// TLS, when set, serves the gRPC listener over TLS (mTLS with a client
	// CA).
	TLS *ListenerTLS
	// TracerProvider, when set, traces every call but health checks and
	// reflection: a server span continuing the caller's W3C trace context,
	// and for HTTPService the phases of the upstream request as child
	// spans (see callTracer). nil traces nothing, and calls pay nothing
	// for it.
	TracerProvider trace.TracerProvider
}

// Service names, for interceptors that apply to some services only.
var (
	httpServiceName   = pooldv1.HTTPService_ServiceDesc.ServiceName
	adminServiceNames = map[string]bool{
		pooldv1.PoolService_ServiceDesc.ServiceName:   true,
		pooldv1.PolicyService_ServiceDesc.ServiceName: true,
		pooldv1.EgressService_ServiceDesc.ServiceName: true,
	}
)

// Keepalive configures gRPC keep-alive on caller connections.
type Keepalive struct {
	// MinPingInterval is the shortest interval between a caller's pings;
	// pinging more often gets the connection closed (GOAWAY "too_many_pings").
	MinPingInterval time.Duration
	// PermitWithoutStream allows caller pings while no RPC is in flight.
	PermitWithoutStream bool
	// MaxConnectionIdle closes a caller connection idle this long. 0 = never.
	MaxConnectionIdle time.Duration
	// MaxConnectionAge closes a caller connection this old, after a grace of
	// MaxConnectionAgeGrace for its RPCs to finish. 0 = never.
	MaxConnectionAge      time.Duration
	MaxConnectionAgeGrace time.Duration
	// Time is how long a connection may be silent before the server pings it;
	// Timeout is how long the server waits for the ping's answer.
	Time, Timeout time.Duration
}

// EgressOptions configure egress rule sets; see Config.Egress.
type EgressOptions struct {
	Default   dialer.EgressConfig
	SelfAddrs []netip.AddrPort
}

// Server is poold's gRPC server with its health service.
type Server struct {
	// GRPC serves every poold.v1 service, health and reflection.
	GRPC *grpc.Server
	// Health reports SERVING once the daemon is up and NOT_SERVING while it
	// shuts down.
	Health *health.Server

	watches *watchEnder
	http    *HTTPServer
}

// New builds the gRPC server. Health starts NOT_SERVING: the caller flips it
// once its listeners are up.
func New(cfg Config) (*Server, error) {
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	metrics := newGRPCMetrics()
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(metrics); err != nil {
			return nil, fmt.Errorf("server: registering gRPC metrics: %w", err)
		}
	}
	reasons, err := newReasonCounter(cfg.Registerer, logger)
	if err != nil {
		return nil, fmt.Errorf("server: registering failure metrics: %w", err)
	}
	observer := &callObserver{metrics: metrics, reasons: reasons, logger: logger, quiet: cfg.AccessLog}
	recoverOpts := []recovery.Option{recovery.WithRecoveryHandlerContext(func(ctx context.Context, p any) error {
		logger.ErrorContext(ctx, "panic serving RPC", "panic", p, "stack", string(debug.Stack()))
		return status.Error(codes.Internal, "internal error")
	})}

	// The observer first so that it sees every outcome, then the access
	// log when asked for, then auth, and recovery last so that a panic
	// becomes INTERNAL before the others record it. The in-flight cap is
	// applied by HTTPService itself, after auth (a rejected caller takes no
	// slot), because a Pipeline call takes one slot per request. Each layer
	// costs every call a little, so only what the configuration asks for is
	// chained.
	unary := []grpc.UnaryServerInterceptor{observer.unary}
	stream := []grpc.StreamServerInterceptor{observer.stream}
	if cfg.AccessLog {
		logOpts := []logging.Option{logging.WithLogOnEvents(logging.FinishCall)}
		unary = append(unary, logging.UnaryServerInterceptor(slogAdapter(logger), logOpts...))
		stream = append(stream, logging.StreamServerInterceptor(slogAdapter(logger), logOpts...))
	}
	authUnary, authStream := authInterceptors(
		authRule{services: adminServiceNames, tokens: cfg.AdminTokens},
		authRule{services: map[string]bool{httpServiceName: true}, tokens: cfg.ClientTokens},
	)
	unary, stream = append(unary, authUnary...), append(stream, authStream...)
	unary = append(unary, recovery.UnaryServerInterceptor(recoverOpts...))
	stream = append(stream, recovery.StreamServerInterceptor(recoverOpts...))
	watches := newWatchEnder()
	stream = append(stream, watches.intercept)

	opts := []grpc.ServerOption{
		grpc.ForceServerCodecV2(newVTCodec()),
		grpc.ChainUnaryInterceptor(unary...),
		grpc.ChainStreamInterceptor(stream...),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime:             cfg.Keepalive.MinPingInterval,
			PermitWithoutStream: cfg.Keepalive.PermitWithoutStream,
		}),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			MaxConnectionIdle:     cfg.Keepalive.MaxConnectionIdle,
			MaxConnectionAge:      cfg.Keepalive.MaxConnectionAge,
			MaxConnectionAgeGrace: cfg.Keepalive.MaxConnectionAgeGrace,
			Time:                  cfg.Keepalive.Time,
			Timeout:               cfg.Keepalive.Timeout,
		}),
	}
	if cfg.MaxConcurrentStreams > 0 {
		opts = append(opts, grpc.MaxConcurrentStreams(cfg.MaxConcurrentStreams))
	}
	if cfg.TLS != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(cfg.TLS.Config())))
	}
	if cfg.MaxRecvMsgSize > 0 {
		opts = append(opts, grpc.MaxRecvMsgSize(cfg.MaxRecvMsgSize))
	}
	if cfg.MaxSendMsgSize > 0 {
		opts = append(opts, grpc.MaxSendMsgSize(cfg.MaxSendMsgSize))
	}
	opts = append(opts, cfg.Transport.options()...)
	opts = append(opts, tracingServerOptions(cfg.TracerProvider)...)
	s := grpc.NewServer(opts...)

	if cfg.Engine == nil || cfg.Policies == nil {
		return nil, errors.New("server: Config.Engine and Config.Policies are required")
	}
	httpServer := NewHTTPServer(cfg.Engine, HTTPOptions{
		MaxBodySize:       cfg.MaxBodySize,
		MaxInFlight:       cfg.MaxInFlight,
		PipelineDepth:     cfg.PipelineDepth,
		RevealErrorDetail: cfg.RevealErrorDetail,
		MaxBufferedBytes:  cfg.MaxBufferedBytes,
		failures:          reasons,
		tracing:           newCallTracer(cfg.TracerProvider, cfg.Engine),
	})
	if cfg.Egress != nil {
		registry := newEgressRegistry(cfg.Egress.SelfAddrs)
		if err := cfg.Policies.UseEgress(EgressRuleSetFrom(cfg.Egress.Default), registry.apply); err != nil {
			return nil, fmt.Errorf("server: egress rule sets: %w", err)
		}
		httpServer.egress = registry
		pooldv1.RegisterEgressServiceServer(s, NewEgressServer(cfg.Policies))
	}
	pooldv1.RegisterHTTPServiceServer(s, httpServer)
	pooldv1.RegisterPoolServiceServer(s, NewPoolServer(cfg.Engine))
	pooldv1.RegisterPolicyServiceServer(s, NewPolicyServer(cfg.Policies))

	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	healthpb.RegisterHealthServer(s, hs)
	if err := registerReflection(s); err != nil {
		return nil, err
	}
	metrics.init(s)
	return &Server{GRPC: s, Health: hs, watches: watches, http: httpServer}, nil
}

// SetServing marks every service SERVING.
func (s *Server) SetServing() {
	s.Health.Resume()
	s.Health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
}

// slogAdapter lets go-grpc-middleware's logging interceptor write to slog.
func slogAdapter(l *slog.Logger) logging.Logger {
	return logging.LoggerFunc(func(ctx context.Context, lvl logging.Level, msg string, fields ...any) {
		l.Log(ctx, slog.Level(lvl), msg, fields...)
	})
}
