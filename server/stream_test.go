package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"runtime/metrics"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"

	pooldv1 "github.com/poold/poold/gen/poold/v1"
)

// patternReader produces n bytes of a fixed pattern without holding them.
type patternReader struct{ n int64 }

func (r *patternReader) Read(p []byte) (int, error) {
	if r.n <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > r.n {
		p = p[:r.n]
	}
	for i := range p {
		p[i] = byte('a' + i%26)
	}
	r.n -= int64(len(p))
	return len(p), nil
}

// streamResult is what a Stream call returned.
type streamResult struct {
	head     *pooldv1.DoResponse
	body     bytes.Buffer
	bodyLen  int64
	maxChunk int
	end      *pooldv1.StreamEnd
}

// sendStream sends head and then body in chunks of chunkSize, and
// half-closes. It runs on its own goroutine in the callers below.
func sendStream(st pooldv1.HTTPService_StreamClient, head *pooldv1.DoRequest, body io.Reader, chunkSize int) error {
	if err := st.Send(&pooldv1.StreamRequest{Msg: &pooldv1.StreamRequest_Head{Head: head}}); err != nil {
		return err
	}
	buf := make([]byte, chunkSize)
	for body != nil {
		n, err := body.Read(buf)
		if n > 0 {
			if err := st.Send(&pooldv1.StreamRequest{Msg: &pooldv1.StreamRequest_Body{Body: buf[:n]}}); err != nil {
				return err
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
	}
	return st.CloseSend()
}

// recvStream reads a Stream response to its end. keep says whether body
// bytes are kept or only counted.
func recvStream(st pooldv1.HTTPService_StreamClient, keep bool) (*streamResult, error) {
	res := &streamResult{}
	for {
		m, err := st.Recv()
		if err == io.EOF {
			if res.end == nil {
				return res, errors.New("stream ended without a StreamEnd")
			}
			return res, nil
		}
		if err != nil {
			return res, err
		}
		switch {
		case m.GetHead() != nil:
			if res.head != nil {
				return res, errors.New("second head")
			}
			res.head = m.GetHead()
		case m.GetEnd() != nil:
			res.end = m.GetEnd()
		default:
			if res.head == nil || res.end != nil {
				return res, errors.New("body chunk outside head and end")
			}
			b := m.GetBody()
			res.bodyLen += int64(len(b))
			res.maxChunk = max(res.maxChunk, len(b))
			if keep {
				res.body.Write(b)
			}
		}
	}
}

// stream runs one Stream call with a small body and returns its result.
func (h *httpHarness) stream(t *testing.T, ctx context.Context, head *pooldv1.DoRequest, body string) (*streamResult, error) {
	t.Helper()
	st, err := h.client.Stream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sent := make(chan error, 1)
	go func() { sent <- sendStream(st, head, strings.NewReader(body), 5) }()
	res, err := recvStream(st, true)
	if serr := <-sent; serr != nil && err == nil && serr != io.EOF {
		t.Errorf("sending: %v", serr)
	}
	return res, err
}

func TestStreamSendsTheBodyInChunksAndEndsWithTrailersAndTiming(t *testing.T) {
	up := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("Trailer", "X-Count")
		w.Header().Add("X-Multi", "1")
		w.Header().Add("X-Multi", "2")
		fmt.Fprintf(w, "%s %v %q %s", r.Method, r.TransferEncoding, r.Header.Get("X-A"), strings.Repeat(string(b), 20000))
		w.Header().Set("X-Count", strconv.Itoa(len(b)))
	})
	h := newHTTPHarness(t)
	res, err := h.stream(t, testContext(t), &pooldv1.DoRequest{Method: "POST", Url: up.URL + "/echo", Headers: []*pooldv1.Header{hdr("X-A", "a")}}, "hello, stream")
	if err != nil {
		t.Fatal(err)
	}
	want := `POST [chunked] "a" ` + strings.Repeat("hello, stream", 20000)
	if res.body.String() != want {
		t.Errorf("body: got %d bytes starting %.40q, want %d bytes", res.body.Len(), res.body.String(), len(want))
	}
	if res.maxChunk > 32<<10 {
		t.Errorf("a body chunk has %d bytes, over 32 KiB", res.maxChunk)
	}
	head := res.head
	if head.GetStatusCode() != http.StatusOK || head.GetUrl() != up.URL+"/echo" || head.GetTiming() != nil || head.GetBody() != nil {
		t.Errorf("head = %v, want status and url only", head)
	}
	if diff := cmp.Diff([]string{"1", "2"}, headerValues(head.GetHeaders(), "X-Multi")); diff != "" {
		t.Errorf("X-Multi (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]*pooldv1.Header{hdr("X-Count", "13")}, res.end.GetTrailers(), cmpProto()); diff != "" {
		t.Errorf("trailers (-want +got):\n%s", diff)
	}
	if tm := res.end.GetTiming(); tm.GetConnectionId() == 0 || tm.GetTotal() == nil || tm.GetAttempts() != 1 {
		t.Errorf("timing = %v", tm)
	}
}

func TestStreamChecksTheBodyAgainstADeclaredContentLength(t *testing.T) {
	up := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%d %v %s", r.ContentLength, r.TransferEncoding, b)
	})
	h := newHTTPHarness(t)
	for _, tc := range []struct {
		name, length, body string
		wantErr            bool
	}{
		{"a matching body", "5", "hello", false},
		{"a short body", "10", "hello", true},
		{"a long body", "3", "hello", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			head := &pooldv1.DoRequest{Method: "PUT", Url: up.URL, Headers: []*pooldv1.Header{hdr("Content-Length", tc.length)}}
			res, err := h.stream(t, testContext(t), head, tc.body)
			if tc.wantErr {
				wantFieldViolation(t, err, "body")
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := res.body.String(); got != "5 [] hello" {
				t.Errorf("upstream saw %q, want a sized body", got)
			}
		})
	}
}

func TestStreamFollowsARedirectOnlyWhenTheBodyNeedNotBeResent(t *testing.T) {
	rec, base := newRecorder(t, map[string]redirectTo{
		"/see-other": {http.StatusSeeOther, "/done"},
		"/temporary": {http.StatusTemporaryRedirect, "/done"},
	})
	h := newHTTPHarness(t)
	cases := []struct {
		path, method, body string
		wantStatus         int32
		wantRedirects      uint32
	}{
		{"/see-other", "POST", "streamed", http.StatusOK, 1},
		{"/temporary", "POST", "streamed", http.StatusTemporaryRedirect, 0},
		{"/temporary", "GET", "", http.StatusOK, 1},
	}
	for _, tc := range cases {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			res, err := h.stream(t, testContext(t), &pooldv1.DoRequest{Method: tc.method, Url: base + tc.path, MaxRedirects: 3}, tc.body)
			if err != nil {
				t.Fatal(err)
			}
			if res.head.GetStatusCode() != tc.wantStatus || res.end.GetTiming().GetRedirects() != tc.wantRedirects {
				t.Errorf("got %d after %d redirects, want %d after %d",
					res.head.GetStatusCode(), res.end.GetTiming().GetRedirects(), tc.wantStatus, tc.wantRedirects)
			}
			if first := rec.next(t); first.Body != tc.body {
				t.Errorf("first hop got body %q, want %q", first.Body, tc.body)
			}
			if tc.wantRedirects > 0 {
				if second := rec.next(t); second.Body != "" {
					t.Errorf("second hop got body %q, want none", second.Body)
				}
			}
		})
	}
}

func TestStreamEndsWithUpstreamResetWhenTheUpstreamFailsMidBody(t *testing.T) {
	const sent = 40000
	up := upstream(t, hijackAfter("HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n"+strings.Repeat("x", sent)))
	h := newHTTPHarness(t)
	res, err := h.stream(t, testContext(t), &pooldv1.DoRequest{Url: up.URL}, "")
	wantStatus(t, err, codes.Aborted, ReasonUpstreamReset)
	if res.head.GetStatusCode() != http.StatusOK {
		t.Errorf("head status %d, want the 200 that came before the failure", res.head.GetStatusCode())
	}
	if res.bodyLen != sent {
		t.Errorf("got %d body bytes, want the %d sent before the failure", res.bodyLen, sent)
	}
}

func TestCancellingStreamAbortsTheUpstreamRequest(t *testing.T) {
	s := newStall(t)
	up := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "first part")
		http.NewResponseController(w).Flush()
		s.ServeHTTP(w, r)
	})
	h := newHTTPHarness(t)
	ctx, cancel := context.WithCancel(testContext(t))
	defer cancel()
	st, err := h.client.Stream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := sendStream(st, &pooldv1.DoRequest{Url: up.URL}, nil, 1); err != nil {
		t.Fatal(err)
	}
	for got := 0; got < 2; got++ {
		if _, err := st.Recv(); err != nil {
			t.Fatalf("before the cancel: %v", err)
		}
	}
	cancel()
	_, err = st.Recv()
	wantStatus(t, err, codes.Canceled, "")
	receive(t, s.aborted, "the upstream to see the request canceled")
}

func TestStreamEndsWithoutWaitingForTheCallersHalfClose(t *testing.T) {
	up := upstream(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "answer") })
	h := newHTTPHarness(t)
	st, err := h.client.Stream(testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	// Content-Length: 0 says there is no body, so nothing waits for one;
	// the request side stays open until the call ends.
	head := &pooldv1.DoRequest{Url: up.URL, Headers: []*pooldv1.Header{hdr("Content-Length", "0")}}
	if err := st.Send(&pooldv1.StreamRequest{Msg: &pooldv1.StreamRequest_Head{Head: head}}); err != nil {
		t.Fatal(err)
	}
	res, err := recvStream(st, true)
	if err != nil {
		t.Fatal(err)
	}
	if res.body.String() != "answer" || res.end == nil {
		t.Errorf("got body %q end %v", res.body.String(), res.end)
	}
}

func TestStreamMovesLargeBodiesBothWaysInBoundedMemory(t *testing.T) {
	// gRPC's flow-control window is the one buffer in each direction. It
	// is fixed here: left to grow with the measured bandwidth-delay
	// product it may reach 16 MiB per connection each way, which is still
	// bounded but hides what poold itself holds.
	const window = 64 << 10
	size := int64(1 << 30)
	if raceEnabled {
		size = 64 << 20
	}
	up := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		out := size
		if r.URL.Path != "/big" {
			out = n
		}
		w.Header().Set("Trailer", "X-Received")
		io.Copy(w, &patternReader{n: out})
		w.Header().Set("X-Received", strconv.FormatInt(n, 10))
	})
	h := newHTTPHarness(t, withFlowControlWindow(window))
	// Warm up, so that the connections and their buffers exist before the
	// baseline is taken.
	if _, err := h.stream(t, testContext(t), &pooldv1.DoRequest{Url: up.URL, Method: "POST"}, "warm"); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	sampler := startHeapSampler()
	start := time.Now()
	st, err := h.client.Stream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sent := make(chan error, 1)
	go func() {
		sent <- sendStream(st, &pooldv1.DoRequest{Method: "POST", Url: up.URL + "/big"}, &patternReader{n: size}, streamChunkSize)
	}()
	res, err := recvStream(st, false)
	if serr := <-sent; serr != nil {
		t.Errorf("sending: %v", serr)
	}
	elapsed := time.Since(start)
	base, peak := sampler.stop()
	if err != nil {
		t.Fatalf("after %d response bytes: %v", res.bodyLen, err)
	}
	if res.bodyLen != size {
		t.Errorf("received %d response bytes, want %d", res.bodyLen, size)
	}
	if diff := cmp.Diff([]string{strconv.FormatInt(size, 10)}, headerValues(res.end.GetTrailers(), "X-Received")); diff != "" {
		t.Errorf("upstream received (-want +got):\n%s", diff)
	}
	if res.maxChunk > 32<<10 {
		t.Errorf("a body chunk has %d bytes, over 32 KiB", res.maxChunk)
	}
	t.Logf("%d MiB each way in %v; retained heap %.1f MiB at start, peak %.1f MiB; heap in use %.1f MiB at start, peak %.1f MiB",
		size>>20, elapsed.Round(time.Millisecond), mib(base.live), mib(peak.live), mib(base.inuse), mib(peak.inuse))
	// What the transfer holds on to is a few chunks in flight and gRPC's
	// buffers. The heap in use also counts garbage awaiting collection
	// (every received message is a fresh allocation), which GOGC lets grow
	// to about the live heap and which swings with CPU contention; it gets
	// a looser bound, still far below what holding a body would take.
	if growth := int64(peak.live) - int64(base.live); growth > 8<<20 {
		t.Errorf("retained heap grew by %.1f MiB moving %d MiB each way; want under 8 MiB", float64(growth)/(1<<20), size>>20)
	}
	if growth := int64(peak.inuse) - int64(base.inuse); growth > 32<<20 {
		t.Errorf("heap in use grew by %.1f MiB moving %d MiB each way; want under 32 MiB", float64(growth)/(1<<20), size>>20)
	}
}

func mib(n uint64) float64 { return float64(n) / (1 << 20) }

// heapSampler records the peak of two measures while a transfer runs: the
// heap in use (HeapInuse: live objects plus garbage not yet collected),
// read every few milliseconds, and the retained heap, the live heap right
// after a forced collection, every 100ms. A forced collection is needed for
// the second: the live heap the runtime reports after its own cycles counts
// whatever was allocated while the cycle ran, which at this allocation rate
// is several MiB of messages already dropped.
type heapSampler struct {
	base  heapSample
	quit  chan struct{}
	peakc chan heapSample
}

type heapSample struct{ inuse, live uint64 }

// retained collects and returns the live heap.
func retained(live []metrics.Sample) uint64 {
	runtime.GC()
	metrics.Read(live)
	return live[0].Value.Uint64()
}

func startHeapSampler() *heapSampler {
	live := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	var ms runtime.MemStats
	base := heapSample{live: retained(live)}
	runtime.ReadMemStats(&ms)
	base.inuse = ms.HeapInuse
	s := &heapSampler{base: base, quit: make(chan struct{}), peakc: make(chan heapSample, 1)}
	go func() {
		peak := s.base
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for i := 1; ; i++ {
			select {
			case <-s.quit:
				s.peakc <- peak
				return
			case <-tick.C:
			}
			runtime.ReadMemStats(&ms)
			peak.inuse = max(peak.inuse, ms.HeapInuse)
			if i%20 == 0 {
				peak.live = max(peak.live, retained(live))
			}
		}
	}()
	return s
}

func (s *heapSampler) stop() (base, peak heapSample) {
	close(s.quit)
	return s.base, <-s.peakc
}
