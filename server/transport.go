package server

import "google.golang.org/grpc"

// Transport tunes grpc-go's HTTP/2 server. poold is a sidecar: its callers
// sit on the same host or close to it, they keep a few connections open and
// send many small calls on each, so the defaults favour CPU per call over
// memory per idle connection. The measured effect of each knob is in
// BENCHMARKS.md.
type Transport struct {
	// StreamWorkers is the number of goroutines kept to run RPCs. A call
	// that finds them all busy still gets a goroutine of its own, so this
	// is no cap; it saves starting a goroutine, and growing its stack, per
	// call. 0 means a fresh goroutine per RPC (grpc-go's default).
	StreamWorkers uint32
	// SharedWriteBuffer releases a connection's write buffer to a shared
	// pool between writes, so an idle caller connection holds none.
	SharedWriteBuffer bool
	// WriteBufferSize and ReadBufferSize are the per-connection buffer sizes
	// in bytes; 0 means grpc-go's default (32 KiB each).
	WriteBufferSize, ReadBufferSize int
	// StreamWindow, when above 0, fixes the HTTP/2 flow-control window of
	// every stream at this many bytes (and a connection's at 16 times it),
	// turning off grpc-go's bandwidth-delay probing and the pings it sends.
	// 0 keeps the probing, which suits callers far away.
	StreamWindow int32
}

// options turns t into grpc-go server options.
func (t Transport) options() []grpc.ServerOption {
	var opts []grpc.ServerOption
	if t.StreamWorkers > 0 {
		opts = append(opts, grpc.NumStreamWorkers(t.StreamWorkers))
	}
	if t.SharedWriteBuffer {
		opts = append(opts, grpc.SharedWriteBuffer(true))
	}
	if t.WriteBufferSize > 0 {
		opts = append(opts, grpc.WriteBufferSize(t.WriteBufferSize))
	}
	if t.ReadBufferSize > 0 {
		opts = append(opts, grpc.ReadBufferSize(t.ReadBufferSize))
	}
	if t.StreamWindow > 0 {
		opts = append(opts, grpc.StaticStreamWindowSize(t.StreamWindow), grpc.StaticConnWindowSize(16*t.StreamWindow))
	}
	return opts
}
