package server

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
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
	// Effective returns the policy a request to scheme://hostport runs
	// under (pool.Engine.EffectivePolicy); its request_timeout joins the
	// caller's deadline. Nil leaves the request timeout to the engine.
	Effective func(scheme, hostport string) pool.Effective
}

// HTTPServer serves HTTPService: it turns calls into requests on the
// engine's pooled connections and their responses back into messages.
type HTTPServer struct {
	pooldv1.UnimplementedHTTPServiceServer
	rt          http.RoundTripper
	maxBodySize int64
	effective   func(scheme, hostport string) pool.Effective
}

// NewHTTPServer returns an HTTPService that sends requests through rt,
// normally the *pool.Engine.
func NewHTTPServer(rt http.RoundTripper, opts HTTPOptions) *HTTPServer {
	if opts.MaxBodySize <= 0 {
		opts.MaxBodySize = DefaultMaxBodySize
	}
	return &HTTPServer{rt: rt, maxBodySize: opts.MaxBodySize, effective: opts.Effective}
}

// Do sends one request and returns the whole response. An upstream 4xx or
// 5xx is a successful call; an error means the request did not complete.
func (s *HTTPServer) Do(ctx context.Context, in *pooldv1.DoRequest) (*pooldv1.DoResponse, error) {
	req, err := newUpstreamRequest(ctx, in)
	if err != nil {
		return nil, err
	}
	ctx, cancel := s.requestContext(ctx, req, in.GetTimeout())
	defer cancel()
	req = req.WithContext(ctx)

	resp, redirects, err := sendFollowingRedirects(s.rt, req, int(in.GetMaxRedirects()))
	if err != nil {
		return nil, requestError(ctx, req, err)
	}
	body, err := s.readBody(resp, cancel)
	if err != nil {
		return nil, requestError(ctx, resp.Request, err)
	}
	out := responseHead(resp)
	out.Body = body
	out.Trailers = headerFields(resp.Trailer)
	out.Timing = timingProto(resp, redirects)
	return out, nil
}

// readBody reads the whole body, up to the size limit, and closes it. A
// body over the limit is abandoned as soon as that is known: cancel ends
// the request first, so that the engine closes the connection rather than
// draining the rest of the body to reuse it.
func (s *HTTPServer) readBody(resp *http.Response, cancel context.CancelFunc) ([]byte, error) {
	abandon := func() error {
		cancel()
		_ = resp.Body.Close()
		return &errBodyTooLarge{limit: s.maxBodySize}
	}
	// A HEAD, 204 or 304 response has no body whatever its
	// Content-Length says; the engine gives those http.NoBody.
	hasBody := resp.Body != http.NoBody
	if hasBody && resp.ContentLength > s.maxBodySize {
		return nil, abandon()
	}
	var buf bytes.Buffer
	if hasBody && resp.ContentLength > 0 {
		// Room for the final read that finds EOF too, or ReadFrom would
		// double the buffer just to learn the body has ended.
		buf.Grow(int(resp.ContentLength) + bytes.MinRead)
	}
	// One byte past the limit tells "exactly the limit" from "more".
	n, err := buf.ReadFrom(io.LimitReader(resp.Body, s.maxBodySize+1))
	if err != nil {
		cancel()
		_ = resp.Body.Close()
		return nil, err
	}
	if n > s.maxBodySize {
		return nil, abandon()
	}
	// The limit was not reached, so the body hit EOF: the trailers are in
	// and the connection has gone back to the pool.
	if err := resp.Body.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// requestContext derives the context a request runs under: the caller's,
// bounded by the tightest of DoRequest.timeout and the host policy's
// request_timeout when one of them ends before the caller's deadline. That
// deadline's cause is pool.ErrRequestTimeout, the error the engine's own
// request timeout reports, so that either limit fails with REQUEST_TIMEOUT
// whichever phase it interrupts. The caller's own gRPC deadline needs no
// timer here: it already ends ctx.
func (s *HTTPServer) requestContext(ctx context.Context, req *http.Request, timeout *durationpb.Duration) (context.Context, context.CancelFunc) {
	limit := time.Duration(0)
	if timeout != nil {
		limit = timeout.AsDuration()
	}
	if s.effective != nil {
		rt := s.effective(req.URL.Scheme, hostPort(req.URL)).RequestTimeout
		if rt > 0 && (limit == 0 || rt < limit) {
			limit = rt
		}
	}
	if limit <= 0 {
		return context.WithCancel(ctx)
	}
	if d, ok := ctx.Deadline(); ok && time.Until(d) <= limit {
		return context.WithCancel(ctx)
	}
	return context.WithTimeoutCause(ctx, limit, pool.ErrRequestTimeout)
}

// requestError maps a failed request to its status. When the request's
// own timeout (requestContext) ended it, the error is reported as that
// timeout, whatever phase noticed it: the engine may only see a context
// that ended mid-phase.
func requestError(ctx context.Context, req *http.Request, err error) error {
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
	return statusFromError(err)
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
// keeps fields in a map. Sorting at least makes the output stable.
func headerFields(h http.Header) []*pooldv1.Header {
	if len(h) == 0 {
		return nil
	}
	names := make([]string, 0, len(h))
	n := 0
	for k, vs := range h {
		names = append(names, k)
		n += len(vs)
	}
	slices.Sort(names)
	out := make([]*pooldv1.Header, 0, n)
	for _, k := range names {
		for _, v := range h[k] {
			out = append(out, &pooldv1.Header{Name: k, Value: utf8Value(v)})
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
