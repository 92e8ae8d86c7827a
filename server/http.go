package server

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/types/known/durationpb"

	pooldv1 "github.com/poold/poold/gen/poold/v1"
	"github.com/poold/poold/pool"
)

var _ pooldv1.HTTPServiceServer = (*HTTPServer)(nil)

// DefaultMaxBodySize is the largest response body Do returns when
// HTTPOptions.MaxBodySize is 0.
const DefaultMaxBodySize int64 = 16 << 20

// HTTPOptions configure an HTTPServer.
type HTTPOptions struct {
	// MaxBodySize bounds the response body Do reads into memory, in bytes;
	// a longer body fails with RESOURCE_EXHAUSTED BODY_TOO_LARGE. 0 means
	// DefaultMaxBodySize. Stream has no such bound.
	MaxBodySize int64
	// MaxInFlight caps upstream requests running at once: Do and Stream
	// calls, and each request of a Pipeline. One more fails at once with
	// RESOURCE_EXHAUSTED, reason OVERLOADED. 0 means no cap.
	MaxInFlight int
	// PipelineDepth caps the requests one Pipeline call runs at once. 0
	// means DefaultPipelineDepth.
	PipelineDepth int
	// MaxBufferedBytes bounds the response bodies Do and Pipeline hold in
	// memory at once, across all callers; a body that does not fit fails
	// with RESOURCE_EXHAUSTED, reason OVERLOADED (before the request is
	// sent, if the budget is already spent). Stream is not counted. 0 means
	// no bound.
	MaxBufferedBytes int64
	// RevealErrorDetail puts the whole cause of a failure in the status
	// message and the resolved address in ErrorInfo: for deployments where
	// every caller is trusted. By default callers learn the phase, the host
	// as they named it and the reason, never a resolved address, a resolver
	// or an egress rule, which the log has.
	RevealErrorDetail bool

	// failures counts failed pipelined requests by reason; nil counts
	// nothing. Calls are counted by the server's observer.
	failures *reasonCounter
	// tracing adds to each request's span; nil traces nothing.
	tracing *callTracer
}

// HTTPServer serves HTTPService: it turns calls into requests on the
// engine's pooled connections and their responses back into messages.
type HTTPServer struct {
	pooldv1.UnimplementedHTTPServiceServer
	rt            http.RoundTripper
	maxBodySize   int64
	limit         *inFlightLimit
	pipelineDepth int
	failures      *reasonCounter
	reveal        bool
	budget        *byteBudget
	tracing       *callTracer // nil: poold does not trace

	egress *egressRegistry // nil: the dialer's own egress rules apply

	draining  chan struct{} // closed by Drain
	drainOnce sync.Once
}

// Drain tells every Pipeline to stop taking requests and end once those
// it runs are answered; see Pipeline. Server.Shutdown calls it.
func (s *HTTPServer) Drain() { s.drainOnce.Do(func() { close(s.draining) }) }

// NewHTTPServer returns an HTTPService that sends requests through rt,
// normally the *pool.Engine, whose policies also bound each request's time
// (request_timeout).
func NewHTTPServer(rt http.RoundTripper, opts HTTPOptions) *HTTPServer {
	if opts.MaxBodySize <= 0 {
		opts.MaxBodySize = DefaultMaxBodySize
	}
	if opts.PipelineDepth <= 0 {
		opts.PipelineDepth = DefaultPipelineDepth
	}
	if opts.tracing != nil {
		rt = &propagatingTransport{next: rt, tracer: opts.tracing}
	}
	return &HTTPServer{
		rt:            rt,
		maxBodySize:   opts.MaxBodySize,
		limit:         newInFlightLimit(opts.MaxInFlight),
		pipelineDepth: opts.PipelineDepth,
		failures:      opts.failures,
		reveal:        opts.RevealErrorDetail,
		budget:        newByteBudget(opts.MaxBufferedBytes),
		tracing:       opts.tracing,
		draining:      make(chan struct{}),
	}
}

// Do sends one request and returns the whole response. An upstream 4xx or
// 5xx is a successful call; an error means the request did not complete.
func (s *HTTPServer) Do(ctx context.Context, in *pooldv1.DoRequest) (*pooldv1.DoResponse, error) {
	if err := s.limit.acquire(); err != nil {
		return nil, err
	}
	defer s.limit.release()
	resp, held, err := s.do(ctx, in, false)
	// gRPC marshals the response after Do returns; the body's charge ends
	// here, a moment early, since no hook runs after that.
	s.budget.give(held)
	return resp, err
}

// do runs one request the way Do promises, for Do and for every request of
// a Pipeline. held is what the body took of the byte budget, which the
// caller gives back once the response is sent. When poold traces, the
// request's span is ctx's: Do's server span, or the span Pipeline starts
// for each request (pipelined).
func (s *HTTPServer) do(ctx context.Context, in *pooldv1.DoRequest, pipelined bool) (_ *pooldv1.DoResponse, held int64, _ error) {
	ctx, cancel := requestContext(ctx, in.GetTimeout())
	if cancel != nil {
		defer cancel()
	}
	if sc := s.egress.scopeFor(ctx); sc != nil {
		ctx = pool.WithEgressScope(ctx, sc)
	}
	req, err := newUpstreamRequest(ctx, in)
	if err != nil {
		return nil, 0, err
	}
	if s.tracing != nil {
		s.tracing.request(ctx, req, pipelined)
	}
	if s.budget.full() {
		return nil, 0, s.requestError(ctx, req, &errBufferBudget{limit: s.budget.limit})
	}
	resp, redirects, err := sendFollowingRedirects(s.rt, req, int(in.GetMaxRedirects()))
	if err != nil {
		return nil, 0, s.requestError(ctx, req, err)
	}
	if s.tracing != nil {
		// The head is in, and with it every phase a span is drawn for.
		s.tracing.responded(ctx, resp, redirects)
	}
	body, held, err := s.readBody(resp)
	if err != nil {
		return nil, 0, s.requestError(ctx, resp.Request, err)
	}
	// One allocation for the response, its timing and every duration in
	// it: the response is built for every request, and each message on
	// its own would be an allocation of its own.
	r := new(doResult)
	r.resp.StatusCode = int32(resp.StatusCode)
	r.resp.Protocol = resp.Proto
	r.resp.Headers = headerFields(resp.Header)
	r.resp.Url = resp.Request.URL.String()
	r.resp.Body = body
	r.resp.Trailers = headerFields(resp.Trailer)
	r.timing.fill(resp, redirects)
	r.resp.Timing = &r.timing.Timing
	return &r.resp, held, nil
}

// doResult is a DoResponse allocated together with its Timing.
type doResult struct {
	resp   pooldv1.DoResponse
	timing timingSlab
}

// readBody reads the whole body, up to the size limit, and closes it. A
// body over the limit is abandoned as soon as that is known, closing the
// connection rather than spending time draining the rest to reuse it.
func (s *HTTPServer) readBody(resp *http.Response) ([]byte, int64, error) {
	buf, held, err := s.readAll(resp)
	if err != nil {
		s.budget.give(held)
		return nil, 0, err
	}
	return buf, held, nil
}

// readAll is readBody but for giving back, on failure, what the buffer
// took of the byte budget as it grew: held is that, error or not.
func (s *HTTPServer) readAll(resp *http.Response) (buf []byte, held int64, err error) {
	// A HEAD, 204 or 304 response has no body whatever its
	// Content-Length says; the engine gives those http.NoBody.
	if resp.Body == http.NoBody {
		return nil, 0, nil
	}
	if resp.ContentLength > s.maxBodySize {
		pool.Abort(resp)
		return nil, 0, &errBodyTooLarge{limit: s.maxBodySize}
	}
	if resp.ContentLength >= 0 {
		// One byte of room past the declared length, so that the read that
		// finds EOF needs no bigger buffer.
		if !s.budget.take(resp.ContentLength + 1) {
			return nil, 0, s.overBudget(resp)
		}
		held = resp.ContentLength + 1
		buf = make([]byte, 0, resp.ContentLength+1)
	}
	for {
		if len(buf) == cap(buf) {
			// A body of unknown length grows as append would, and never
			// past one byte over the limit, which tells "exactly the
			// limit" from "more".
			grow := min(max(cap(buf), 4<<10), int(s.maxBodySize+1)-len(buf))
			buf = slices.Grow(buf, grow)
			more := int64(cap(buf)) - held
			if !s.budget.take(more) {
				return nil, held, s.overBudget(resp)
			}
			held += more
		}
		n, err := resp.Body.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if int64(len(buf)) > s.maxBodySize {
			pool.Abort(resp)
			return nil, held, &errBodyTooLarge{limit: s.maxBodySize}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			_ = resp.Body.Close()
			return nil, held, err
		}
	}
	// The body hit EOF: the trailers are in and the connection has gone
	// back to the pool.
	if err := resp.Body.Close(); err != nil {
		return nil, held, err
	}
	return buf, held, nil
}

// overBudget gives up on a body that does not fit the byte budget. The
// request was sent: its response is what did not fit.
func (s *HTTPServer) overBudget(resp *http.Response) error {
	pool.Abort(resp)
	return &pool.Error{
		Phase: pool.PhaseBody,
		Host:  resp.Request.URL.Scheme + "://" + hostPort(resp.Request.URL),
		Err:   &errBufferBudget{limit: s.budget.limit},
		Sent:  true,
	}
}

// requestContext bounds ctx by DoRequest.timeout when that ends before the
// caller's deadline. The deadline's cause is pool.ErrRequestTimeout, the
// error the engine's own request timeout reports, so that either limit
// fails with REQUEST_TIMEOUT whichever phase it interrupts. The caller's
// gRPC deadline needs no timer here, as it already ends ctx, and the
// policy's request_timeout is the engine's. cancel is nil when ctx is
// returned as it is.
func requestContext(ctx context.Context, timeout *durationpb.Duration) (context.Context, context.CancelFunc) {
	if timeout == nil {
		return ctx, nil
	}
	limit := timeout.AsDuration()
	if limit <= 0 {
		return ctx, nil
	}
	if d, ok := ctx.Deadline(); ok && time.Until(d) <= limit {
		return ctx, nil
	}
	return context.WithTimeoutCause(ctx, limit, pool.ErrRequestTimeout)
}

// requestError maps a failed request to its status. When the request's
// own timeout (requestContext) ended it, the error is reported as that
// timeout, whatever phase noticed it: the engine may only see a context
// that ended mid-phase.
func (s *HTTPServer) requestError(ctx context.Context, req *http.Request, err error) error {
	if context.Cause(ctx) == pool.ErrRequestTimeout && !errors.Is(err, pool.ErrRequestTimeout) {
		var perr *pool.Error
		if !errors.As(err, &perr) || perr.Phase != pool.PhaseRequest {
			host := ""
			if req != nil {
				host = req.URL.Scheme + "://" + hostPort(req.URL)
			}
			err = &pool.Error{Phase: pool.PhaseRequest, Host: host, Err: pool.ErrRequestTimeout}
		}
	}
	st := mapError(err, s.reveal)
	if s.tracing != nil {
		s.tracing.failed(ctx, err, st)
	}
	return st
}

// hostPort is the URL's host with the scheme's default port filled in, as
// the engine keys its host pools.
func hostPort(u *url.URL) string {
	return net.JoinHostPort(u.Hostname(), effectivePort(u))
}

// responseHead converts the status line and header of resp. url is the
// final URL, after redirects.
func responseHead(resp *http.Response) *pooldv1.DoResponse {
	out := &pooldv1.DoResponse{
		StatusCode: int32(resp.StatusCode),
		Protocol:   resp.Proto,
		Headers:    headerFields(resp.Header),
	}
	if resp.Request != nil && resp.Request.URL != nil {
		out.Url = resp.Request.URL.String()
	}
	return out
}

// headerFields lists h as name/value pairs, names sorted, each name's
// values in the order received, repeats kept. The order between different
// names as they came on the wire is not recoverable: http.ReadResponse
// keeps fields in a map. Sorting at least makes the output stable. The
// fields share one allocation.
func headerFields(h http.Header) []*pooldv1.Header {
	if len(h) == 0 {
		return nil
	}
	var small [16]string
	names := small[:0]
	n := 0
	for k, vs := range h {
		names = append(names, k)
		n += len(vs)
	}
	slices.Sort(names)
	fields := make([]pooldv1.Header, n)
	out := make([]*pooldv1.Header, n)
	i := 0
	for _, k := range names {
		for _, v := range h[k] {
			fields[i].Name, fields[i].Value = k, utf8Value(v)
			out[i] = &fields[i]
			i++
		}
	}
	return out
}

// utf8Value makes a field value fit a protobuf string, which must be UTF-8
// or the whole response fails to marshal. RFC 9110 allows obs-text (bytes
// 0x80-0xFF) in values, which servers use for ISO-8859-1: a value that is
// not UTF-8 is read as ISO-8859-1, byte for byte, so nothing is lost.
func utf8Value(v string) string {
	if utf8.ValidString(v) {
		return v
	}
	r := make([]rune, len(v))
	for i := 0; i < len(v); i++ {
		r[i] = rune(v[i])
	}
	return string(r)
}
