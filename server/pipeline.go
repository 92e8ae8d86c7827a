package server

import (
	"context"
	"errors"
	"io"
	"strconv"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pooldv1 "github.com/poold/poold/gen/poold/v1"
)

// DefaultPipelineDepth is how many requests one Pipeline call runs at once
// when HTTPOptions.PipelineDepth is 0.
const DefaultPipelineDepth = 128

// PipelineDepthHeader is the response header metadata key that tells a
// Pipeline caller how many of its requests poold runs at once.
const PipelineDepthHeader = "poold-pipeline-depth"

const pipelineMethod = "/poold.v1.HTTPService/Pipeline"

// Pipeline runs the requests of one stream, each as Do would run it, and
// answers each with its own response or error as soon as it completes.
//
// The handler's goroutine reads the stream. A request takes one of the
// stream's depth slots before it starts, so at the depth the reader holds
// the one request it has read and reads nothing more until a request
// completes: gRPC flow control then holds the caller back, and memory does
// not grow with what the caller sends. Requests run on workers owned by
// the call, started as needed up to the depth and kept for the next
// request, so that a request does not pay for a fresh goroutine and the
// growth of its stack. Responses are sent by the workers, one at a time.
// The call returns once every request it started has been answered or has
// given up because the stream ended.
//
// When poold shuts down (Drain), a Pipeline stops taking requests: each one
// that arrives from then on is answered UNAVAILABLE, reason SHUTTING_DOWN,
// without being run, and once the requests already running are answered
// the call ends with that status too, rather than holding shutdown for as
// long as the caller keeps the stream open.
func (s *HTTPServer) Pipeline(stream pooldv1.HTTPService_PipelineServer) error {
	if err := stream.SendHeader(metadata.Pairs(PipelineDepthHeader, strconv.Itoa(s.pipelineDepth))); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	p := &pipeline{
		s:       s,
		stream:  stream,
		ctx:     ctx,
		slots:   make(chan struct{}, s.pipelineDepth),
		jobs:    make(chan *pipelineCall),
		running: make(map[uint64]*pipelineCall),
	}
	// The reader runs on a goroutine of its own so that a drain need not
	// wait for the caller's next message. It ends when the stream does: at
	// the latest when this call returns and gRPC cancels the stream.
	read := make(chan error, 1)
	go func() { read <- p.read() }()
	var err error
	select {
	case err = <-read:
	case <-s.draining:
		err = p.drain()
	}
	if err != nil {
		// The stream broke or is ending: nobody will read the answers to
		// what still runs.
		cancel()
	}
	// No more requests: the workers finish what they run, then end.
	close(p.jobs)
	p.workers.Wait()
	return err
}

// drain stops the pipeline taking requests and waits until those running
// are answered, or the stream ends.
func (p *pipeline) drain() error {
	p.mu.Lock()
	p.stopped = true
	p.mu.Unlock()
	for range cap(p.slots) {
		select {
		case p.slots <- struct{}{}:
		case <-p.ctx.Done():
			return status.FromContextError(p.ctx.Err()).Err()
		}
	}
	return shuttingDown()
}

// pipeline is one Pipeline call.
type pipeline struct {
	s      *HTTPServer
	stream pooldv1.HTTPService_PipelineServer
	ctx    context.Context

	slots   chan struct{} // one token per request running
	jobs    chan *pipelineCall
	workers sync.WaitGroup

	mu      sync.Mutex // guards running and stopped
	running map[uint64]*pipelineCall
	stopped bool // draining: no request starts any more

	sendMu  sync.Mutex // serialises Send, which grpc-go requires
	sendErr error      // guarded by sendMu: the first failed Send
}

// pipelineCall is one request of a Pipeline.
type pipelineCall struct {
	id     uint64
	req    *pooldv1.DoRequest
	ctx    context.Context
	cancel context.CancelFunc
}

// read takes the caller's messages until the half-close (nil) or the end
// of the stream (its error).
func (p *pipeline) read() error {
	for {
		in := new(pooldv1.PipelineRequest)
		if err := p.stream.RecvMsg(in); err != nil {
			if errors.Is(err, io.EOF) {
				return p.finish()
			}
			return err
		}
		if in.GetCancel() {
			p.cancel(in.GetId())
			continue
		}
		if in.GetRequest() == nil {
			p.answer(in.GetId(), nil, invalidArgument(fieldViolation{Field: "request", Reason: "is required unless cancel is set"}))
			continue
		}
		// Wait for a slot before reading on: this is what bounds the
		// stream. A drain takes every slot, and what arrives then is
		// answered at once.
		select {
		case p.slots <- struct{}{}:
		case <-p.s.draining:
			p.answer(in.GetId(), nil, shuttingDown())
			continue
		case <-p.ctx.Done():
			return status.FromContextError(p.ctx.Err()).Err()
		}
		if err := p.start(in.GetId(), in.GetRequest()); err != nil {
			<-p.slots
			p.answer(in.GetId(), nil, err)
		}
	}
}

// finish waits, after the half-close, until every request has been
// answered, so that the call ends OK only when nothing is left.
func (p *pipeline) finish() error {
	for range cap(p.slots) {
		select {
		case p.slots <- struct{}{}:
		case <-p.ctx.Done():
			return status.FromContextError(p.ctx.Err()).Err()
		}
	}
	p.sendMu.Lock()
	defer p.sendMu.Unlock()
	return p.sendErr
}

// start hands a request to a worker, or says why it cannot run.
func (p *pipeline) start(id uint64, req *pooldv1.DoRequest) error {
	p.mu.Lock()
	stopped := p.stopped
	p.mu.Unlock()
	if stopped {
		return shuttingDown()
	}
	if err := p.s.limit.acquire(); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(p.ctx)
	call := &pipelineCall{id: id, req: req, ctx: ctx, cancel: cancel}
	p.mu.Lock()
	if _, dup := p.running[id]; dup {
		p.mu.Unlock()
		cancel()
		p.s.limit.release()
		return invalidArgument(fieldViolation{Field: "id", Reason: "is the id of a request still running on this stream"})
	}
	p.running[id] = call
	p.mu.Unlock()
	select {
	case p.jobs <- call:
	default:
		// Every worker is busy. There are fewer than the depth, as each
		// holds a slot.
		p.workers.Add(1)
		go p.work(call)
	}
	return nil
}

// work runs calls until the reader has no more.
func (p *pipeline) work(call *pipelineCall) {
	defer p.workers.Done()
	for ; call != nil; call = <-p.jobs {
		resp, held, err := p.do(call)
		p.s.limit.release()
		// Out of the table before the answer goes out: a caller may
		// reuse the id as soon as it has the answer.
		p.mu.Lock()
		delete(p.running, call.id)
		p.mu.Unlock()
		call.cancel()
		p.answer(call.id, resp, err)
		// Send has marshalled the response: its body is no longer held.
		p.s.budget.give(held)
		<-p.slots
	}
}

// do runs one pipelined request, in a span of its own when poold traces.
func (p *pipeline) do(call *pipelineCall) (*pooldv1.DoResponse, int64, error) {
	if p.s.tracing == nil {
		return p.s.do(call.ctx, call.req, true)
	}
	ctx, span := p.s.tracing.startPipelined(call.ctx, call.id, call.req.GetMethod())
	resp, held, err := p.s.do(ctx, call.req, true)
	p.s.tracing.endPipelined(span, err)
	return resp, held, err
}

// cancel ends the running request with the given id. One that already
// ended is not an error: its answer may be on the way.
func (p *pipeline) cancel(id uint64) {
	p.mu.Lock()
	call := p.running[id]
	p.mu.Unlock()
	if call != nil {
		call.cancel()
	}
}

// answer sends the outcome of request id. After a failed Send the stream
// is broken and nothing more is sent; the reader sees that too and ends
// the call.
func (p *pipeline) answer(id uint64, resp *pooldv1.DoResponse, err error) {
	out := &pooldv1.PipelineResponse{Id: id, Response: resp}
	if err != nil {
		if p.s.failures != nil {
			p.s.failures.observe(p.ctx, pipelineMethod, err)
		}
		st, ok := status.FromError(err)
		if !ok {
			st = status.New(codes.Unknown, err.Error())
		}
		out.Error = st.Proto()
	}
	p.sendMu.Lock()
	defer p.sendMu.Unlock()
	if p.sendErr != nil {
		return
	}
	p.sendErr = p.stream.Send(out)
}
