// Command hop-fasthttp is the gRPC-to-HTTP hop of hop-nethttp built on
// fasthttp's Client instead of net/http: HTTPService.Do and nothing else. It
// shows how much of a hop's cost the HTTP client alone can save.
//
// After it listens it prints its address on one line of standard output.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/valyala/fasthttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pooldv1 "github.com/poold/poold/gen/poold/v1"
)

// defaultTimeout bounds a call that arrives without a deadline, since
// fasthttp has no context to cancel it by.
const defaultTimeout = 30 * time.Second

// hop implements HTTPService.Do on one shared fasthttp client.
type hop struct {
	pooldv1.UnimplementedHTTPServiceServer
	client *fasthttp.Client
}

// Do sends the request upstream and answers with the whole response.
func (h *hop) Do(ctx context.Context, in *pooldv1.DoRequest) (*pooldv1.DoResponse, error) {
	req := fasthttp.AcquireRequest()
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)

	method := in.GetMethod()
	if method == "" {
		method = http.MethodGet
	}
	req.Header.SetMethod(method)
	req.SetRequestURI(in.GetUrl())
	for _, hd := range in.GetHeaders() {
		req.Header.Add(hd.GetName(), hd.GetValue())
	}
	if len(in.GetBody()) > 0 {
		req.SetBody(in.GetBody())
	}
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(defaultTimeout)
	}
	if err := h.client.DoDeadline(req, resp, deadline); err != nil {
		if errors.Is(err, fasthttp.ErrTimeout) {
			return nil, status.Error(codes.DeadlineExceeded, err.Error())
		}
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	out := &pooldv1.DoResponse{
		StatusCode: int32(resp.StatusCode()),
		Protocol:   "HTTP/1.1",
		// The response is released on return: its body buffer is reused.
		Body: append([]byte(nil), resp.Body()...),
		Url:  in.GetUrl(),
	}
	for name, value := range resp.Header.All() {
		out.Headers = append(out.Headers, &pooldv1.Header{Name: string(name), Value: string(value)})
	}
	return out, nil
}

func main() {
	addr := flag.String("listen", "127.0.0.1:0", "gRPC address to listen on (port 0 picks a free one)")
	flag.Parse()

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatalf("hop-fasthttp: %v", err)
	}
	h := &hop{client: &fasthttp.Client{
		// More than the callers can have outstanding, so a request never
		// waits for a free connection.
		MaxConnsPerHost:     512,
		MaxIdleConnDuration: 90 * time.Second,
	}}
	srv := grpc.NewServer()
	pooldv1.RegisterHTTPServiceServer(srv, h)
	fmt.Println(ln.Addr().String())

	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
		<-sig
		srv.Stop()
	}()
	if err := srv.Serve(ln); err != nil {
		log.Fatalf("hop-fasthttp: %v", err)
	}
}
