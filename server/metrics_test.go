package server

import (
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/poold/poold/pool"
)

// gatherPoolMetric returns metric family name's samples as label set →
// value, the labels joined as "host" or "host|reason".
func gatherPoolMetric(t *testing.T, reg *prometheus.Registry, name string) map[string]float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			key := ""
			for i, l := range m.GetLabel() {
				if i > 0 {
					key += "|"
				}
				key += l.GetValue()
			}
			out[key] = metricValue(m)
		}
	}
	return out
}

func metricValue(m *dto.Metric) float64 {
	if c := m.GetCounter(); c != nil {
		return c.GetValue()
	}
	return m.GetGauge().GetValue()
}

func TestPoolMetricsFollowTheEngineAndCapHostLabels(t *testing.T) {
	var upstreams []*httptest.Server
	for range 3 {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
		defer srv.Close()
		upstreams = append(upstreams, srv)
	}
	engine, err := pool.New(pool.Options{CountedHosts: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer engine.Close()
	client := &http.Client{Transport: engine}
	// Two requests to each upstream: the second reuses the first's conn.
	for _, u := range upstreams {
		for range 2 {
			resp, err := client.Get(u.URL)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(NewPoolCollector(engine))

	requests := gatherPoolMetric(t, reg, "poold_pool_requests_total")
	var hosts []string
	for h := range requests {
		hosts = append(hosts, h)
	}
	sort.Strings(hosts)
	if len(hosts) != 3 || !slices.Contains(hosts, OtherHosts) {
		t.Fatalf("host labels = %v, want two hosts and %q", hosts, OtherHosts)
	}
	for h, v := range requests {
		if v != 2 {
			t.Errorf("requests_total{host=%q} = %v, want 2", h, v)
		}
	}
	if got := gatherPoolMetric(t, reg, "poold_pool_reused_total"); len(got) != 3 || got[OtherHosts] != 1 {
		t.Errorf("reused_total = %v, want 1 per host", got)
	}
	idle := gatherPoolMetric(t, reg, "poold_pool_idle_connections")
	total := 0.0
	for _, v := range idle {
		total += v
	}
	if total != 3 {
		t.Errorf("idle_connections = %v, want 3 in all", idle)
	}

	engine.CloseIdle("")
	closed := gatherPoolMetric(t, reg, "poold_pool_closed_total")
	var n float64
	for labels, v := range closed {
		n += v
		if _, reason, _ := strings.Cut(labels, "|"); reason == "" {
			t.Errorf("closed_total sample %q has no reason label", labels)
		}
	}
	if n != 3 {
		t.Errorf("closed_total = %v, want 3 closes after CloseIdle", closed)
	}
}

// fixedTotals exports a snapshot made in the test, for counts the engine
// only reaches with upstreams the test cannot easily stage.
type fixedTotals struct {
	*PoolCollector
	totals []pool.HostStats
}

func (f fixedTotals) Collect(ch chan<- prometheus.Metric) { f.collect(ch, f.totals) }

func TestPoolMetricsCarryTheHTTP2CountsAndCloseReasons(t *testing.T) {
	const host = "https://a.example:443"
	reg := prometheus.NewRegistry()
	reg.MustRegister(fixedTotals{NewPoolCollector(nil), []pool.HostStats{{
		Key: host, Active: 2, H2Conns: 2, Streams: 9,
		Counters: pool.HostCounters{
			Streams: 30, GoAways: 2, RefusedStreams: 3, PingFailures: 1,
			Closed: map[pool.CloseReason]uint64{pool.CloseGoAway: 2, pool.ClosePingTimeout: 1, pool.CloseProtocolError: 4},
		},
	}}})
	tests := []struct {
		metric, labels string
		want           float64
	}{
		{"poold_pool_h2_connections", host, 2},
		{"poold_pool_active_streams", host, 9},
		{"poold_pool_streams_total", host, 30},
		{"poold_pool_goaways_total", host, 2},
		{"poold_pool_refused_streams_total", host, 3},
		{"poold_pool_ping_failures_total", host, 1},
		{"poold_pool_closed_total", host + "|goaway", 2},
		{"poold_pool_closed_total", host + "|ping_timeout", 1},
		{"poold_pool_closed_total", host + "|protocol_error", 4},
	}
	for _, tt := range tests {
		got, ok := gatherPoolMetric(t, reg, tt.metric)[tt.labels]
		if !ok || got != tt.want {
			t.Errorf("%s{%s} = %v (present %v), want %v", tt.metric, tt.labels, got, ok, tt.want)
		}
	}
}
