package server

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// storeUpWithin is how recently the backend must have said the store is
// current for the store to count as up: a few progress intervals.
const storeUpWithin = 3 * time.Second

// PolicyStoreCollector exports how current a PolicyStore is, so that an
// operator sees a replica serving policies etcd has moved past.
type PolicyStoreCollector struct {
	store                      *PolicyStore
	up, revision, age, restart *prometheus.Desc
}

var _ prometheus.Collector = (*PolicyStoreCollector)(nil)

// NewPolicyStoreCollector returns the collector of s's metrics.
func NewPolicyStoreCollector(s *PolicyStore) *PolicyStoreCollector {
	return &PolicyStoreCollector{
		store:    s,
		up:       prometheus.NewDesc("poold_policy_store_up", "1 when the policy store has loaded and its backend said it was current within the last 3s.", nil, nil),
		revision: prometheus.NewDesc("poold_policy_store_revision", "The highest backend revision applied to the engine.", nil, nil),
		age:      prometheus.NewDesc("poold_policy_store_sync_age_seconds", "Seconds since the backend last said the policies served are current (0 for a policy file; absent before the first load).", nil, nil),
		restart:  prometheus.NewDesc("poold_policy_store_watch_restarts_total", "Times the watch on the backend broke or fell behind a compaction and the store listed again.", nil, nil),
	}
}

// Describe sends the metrics' descriptions.
func (c *PolicyStoreCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.up
	ch <- c.revision
	ch <- c.age
	ch <- c.restart
}

// Collect sends the current values.
func (c *PolicyStoreCollector) Collect(ch chan<- prometheus.Metric) {
	age, loaded := c.store.Staleness()
	up := 0.0
	if loaded && age < storeUpWithin {
		up = 1
	}
	ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, up)
	ch <- prometheus.MustNewConstMetric(c.revision, prometheus.GaugeValue, float64(c.store.sync.rev.Load()))
	if loaded {
		ch <- prometheus.MustNewConstMetric(c.age, prometheus.GaugeValue, age.Seconds())
	}
	ch <- prometheus.MustNewConstMetric(c.restart, prometheus.CounterValue, float64(c.store.sync.restarts.Load()))
}
