// Package server exposes poold's transport engine over gRPC.
//
// It translates between the poold.v1 protobuf contract and the plain Go values
// of package pool, maps engine errors to gRPC status codes with an ErrorInfo
// reason, and assembles the gRPC server: interceptors (metrics, logging,
// recovery), grpc.health.v1 and server reflection. It holds no pool logic.
//
//	srv := server.New(server.Config{Logger: logger, Registry: registry})
//	defer srv.Stop()
//	go srv.GRPC.Serve(lis)
//	srv.Health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
package server
