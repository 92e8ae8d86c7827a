package server

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	pooldv1 "github.com/poold/poold/gen/poold/v1"
	"github.com/poold/poold/pool"
)

// syncBuffer is a log destination safe for the server's goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// lines returns the logged records, decoded.
func (b *syncBuffer) lines(t *testing.T) []map[string]any {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(b.buf.String()), "\n") {
		if l == "" {
			continue
		}
		var rec map[string]any
		if err := json.Unmarshal([]byte(l), &rec); err != nil {
			t.Fatalf("log line %q: %v", l, err)
		}
		out = append(out, rec)
	}
	return out
}

// newObservedServer is the whole gRPC server, as the daemon builds it,
// logging JSON at level to the returned buffer.
func newObservedServer(t *testing.T, level slog.Level, accessLog bool) (pooldv1.HTTPServiceClient, *syncBuffer, *prometheus.Registry) {
	t.Helper()
	return newObservedServerWith(t, level, accessLog, pool.Options{}, false)
}

// newObservedServerWith is newObservedServer with an engine of opts (no
// proxy from the environment, whatever opts say) and RevealErrorDetail.
func newObservedServerWith(t *testing.T, level slog.Level, accessLog bool, opts pool.Options, reveal bool) (pooldv1.HTTPServiceClient, *syncBuffer, *prometheus.Registry) {
	t.Helper()
	engine, store := newEngineAndStore(t, opts, "")
	logs := &syncBuffer{}
	reg := prometheus.NewRegistry()
	srv, err := New(Config{
		Engine:     engine,
		Policies:   store,
		Logger:     slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: level})),
		AccessLog:  accessLog,
		Registerer: reg,

		RevealErrorDetail: reveal,
		Transport:         Transport{StreamWorkers: 4, SharedWriteBuffer: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	_, cc, _ := serveTest(t, srv, nil)
	return pooldv1.NewHTTPServiceClient(cc), logs, reg
}

func TestCallsAreLoggedAsConfigured(t *testing.T) {
	up := upstream(t, func(w http.ResponseWriter, r *http.Request) {})
	for _, tc := range []struct {
		name      string
		level     slog.Level
		accessLog bool
		// the messages logged for one good call and one bad one, in order
		want []string
	}{
		{"failures only, by default", slog.LevelInfo, false, []string{"call failed"}},
		{"a dropped level costs the line", slog.LevelWarn, false, nil},
		{"access log", slog.LevelInfo, true, []string{"finished call", "finished call"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client, logs, reg := newObservedServer(t, tc.level, tc.accessLog)
			ctx := testContext(t)
			if _, err := client.Do(ctx, &pooldv1.DoRequest{Url: up.URL}); err != nil {
				t.Fatalf("Do: %v", err)
			}
			_, err := client.Do(ctx, &pooldv1.DoRequest{Url: "ftp://example.com/"})
			wantFieldViolation(t, err, "url")

			var got []string
			for _, rec := range logs.lines(t) {
				got = append(got, rec["msg"].(string))
				if rec["grpc.code"] == "InvalidArgument" && rec["level"] != "INFO" {
					t.Errorf("failure logged as %v", rec)
				}
			}
			if strings.Join(got, "|") != strings.Join(tc.want, "|") {
				t.Errorf("logged %q, want %q", got, tc.want)
			}
			// Metrics are kept whatever is logged.
			for code, want := range map[string]float64{"OK": 1, "InvalidArgument": 1} {
				c, err := handledCounter(reg, "/poold.v1.HTTPService/Do", code)
				if err != nil || c != want {
					t.Errorf("grpc_server_handled_total{grpc_code=%q} = %v (%v), want %v", code, c, err, want)
				}
			}
			if n := testutil.CollectAndCount(reg, "grpc_server_handling_seconds"); n < 1 {
				t.Errorf("grpc_server_handling_seconds has %d series", n)
			}
		})
	}
}

// handledCounter reads grpc_server_handled_total for one method and code.
func handledCounter(reg *prometheus.Registry, method, code string) (float64, error) {
	families, err := reg.Gather()
	if err != nil {
		return 0, err
	}
	service, name, _ := strings.Cut(strings.TrimPrefix(method, "/"), "/")
	for _, f := range families {
		if f.GetName() != "grpc_server_handled_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["grpc_service"] == service && labels["grpc_method"] == name && labels["grpc_code"] == code {
				return m.GetCounter().GetValue(), nil
			}
		}
	}
	return 0, nil
}
