package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	pooldv1 "github.com/poold/poold/gen/poold/v1"
)

// callTimeout is the deadline of every request.
const callTimeout = 10 * time.Second

// maxMessage lets bodies past gRPC's 4 MiB default through, should a large
// --sizes be asked for.
const maxMessage = 256 << 20

// driver puts one request on a target for one closed-loop caller.
type driver interface {
	// do sends one request for caller and waits for its answer; an error
	// includes a wrong status or a body of the wrong size.
	do(ctx context.Context, caller int) error
	// close releases the driver's connections.
	close()
}

// dialConns opens n gRPC client connections to addr. Separate ClientConns
// make separate HTTP/2 connections, which is what spreads the callers.
func dialConns(addr string, n int) ([]*grpc.ClientConn, error) {
	conns := make([]*grpc.ClientConn, 0, n)
	for range n {
		cc, err := grpc.NewClient(addr,
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMessage)))
		if err != nil {
			for _, c := range conns {
				c.Close()
			}
			return nil, err
		}
		cc.Connect()
		conns = append(conns, cc)
	}
	return conns, nil
}

// checkResponse tells whether a DoResponse is the body that was asked for.
func checkResponse(r *pooldv1.DoResponse, size int) error {
	if r.GetStatusCode() != http.StatusOK {
		return fmt.Errorf("HTTP status %d", r.GetStatusCode())
	}
	if len(r.GetBody()) != size {
		return fmt.Errorf("body of %d bytes, want %d", len(r.GetBody()), size)
	}
	return nil
}

// unaryDriver calls HTTPService.Do, caller i on connection i mod conns, so
// each connection carries an equal share of the callers.
type unaryDriver struct {
	conns   []*grpc.ClientConn
	clients []pooldv1.HTTPServiceClient
	reqs    []*pooldv1.DoRequest // one per caller, so none is shared across goroutines
	size    int
}

// openUnary prepares a unaryDriver.
func openUnary(_ context.Context, addr string, nconns, callers int, url string, size int) (driver, error) {
	conns, err := dialConns(addr, nconns)
	if err != nil {
		return nil, err
	}
	d := &unaryDriver{conns: conns, size: size}
	for _, cc := range conns {
		d.clients = append(d.clients, pooldv1.NewHTTPServiceClient(cc))
	}
	for range callers {
		d.reqs = append(d.reqs, &pooldv1.DoRequest{Method: http.MethodGet, Url: url})
	}
	return d, nil
}

func (d *unaryDriver) do(ctx context.Context, caller int) error {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	resp, err := d.clients[caller%len(d.clients)].Do(ctx, d.reqs[caller])
	if err != nil {
		return err
	}
	return checkResponse(resp, d.size)
}

func (d *unaryDriver) close() {
	for _, cc := range d.conns {
		cc.Close()
	}
}

// pipelineDriver calls HTTPService.Pipeline: one stream per connection,
// caller i on stream i mod conns, each caller with one request outstanding.
type pipelineDriver struct {
	conns   []*grpc.ClientConn
	streams []*pipeStream
	reqs    []*pooldv1.DoRequest
	size    int
	cancel  context.CancelFunc
}

// pipeStream is one Pipeline call shared by several callers. Responses come
// back in any order, so one receiver goroutine hands each to the caller
// waiting for its id.
type pipeStream struct {
	stream pooldv1.HTTPService_PipelineClient
	depth  int // what poold announced; 0 if it did not

	sendMu sync.Mutex // grpc-go allows one Send at a time per stream
	nextID atomic.Uint64

	mu      sync.Mutex
	waiting map[uint64]chan *pooldv1.PipelineResponse

	done    chan struct{} // closed when the receiver stops
	recvErr error         // why it stopped; valid once done is closed
}

// openPipeline prepares a pipelineDriver, with its streams open.
func openPipeline(ctx context.Context, addr string, nconns, callers int, url string, size int) (driver, error) {
	conns, err := dialConns(addr, nconns)
	if err != nil {
		return nil, err
	}
	sctx, cancel := context.WithCancel(ctx)
	d := &pipelineDriver{conns: conns, size: size, cancel: cancel}
	for _, cc := range conns {
		st, err := pooldv1.NewHTTPServiceClient(cc).Pipeline(sctx)
		if err != nil {
			d.close()
			return nil, fmt.Errorf("open Pipeline: %w", err)
		}
		ps := &pipeStream{stream: st, waiting: make(map[uint64]chan *pooldv1.PipelineResponse), done: make(chan struct{})}
		d.streams = append(d.streams, ps)
		go ps.receive()
	}
	for _, ps := range d.streams {
		// poold sends its header metadata as the call starts; waiting for
		// it also proves the stream is up before the warm-up ends.
		md, err := ps.stream.Header()
		if err != nil {
			d.close()
			return nil, fmt.Errorf("Pipeline header: %w", err)
		}
		if v := md.Get("poold-pipeline-depth"); len(v) > 0 {
			ps.depth, _ = strconv.Atoi(v[0])
		}
	}
	for range callers {
		d.reqs = append(d.reqs, &pooldv1.DoRequest{Method: http.MethodGet, Url: url})
	}
	return d, nil
}

// receive dispatches responses by id until the stream ends.
func (ps *pipeStream) receive() {
	defer close(ps.done)
	for {
		r, err := ps.stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = errors.New("Pipeline stream ended")
			}
			ps.recvErr = err
			return
		}
		ps.mu.Lock()
		ch := ps.waiting[r.GetId()]
		delete(ps.waiting, r.GetId())
		ps.mu.Unlock()
		if ch != nil {
			ch <- r // buffered: never blocks the receiver
		}
		// A response nobody waits for answers a request that timed out.
	}
}

// call sends one request and waits for the response with its id.
func (ps *pipeStream) call(ctx context.Context, req *pooldv1.DoRequest) (*pooldv1.PipelineResponse, error) {
	id := ps.nextID.Add(1)
	ch := make(chan *pooldv1.PipelineResponse, 1)
	ps.mu.Lock()
	ps.waiting[id] = ch
	ps.mu.Unlock()

	ps.sendMu.Lock()
	err := ps.stream.Send(&pooldv1.PipelineRequest{Id: id, Request: req})
	ps.sendMu.Unlock()
	if err != nil {
		ps.forget(id)
		return nil, fmt.Errorf("Pipeline send: %w", err)
	}
	timer := time.NewTimer(callTimeout)
	defer timer.Stop()
	select {
	case r := <-ch:
		return r, nil
	case <-ps.done:
		ps.forget(id)
		return nil, ps.recvErr
	case <-timer.C:
	case <-ctx.Done():
	}
	ps.forget(id)
	// Tell poold to stop working on it; its CANCELLED answer is dropped.
	ps.sendMu.Lock()
	_ = ps.stream.Send(&pooldv1.PipelineRequest{Id: id, Cancel: true})
	ps.sendMu.Unlock()
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	return nil, fmt.Errorf("Pipeline request %d: no response within %v", id, callTimeout)
}

// forget stops waiting for id.
func (ps *pipeStream) forget(id uint64) {
	ps.mu.Lock()
	delete(ps.waiting, id)
	ps.mu.Unlock()
}

func (d *pipelineDriver) do(ctx context.Context, caller int) error {
	r, err := d.streams[caller%len(d.streams)].call(ctx, d.reqs[caller])
	if err != nil {
		return err
	}
	if e := r.GetError(); e != nil {
		return status.ErrorProto(e)
	}
	return checkResponse(r.GetResponse(), d.size)
}

// close half-closes every stream, lets the outstanding requests drain, then
// drops the connections.
func (d *pipelineDriver) close() {
	for _, ps := range d.streams {
		ps.sendMu.Lock()
		_ = ps.stream.CloseSend()
		ps.sendMu.Unlock()
	}
	deadline := time.NewTimer(callTimeout)
	defer deadline.Stop()
	for _, ps := range d.streams {
		select {
		case <-ps.done:
		case <-deadline.C:
		}
	}
	d.cancel()
	for _, cc := range d.conns {
		cc.Close()
	}
}

// httpDriver GETs a URL with net/http's client on keep-alive connections,
// as many as there are callers, so no caller waits for a connection.
type httpDriver struct {
	client    *http.Client
	transport *http.Transport
	url       string
	size      int
}

// openHTTP prepares an httpDriver.
func openHTTP(url string, callers, size int) driver {
	tr := &http.Transport{
		MaxIdleConns:        callers,
		MaxIdleConnsPerHost: callers,
		MaxConnsPerHost:     callers,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
	return &httpDriver{
		client:    &http.Client{Transport: tr, Timeout: callTimeout},
		transport: tr,
		url:       url,
		size:      size,
	}
}

func (d *httpDriver) do(ctx context.Context, _ int) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, d.url, nil)
	if err != nil {
		return err
	}
	resp, err := d.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("HTTP status %d", resp.StatusCode)
	}
	if n != int64(d.size) {
		return fmt.Errorf("body of %d bytes, want %d", n, d.size)
	}
	return nil
}

func (d *httpDriver) close() {
	d.transport.CloseIdleConnections()
}
