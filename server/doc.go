// Package server exposes poold's transport engine over gRPC.
//
// It translates between the poold.v1 protobuf contract and the plain Go values
// of package pool, maps engine errors to gRPC status codes with an ErrorInfo
// reason, and assembles the gRPC server: interceptors (metrics, logging,
// recovery), grpc.health.v1 and server reflection, and, given a tracer
// provider, OpenTelemetry spans for each call and the phases of its upstream
// request. It holds no pool logic.
//
//	store, err := server.OpenPolicyStore("policies.json", engine.SetPolicies, time.Now)
//	srv, err := server.New(server.Config{Engine: engine, Policies: store, Logger: logger})
//	defer srv.Stop(10 * time.Second)
//	go srv.GRPC.Serve(lis)
//	srv.SetServing()
//
// Policies and egress rule sets are kept by a PolicyStore over a Backend:
// a policy file (OpenPolicyStore) for one process, or etcd for replicas
// that share them, each watching what the others write:
//
//	backend, err := server.OpenEtcdBackend(server.EtcdConfig{Endpoints: endpoints, Prefix: "/poold"})
//	store, err := server.NewPolicyStore(backend, server.StoreOptions{Apply: engine.SetPolicies, SkipBadValues: true, RetryLoad: true})
//	<-store.Ready() // the first full read is applied
//	defer store.Close()
package server
