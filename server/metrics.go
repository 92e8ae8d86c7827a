package server

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/poold/poold/pool"
)

// OtherHosts is the host label under which hosts beyond the metrics cap are
// summed, so that a caller sending requests to many hosts cannot blow up the
// metrics' cardinality.
const OtherHosts = "_other"

// PoolCollector exports the engine's per-host gauges and counters to
// Prometheus. The engine keeps the counters as events happen; a scrape only
// copies a snapshot of them. Which hosts get a label of their own is the
// engine's choice (pool.Options.CountedHosts, first come first served), so
// that a series keeps its host as pools come and go and no counter goes
// down when an unused pool is removed.
type PoolCollector struct {
	engine *pool.Engine

	active, idle, dialing, pending *prometheus.Desc
	requests, dials, dialErrors    *prometheus.Desc
	reused, retries, overflows     *prometheus.Desc
	errors, closed, timeouts       *prometheus.Desc
	h2Conns, activeStreams         *prometheus.Desc
	streams, goAways               *prometheus.Desc
	refusedStreams, pingFailures   *prometheus.Desc
}

// NewPoolCollector exports engine's pools: a host label for each host the
// engine counts on its own, and the rest summed under host="_other".
func NewPoolCollector(engine *pool.Engine) *PoolCollector {
	host := []string{"host"}
	desc := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("poold_pool_"+name, help, append(host, labels...), nil)
	}
	return &PoolCollector{
		engine:     engine,
		active:     desc("active_connections", "Connections serving a request."),
		idle:       desc("idle_connections", "Connections open and waiting for a request."),
		dialing:    desc("dialing_connections", "Connections being dialed."),
		pending:    desc("pending_requests", "Requests waiting for a connection."),
		requests:   desc("requests_total", "Requests started."),
		dials:      desc("dials_total", "Dials started."),
		dialErrors: desc("dial_errors_total", "Dials that failed."),
		reused:     desc("reused_total", "Requests served on a reused connection."),
		retries:    desc("retries_total", "Idempotent requests retried after a reused connection failed."),
		overflows:  desc("queue_overflows_total", "Requests refused because the wait queue was full."),
		errors:     desc("errors_total", "Requests that failed."),
		closed:     desc("closed_total", "Connections closed, by reason.", "reason"),
		timeouts:   desc("timeouts_total", "Requests that timed out, by phase.", "phase"),

		h2Conns:        desc("h2_connections", "HTTP/2 connections among the active and idle ones."),
		activeStreams:  desc("active_streams", "Requests in flight on HTTP/2 connections, one stream each."),
		streams:        desc("streams_total", "Requests sent as HTTP/2 streams."),
		goAways:        desc("goaways_total", "GOAWAY frames received."),
		refusedStreams: desc("refused_streams_total", "HTTP/2 streams the upstream refused unprocessed (REFUSED_STREAM, or above a GOAWAY's last stream)."),
		pingFailures:   desc("ping_failures_total", "HTTP/2 PINGs left unanswered for h2_ping_timeout."),
	}
}

// Describe implements prometheus.Collector.
func (c *PoolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.active, c.idle, c.dialing, c.pending, c.requests, c.dials,
		c.dialErrors, c.reused, c.retries, c.overflows, c.errors, c.closed, c.timeouts,
		c.h2Conns, c.activeStreams, c.streams, c.goAways, c.refusedStreams, c.pingFailures} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *PoolCollector) Collect(ch chan<- prometheus.Metric) {
	c.collect(ch, c.engine.Totals())
}

// collect exports one snapshot of the engine's totals.
func (c *PoolCollector) collect(ch chan<- prometheus.Metric, totals []pool.HostStats) {
	for _, h := range totals {
		if h.Key == "" {
			h.Key = OtherHosts
		}
		gauge := func(d *prometheus.Desc, v int) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v), h.Key)
		}
		counter := func(d *prometheus.Desc, v uint64, labels ...string) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), append([]string{h.Key}, labels...)...)
		}
		gauge(c.active, h.Active)
		gauge(c.idle, h.Idle)
		gauge(c.dialing, h.Dialing)
		gauge(c.pending, h.Pending)
		gauge(c.h2Conns, h.H2Conns)
		gauge(c.activeStreams, h.Streams)
		k := h.Counters
		counter(c.requests, k.Requests)
		counter(c.dials, k.Dials)
		counter(c.dialErrors, k.DialErrors)
		counter(c.reused, k.Reused)
		counter(c.retries, k.Retries)
		counter(c.overflows, k.QueueOverflows)
		counter(c.errors, k.Errors)
		counter(c.streams, k.Streams)
		counter(c.goAways, k.GoAways)
		counter(c.refusedStreams, k.RefusedStreams)
		counter(c.pingFailures, k.PingFailures)
		for reason, n := range k.Closed {
			counter(c.closed, n, string(reason))
		}
		for phase, n := range k.TimeoutsByPhase {
			counter(c.timeouts, n, string(phase))
		}
	}
}
