package server

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"

	pooldv1 "github.com/poold/poold/gen/poold/v1"
	"github.com/poold/poold/pool"
)

// streamChunkSize is the most response body one StreamResponse carries:
// 32 KiB, the contract's bound, less the few bytes of protobuf framing, so
// that the encoded message still fits grpc-go's 32 KiB buffer class. At a
// full 32 KiB every message would take a buffer from the 1 MiB class.
const streamChunkSize = 32<<10 - 8

// errBodyNotReplayable stops a redirect that would have to resend a Stream
// body: its chunks went upstream as they arrived and are gone.
var errBodyNotReplayable = errors.New("stream request body cannot be sent again")

// Stream sends one request whose body arrives in chunks and returns the
// response as a head, body chunks and an end message. Neither body is held
// in memory: request chunks are written upstream as they are received, and
// response chunks are sent as they are read, so gRPC's flow control is the
// only buffer in either direction.
//
// Redirects are followed as in Do, except that a Stream body cannot be sent
// twice: a redirect that must resend a non-empty body (a 307 or 308, or a
// 301 or 302 to anything but POST) is returned as it is. A redirect to a GET
// without a body (303, or 301 and 302 after a POST) is followed.
//
// A request without a body should say so with Content-Length: 0, or
// half-close right after the head: for a GET with a body of unknown length
// net/http waits up to 200ms for a first byte before deciding it has none.
func (s *HTTPServer) Stream(stream pooldv1.HTTPService_StreamServer) error {
	if err := s.limit.acquire(); err != nil {
		return err
	}
	defer s.limit.release()
	first, err := stream.Recv()
	if errors.Is(err, io.EOF) {
		return invalidArgument(fieldViolation{Field: "head", Reason: "is required: the first message must carry the request head"})
	}
	if err != nil {
		// The caller went away; gRPC already made this a status.
		return err
	}
	head := first.GetHead()
	if head == nil {
		return invalidArgument(fieldViolation{Field: "head", Reason: "the first message must carry the request head, not a body chunk"})
	}
	c := requestConverter{prefix: "head."}
	req, declared := c.convert(stream.Context(), head, true)
	if len(c.violations) > 0 {
		return invalidArgument(c.violations...)
	}

	// The request context is the stream's: a caller that cancels or goes
	// away aborts the upstream request.
	ctx, cancel := requestContext(stream.Context(), head.GetTimeout())
	if cancel != nil {
		defer cancel()
	}
	if sc := s.egress.scopeFor(ctx); sc != nil {
		ctx = pool.WithEgressScope(ctx, sc)
	}
	req = req.WithContext(ctx)
	if s.tracing != nil {
		s.tracing.request(ctx, req, false)
	}
	body := newStreamBody(declared)
	body.attach(req)
	// The receiving goroutine belongs to this call. It ends when the
	// caller half-closes, or, at the latest, when the call ends and Recv
	// fails; closing the body here unblocks it if it is handing a chunk to
	// an engine that stopped reading.
	go body.receive(stream)
	defer body.Close()

	resp, redirects, err := sendFollowingRedirects(s.rt, req, int(head.GetMaxRedirects()))
	if err != nil {
		return body.failureOr(s.requestError(ctx, req, err))
	}
	if s.tracing != nil {
		s.tracing.responded(ctx, resp, redirects)
	}
	bodyClosed := false
	defer func() {
		if !bodyClosed {
			// The body was not read to the end: the connection is closed,
			// not drained for reuse on behalf of a caller that is gone.
			pool.Abort(resp)
		}
	}()

	if err := stream.Send(&pooldv1.StreamResponse{Msg: &pooldv1.StreamResponse_Head{Head: responseHead(resp)}}); err != nil {
		return err
	}
	// One buffer for the whole body. SendMsg has encoded the message by
	// the time it returns, so the buffer can be refilled; none of poold's
	// interceptors keeps a message past its call.
	buf := make([]byte, streamChunkSize)
	for {
		// A plain Read, not ReadFull: a chunk goes out as soon as it
		// arrives, which event streams and long polls depend on.
		n, rerr := resp.Body.Read(buf)
		if n > 0 {
			if err := stream.Send(&pooldv1.StreamResponse{Msg: &pooldv1.StreamResponse_Body{Body: buf[:n]}}); err != nil {
				return err
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return body.failureOr(s.requestError(ctx, resp.Request, rerr))
		}
	}
	bodyClosed = true
	if err := resp.Body.Close(); err != nil {
		return body.failureOr(s.requestError(ctx, resp.Request, err))
	}
	if err := body.failure(); err != nil {
		return err
	}
	return stream.Send(&pooldv1.StreamResponse{Msg: &pooldv1.StreamResponse_End{End: &pooldv1.StreamEnd{
		Trailers: headerFields(resp.Trailer),
		Timing:   timingProto(resp, redirects),
	}}})
}

// streamBody is a Stream request body: the chunks a receiving goroutine
// takes from the call, handed through a pipe to the engine, which reads
// them as it writes them upstream. The pipe holds no data of its own: a
// chunk is handed over only when the engine reads it, so a slow upstream
// slows the caller through gRPC flow control instead of filling memory.
type streamBody struct {
	pr *io.PipeReader
	pw *io.PipeWriter
	// declared is the Content-Length the caller sent, -1 for none.
	declared int64

	// n counts the bytes handed to the engine; eof is set once the engine
	// has read the end. Read by GetBody on the handler's goroutine.
	n   atomic.Int64
	eof atomic.Bool
	// failed is the caller's first protocol error (a second head, a body
	// that does not match its Content-Length): it explains a failed
	// request better than what the engine saw.
	failed atomic.Pointer[error]
}

func newStreamBody(declared int64) *streamBody {
	pr, pw := io.Pipe()
	return &streamBody{pr: pr, pw: pw, declared: declared}
}

// attach makes b the body of req. Without a Content-Length the engine
// sends the body chunked; with one, the body must match it exactly.
func (b *streamBody) attach(req *http.Request) {
	req.GetBody = b.getBody
	switch {
	case b.declared == 0:
		// net/http reads a zero ContentLength with a non-nil body as
		// "unknown", so an empty body must be NoBody. The receiver still
		// takes the caller's chunks, to report any as too long.
		req.Body, req.ContentLength = http.NoBody, 0
		_ = b.pr.Close()
	case b.declared > 0:
		req.Body, req.ContentLength = b, b.declared
	default:
		req.Body, req.ContentLength = b, -1
	}
}

// receive takes the caller's messages until the half-close or the end of
// the call, handing body chunks to the engine. Once the engine stops
// reading (it closed the body, or the request ended), later chunks are
// taken and dropped, so that a caller that sends its whole body before
// reading the response is not blocked by flow control.
func (b *streamBody) receive(stream pooldv1.HTTPService_StreamServer) {
	draining := false
	var received int64
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			_ = b.pw.Close()
			return
		}
		if err != nil {
			_ = b.pw.CloseWithError(err)
			return
		}
		if m.GetHead() != nil {
			b.fail(invalidArgument(fieldViolation{Field: "head", Reason: "sent more than once: messages after the first carry body chunks"}))
			draining = true
			continue
		}
		chunk := m.GetBody()
		received += int64(len(chunk))
		if b.declared >= 0 && received > b.declared {
			b.fail(b.lengthError(received))
			draining = true
		}
		if draining || len(chunk) == 0 {
			continue
		}
		if _, err := b.pw.Write(chunk); err != nil {
			draining = true
		}
	}
}

// Read hands the engine the next part of the body. It enforces the
// declared Content-Length itself, so a short body fails the request the
// same way whatever the engine does with it.
func (b *streamBody) Read(p []byte) (int, error) {
	n, err := b.pr.Read(p)
	total := b.n.Add(int64(n))
	if b.declared > 0 && total > b.declared {
		return n, b.fail(b.lengthError(total))
	}
	if errors.Is(err, io.EOF) {
		if b.declared > 0 && total < b.declared {
			return n, b.fail(b.lengthError(total))
		}
		b.eof.Store(true)
	}
	return n, err
}

// Close tells the receiver the engine wants no more of the body.
func (b *streamBody) Close() error {
	return b.pr.Close()
}

// getBody lets a redirect resend the body when there was none; a body
// that went upstream cannot be replayed.
func (b *streamBody) getBody() (io.ReadCloser, error) {
	if b.declared == 0 || (b.eof.Load() && b.n.Load() == 0) {
		return http.NoBody, nil
	}
	return nil, errBodyNotReplayable
}

// lengthError reports a body of n bytes (so far, when longer) that does
// not match the declared Content-Length.
func (b *streamBody) lengthError(n int64) error {
	rel := "shorter than"
	if n > b.declared {
		rel = "longer than"
	}
	return invalidArgument(fieldViolation{
		Field:  "body",
		Reason: fmt.Sprintf("the body chunks (%d bytes) are %s the declared Content-Length %d", n, rel, b.declared),
	})
}

// fail records err as the caller's first protocol error, stops the
// engine's reading of the body with it and returns it.
func (b *streamBody) fail(err error) error {
	b.failed.CompareAndSwap(nil, &err)
	_ = b.pw.CloseWithError(err)
	return err
}

func (b *streamBody) failure() error {
	if p := b.failed.Load(); p != nil {
		return *p
	}
	return nil
}

// failureOr returns the caller's protocol error if there was one, else err.
func (b *streamBody) failureOr(err error) error {
	if f := b.failure(); f != nil {
		return f
	}
	return err
}
