package server

import (
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"go.opentelemetry.io/otel/attribute"
	otelcodes "go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/stats"

	pooldv1 "github.com/poold/poold/gen/poold/v1"
	"github.com/poold/poold/pool"
)

const doSpan = "poold.v1.HTTPService/Do"

// wantChildOf checks that span continues the trace of parent as its child.
func wantChildOf(t *testing.T, span tracetest.SpanStub, parent trace.SpanContext) {
	t.Helper()
	if span.SpanContext.TraceID() != parent.TraceID() || span.Parent.SpanID() != parent.SpanID() {
		t.Fatalf("span %s is in trace %s under %s, want trace %s under %s",
			span.Name, span.SpanContext.TraceID(), span.Parent.SpanID(), parent.TraceID(), parent.SpanID())
	}
}

// wantAttrs checks the attributes of span that want names.
func wantAttrs(t *testing.T, span tracetest.SpanStub, want map[attribute.Key]attribute.Value) {
	t.Helper()
	got := attrs(span)
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("span %s: %s = %v, want %v", span.Name, k, g.Emit(), v.Emit())
		}
	}
}

// wantPhases checks that the children of span are the named phases, each
// inside span, and returns them by name.
func wantPhases(t *testing.T, sink *spanSink, span tracetest.SpanStub, want ...string) map[string]tracetest.SpanStub {
	t.Helper()
	children := sink.children(span)
	names := spanNames(children)
	slices.Sort(names)
	want = slices.Sorted(slices.Values(want))
	if diff := cmp.Diff(want, names); diff != "" {
		t.Fatalf("children of %s (-want +got):\n%s", span.Name, diff)
	}
	out := map[string]tracetest.SpanStub{}
	for _, c := range children {
		if c.StartTime.Before(span.StartTime) || c.EndTime.After(span.EndTime) || c.EndTime.Before(c.StartTime) {
			t.Errorf("%s runs from %v to %v, outside %s (%v to %v)", c.Name, c.StartTime, c.EndTime, span.Name, span.StartTime, span.EndTime)
		}
		out[c.Name] = c
	}
	return out
}

// wantInOrder checks that each span ends before the next one starts.
func wantInOrder(t *testing.T, spans ...tracetest.SpanStub) {
	t.Helper()
	for i := 1; i < len(spans); i++ {
		if spans[i].StartTime.Before(spans[i-1].EndTime) {
			t.Errorf("%s starts at %v, before %s ends at %v", spans[i].Name, spans[i].StartTime, spans[i-1].Name, spans[i-1].EndTime)
		}
	}
}

func TestATracedDoContinuesTheCallersTraceWithASpanPerPhase(t *testing.T) {
	d := startTracedDaemon(t, true)
	seen := newHeaderRecorder()
	up := upstream(t, seen.ServeHTTP)
	target := up.URL + "/path?token=secret"

	if _, err := d.http.Do(d.tracedIn, &pooldv1.DoRequest{Url: target}); err != nil {
		t.Fatal(err)
	}
	server := d.spans.wait(t, doSpan)
	wantChildOf(t, server, d.parent)
	if server.SpanKind != trace.SpanKindServer {
		t.Errorf("span kind %v, want server", server.SpanKind)
	}
	wantAttrs(t, server, map[attribute.Key]attribute.Value{
		"http.request.method":       attribute.StringValue("GET"),
		"url.full":                  attribute.StringValue(up.URL + "/path"),
		"http.response.status_code": attribute.IntValue(200),
		"poold.pool.key":            attribute.StringValue(up.URL),
		"poold.connection.reused":   attribute.BoolValue(false),
	})
	// A fresh dial to an IP literal resolves nothing: no DNS span. The
	// dial runs during the wait for a conn.
	phases := wantPhases(t, d.spans, server, spanQueued, spanConnect, spanTimeToFirstByte)
	queued, connect := phases[spanQueued], phases[spanConnect]
	if connect.StartTime.Before(queued.StartTime) || connect.EndTime.After(queued.EndTime) {
		t.Errorf("connect (%v to %v) is not inside the wait for a conn (%v to %v)", connect.StartTime, connect.EndTime, queued.StartTime, queued.EndTime)
	}
	wantInOrder(t, queued, phases[spanTimeToFirstByte])
	if h := receive(t, seen, "the request upstream"); h.Get("Traceparent") != "" {
		t.Errorf("upstream got traceparent %q, which the default policy does not send", h.Get("Traceparent"))
	}

	// The same conn again: nothing to dial.
	d.spans.Reset()
	if _, err := d.http.Do(d.tracedIn, &pooldv1.DoRequest{Url: target}); err != nil {
		t.Fatal(err)
	}
	receive(t, seen, "the second request upstream")
	server = d.spans.wait(t, doSpan)
	wantAttrs(t, server, map[attribute.Key]attribute.Value{"poold.connection.reused": attribute.BoolValue(true)})
	wantPhases(t, d.spans, server, spanQueued, spanTimeToFirstByte)
}

func TestATracedDoOverTLSHasAHandshakeSpanAfterTheConnect(t *testing.T) {
	d := startTracedDaemon(t, true)
	up := d.tlsUpstream(t, newHeaderRecorder().ServeHTTP)

	resp, err := d.http.Do(d.tracedIn, &pooldv1.DoRequest{Url: up.URL + "/"})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetTiming().GetTlsHandshake() == nil {
		t.Fatalf("timing %v has no TLS handshake", resp.GetTiming())
	}
	server := d.spans.wait(t, doSpan)
	wantChildOf(t, server, d.parent)
	phases := wantPhases(t, d.spans, server, spanQueued, spanConnect, spanTLSHandshake, spanTimeToFirstByte)
	wantInOrder(t, phases[spanConnect], phases[spanTLSHandshake], phases[spanTimeToFirstByte])
	if got, want := phases[spanTLSHandshake].EndTime.Sub(phases[spanTLSHandshake].StartTime), resp.GetTiming().GetTlsHandshake().AsDuration(); got != want {
		t.Errorf("handshake span lasts %v, timing says %v", got, want)
	}
}

func TestTheTraceContextGoesUpstreamOnlyWhereThePolicySendsIt(t *testing.T) {
	d := startTracedDaemon(t, true)
	seen := newHeaderRecorder()
	up := upstream(t, seen.ServeHTTP)
	d.propagateTo(t, "127.0.0.1")

	t.Run("sent", func(t *testing.T) {
		d.spans.Reset()
		if _, err := d.http.Do(d.tracedIn, &pooldv1.DoRequest{Url: up.URL + "/"}); err != nil {
			t.Fatal(err)
		}
		h := receive(t, seen, "the request upstream")
		server := d.spans.wait(t, doSpan)
		want := "00-" + d.parent.TraceID().String() + "-" + server.SpanContext.SpanID().String() + "-01"
		if got := h.Values("Traceparent"); len(got) != 1 || got[0] != want {
			t.Errorf("upstream got traceparent %q, want %q: the caller's trace, under poold's span", got, want)
		}
		if got := h.Get("Tracestate"); got != "caller=1" {
			t.Errorf("upstream got tracestate %q, want the caller's caller=1", got)
		}
	})
	t.Run("the caller's own traceparent", func(t *testing.T) {
		own := "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
		req := &pooldv1.DoRequest{Url: up.URL + "/", Headers: []*pooldv1.Header{{Name: "traceparent", Value: own}}}
		if _, err := d.http.Do(d.tracedIn, req); err != nil {
			t.Fatal(err)
		}
		h := receive(t, seen, "the request upstream")
		if got := h.Values("Traceparent"); len(got) != 1 || got[0] != own {
			t.Errorf("upstream got traceparent %q, want the caller's %q as it was", got, own)
		}
		if got := h.Get("Tracestate"); got != "" {
			t.Errorf("upstream got tracestate %q next to the caller's traceparent", got)
		}
	})
	t.Run("a redirect to a host whose policy does not send it", func(t *testing.T) {
		other := newHeaderRecorder()
		elsewhere := upstream(t, other.ServeHTTP)
		u, err := url.Parse(elsewhere.URL)
		if err != nil {
			t.Fatal(err)
		}
		redirector := upstream(t, func(w http.ResponseWriter, r *http.Request) {
			seen <- r.Header.Clone()
			http.Redirect(w, r, "http://localhost:"+u.Port()+"/", http.StatusFound)
		})
		if _, err := d.http.Do(d.tracedIn, &pooldv1.DoRequest{Url: redirector.URL + "/", MaxRedirects: 1}); err != nil {
			t.Fatal(err)
		}
		if h := receive(t, seen, "the first hop"); h.Get("Traceparent") == "" {
			t.Error("the first hop, on 127.0.0.1, got no traceparent")
		}
		if h := receive(t, other, "the second hop"); h.Get("Traceparent") != "" {
			t.Errorf("the second hop, on localhost, got traceparent %q, which its policy does not send", h.Get("Traceparent"))
		}
	})
}

func TestAFailedDoRecordsThePhaseThatFailed(t *testing.T) {
	d := startTracedDaemon(t, true)
	_, err := d.http.Do(d.tracedIn, &pooldv1.DoRequest{Url: "http://" + closedPort(t) + "/"})
	wantStatus(t, err, codes.Unavailable, ReasonConnectionRefused)

	server := d.spans.wait(t, doSpan)
	wantChildOf(t, server, d.parent)
	if server.Status.Code != otelcodes.Error {
		t.Errorf("span status %v, want error", server.Status)
	}
	wantAttrs(t, server, map[attribute.Key]attribute.Value{
		"rpc.response.status_code": attribute.StringValue("UNAVAILABLE"),
		"error.type":               attribute.StringValue(ReasonConnectionRefused),
		"poold.error.phase":        attribute.StringValue(string(pool.PhaseDial)),
		"poold.error.dial_step":    attribute.StringValue("connect"),
	})
}

func TestEachPipelinedRequestHasASpanOfItsOwn(t *testing.T) {
	d := startTracedDaemon(t, true)
	up := upstream(t, newHeaderRecorder().ServeHTTP)
	stream, err := d.http.Pipeline(d.tracedIn)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []*pooldv1.PipelineRequest{
		{Id: 1, Request: &pooldv1.DoRequest{Url: up.URL + "/one"}},
		{Id: 2, Request: &pooldv1.DoRequest{Method: "POST", Url: "http://" + closedPort(t) + "/two"}},
	} {
		if err := stream.Send(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := stream.Recv(); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
	}

	pipeline := d.spans.wait(t, "poold.v1.HTTPService/Pipeline")
	wantChildOf(t, pipeline, d.parent)
	get, post := d.spans.wait(t, "GET"), d.spans.wait(t, "POST")
	for _, sp := range []tracetest.SpanStub{get, post} {
		wantChildOf(t, sp, pipeline.SpanContext)
		if sp.SpanKind != trace.SpanKindClient {
			t.Errorf("%s: span kind %v, want client", sp.Name, sp.SpanKind)
		}
	}
	wantAttrs(t, get, map[attribute.Key]attribute.Value{
		"poold.pipeline.request_id": attribute.StringValue("1"),
		"url.full":                  attribute.StringValue(up.URL + "/one"),
		"server.address":            attribute.StringValue("127.0.0.1"),
		"http.response.status_code": attribute.IntValue(200),
	})
	wantPhases(t, d.spans, get, spanQueued, spanConnect, spanTimeToFirstByte)
	if get.Status.Code == otelcodes.Error {
		t.Errorf("the request that succeeded has status %v", get.Status)
	}
	wantAttrs(t, post, map[attribute.Key]attribute.Value{
		"poold.pipeline.request_id": attribute.StringValue("2"),
		"error.type":                attribute.StringValue(ReasonConnectionRefused),
		"poold.error.phase":         attribute.StringValue(string(pool.PhaseDial)),
	})
	if post.Status.Code != otelcodes.Error {
		t.Errorf("the request that failed has status %v, want error", post.Status)
	}
	if len(d.spans.children(pipeline)) != 2 {
		t.Errorf("the stream's children are %q, want one span per request", spanNames(d.spans.children(pipeline)))
	}
}

func TestATracedStreamRecordsItsPhases(t *testing.T) {
	d := startTracedDaemon(t, true)
	up := upstream(t, newHeaderRecorder().ServeHTTP)
	st, err := d.http.Stream(d.tracedIn)
	if err != nil {
		t.Fatal(err)
	}
	head := &pooldv1.DoRequest{Url: up.URL + "/s", Headers: []*pooldv1.Header{{Name: "Content-Length", Value: "0"}}}
	if err := sendStream(st, head, nil, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := recvStream(st, true); err != nil {
		t.Fatal(err)
	}
	server := d.spans.wait(t, "poold.v1.HTTPService/Stream")
	wantChildOf(t, server, d.parent)
	wantAttrs(t, server, map[attribute.Key]attribute.Value{
		"url.full":                  attribute.StringValue(up.URL + "/s"),
		"http.response.status_code": attribute.IntValue(200),
	})
	wantPhases(t, d.spans, server, spanQueued, spanConnect, spanTimeToFirstByte)
}

func TestTheHTTPAPIContinuesTheCallersTrace(t *testing.T) {
	d := startTracedDaemon(t, true)
	up := upstream(t, newHeaderRecorder().ServeHTTP)
	h, err := d.srv.HTTPAPI()
	if err != nil {
		t.Fatal(err)
	}
	api := upstream(t, h.ServeHTTP)
	req, err := http.NewRequestWithContext(testContext(t), "POST", api.URL+"/poold.v1.HTTPService/Do",
		strings.NewReader(`{"url": "`+up.URL+`/"}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Traceparent", "00-"+d.parent.TraceID().String()+"-"+d.parent.SpanID().String()+"-01")
	resp, err := api.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("HTTP API answered %d: %s", resp.StatusCode, body)
	}
	server := d.spans.wait(t, doSpan)
	wantChildOf(t, server, d.parent)
	wantPhases(t, d.spans, server, spanQueued, spanConnect, spanTimeToFirstByte)
}

func TestWithoutTracingNothingIsInstalledOrSent(t *testing.T) {
	if opts := tracingServerOptions(nil); len(opts) != 0 {
		t.Errorf("tracing off gives %d server options, want none: no stats handler", len(opts))
	}
	d := startTracedDaemon(t, false)
	if d.srv.http.tracing != nil {
		t.Error("HTTPService has a tracer with tracing off")
	}
	if _, wrapped := d.srv.http.rt.(*propagatingTransport); wrapped {
		t.Error("requests go through the propagating transport with tracing off")
	}
	seen := newHeaderRecorder()
	up := upstream(t, seen.ServeHTTP)
	d.propagateTo(t, "127.0.0.1")
	if _, err := d.http.Do(d.tracedIn, &pooldv1.DoRequest{Url: up.URL + "/"}); err != nil {
		t.Fatal(err)
	}
	if h := receive(t, seen, "the request upstream"); h.Get("Traceparent") != "" {
		t.Errorf("an untraced poold sent traceparent %q upstream", h.Get("Traceparent"))
	}
}

func TestHealthChecksAndReflectionAreNotTraced(t *testing.T) {
	for method, want := range map[string]bool{
		"/grpc.health.v1.Health/Check":                                   false,
		"/grpc.health.v1.Health/Watch":                                   false,
		"/grpc.reflection.v1.ServerReflection/ServerReflectionInfo":      false,
		"/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": false,
		"/poold.v1.HTTPService/Do":                                       true,
		"/poold.v1.PolicyService/UpdatePolicy":                           true,
	} {
		if got := tracedMethod(&stats.RPCTagInfo{FullMethodName: method}); got != want {
			t.Errorf("%s traced: %v, want %v", method, got, want)
		}
	}
}
