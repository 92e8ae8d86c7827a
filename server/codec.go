package server

import (
	pooldv1 "github.com/poold/poold/gen/poold/v1"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	// The registration of the "proto" codec, taken as the fallback.
	_ "google.golang.org/grpc/encoding/proto"
)

// vtMessage is what protoc-gen-go-vtproto generates for poold's own
// messages: marshalling code per message instead of protobuf's walk over
// the message's reflection tables: 4-17% less of the daemon's CPU per
// request, by target (BENCHMARKS.md).
type vtMessage interface {
	SizeVT() int
	MarshalToSizedBufferVT(dAtA []byte) (int, error)
	UnmarshalVT(dAtA []byte) error
}

// vtCodec is the server's gRPC codec. Messages of other packages (health,
// reflection) take grpc-go's own proto codec. Like that codec it draws
// buffers above grpc-go's pooling threshold from grpc-go's pool.
type vtCodec struct {
	fallback encoding.CodecV2
}

func newVTCodec() vtCodec {
	return vtCodec{fallback: encoding.GetCodecV2("proto")}
}

// Marshal implements encoding.CodecV2.
func (c vtCodec) Marshal(v any) (mem.BufferSlice, error) {
	m, ok := v.(vtMessage)
	if !ok {
		return c.fallback.Marshal(v)
	}
	size := m.SizeVT()
	if mem.IsBelowBufferPoolingThreshold(size) {
		buf := make([]byte, size)
		if _, err := m.MarshalToSizedBufferVT(buf); err != nil {
			return nil, err
		}
		return mem.BufferSlice{mem.SliceBuffer(buf)}, nil
	}
	pool := mem.DefaultBufferPool()
	buf := pool.Get(size) // of length size, as MarshalToSizedBufferVT needs
	if _, err := m.MarshalToSizedBufferVT(*buf); err != nil {
		pool.Put(buf)
		return nil, err
	}
	return mem.BufferSlice{mem.NewBuffer(buf, pool)}, nil
}

// Unmarshal implements encoding.CodecV2. Unlike protobuf, the generated
// code does not check that strings are UTF-8, so it reads only the
// requests of HTTPService, whose strings the request converter checks
// field by field (request.go); every other message takes protobuf's codec
// and its check. The generated code copies every bytes and string field
// out of data, so the buffer can go back to the pool at once.
func (c vtCodec) Unmarshal(data mem.BufferSlice, v any) error {
	var m vtMessage
	switch v := v.(type) {
	case *pooldv1.DoRequest:
		m = v
	case *pooldv1.StreamRequest:
		m = v
	case *pooldv1.PipelineRequest:
		m = v
	default:
		return c.fallback.Unmarshal(data, v)
	}
	buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
	defer buf.Free()
	return m.UnmarshalVT(buf.ReadOnlyData())
}

// Name implements encoding.CodecV2: the content subtype gRPC callers send.
func (vtCodec) Name() string { return "proto" }
