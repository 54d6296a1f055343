package replica

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the core's counters. The names keep the proxy's prefix
// (edgenode_mongoproxy_), which dashboards already use.
type Metrics struct {
	opsCaptured   *prometheus.CounterVec // by kind
	opsApplied    *prometheus.CounterVec // by source: local, remote, replay, sync
	casRetries    prometheus.Counter
	lateApplies   prometheus.Counter
	conflicts     *prometheus.CounterVec // by reason: unique, invalid, not_replicated
	parked        prometheus.Gauge       // records in edgenode_meta.conflicts now (conflicts.go)
	compensations prometheus.Counter
	replayed      prometheus.Counter
	retryHits     prometheus.Counter
	retryEvicted  *prometheus.CounterVec // by what: expired, results, session
	groupOps      prometheus.Histogram   // single-document writes stored together, per group (group.go)
	coalesced     prometheus.Counter
	unstored      prometheus.Gauge       // local ops logged, their store given up on a transient error (Settle)
	cacheLookups  *prometheus.CounterVec // by result: hit, miss (cache.go)
	cacheBytes    prometheus.Gauge
	cacheDocs     prometheus.Gauge
}

// NewMetrics builds the core's metrics and registers them with reg (nil:
// not registered). Registering twice with one registry is an error.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		opsCaptured: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "edgenode_mongoproxy_ops_captured_total",
			Help: "Operations captured from local writes and appended to the op log."}, []string{"kind"}),
		opsApplied: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "edgenode_mongoproxy_ops_applied_total",
			Help: "Operations applied to the local database, by source."}, []string{"source"}),
		casRetries: prometheus.NewCounter(prometheus.CounterOpts{Name: "edgenode_mongoproxy_cas_retries_total",
			Help: "Document writes retried because the stored metadata version changed underneath."}),
		lateApplies: prometheus.NewCounter(prometheus.CounterOpts{Name: "edgenode_mongoproxy_late_applies_total",
			Help: "Operations that changed a document after a later op of their origin had (expected only after a failed apply; otherwise a double application)."}),
		conflicts: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "edgenode_mongoproxy_apply_conflicts_total",
			Help: "Operations that could not be applied locally and were parked in edgenode_meta.conflicts."}, []string{"reason"}),
		parked: prometheus.NewGauge(prometheus.GaugeOpts{Name: "edgenode_mongoproxy_conflicts_parked",
			Help: "Operations parked in edgenode_meta.conflicts now, waiting to be resolved (edgenode conflicts list)."}),
		compensations: prometheus.NewCounter(prometheus.CounterOpts{Name: "edgenode_mongoproxy_compensations_total",
			Help: "Local writes logged but refused by the database (unique index), undone by a compensating op."}),
		replayed: prometheus.NewCounter(prometheus.CounterOpts{Name: "edgenode_mongoproxy_replayed_ops_total",
			Help: "Operations re-applied from the op log at start."}),
		retryHits: prometheus.NewCounter(prometheus.CounterOpts{Name: "edgenode_mongoproxy_retried_statements_total",
			Help: "Statements of retried writes answered with their recorded result instead of being applied again."}),
		retryEvicted: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "edgenode_mongoproxy_retry_records_evicted_total",
			Help: "Retryable-write session records removed: expired (after the session timeout), or early because of mongo.retry_records_bytes (results: the results went, a retry gets 217; session: everything went)."}, []string{"what"}),
		groupOps: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "edgenode_mongoproxy_write_group_ops",
			Help:    "Single-document writes stored together (one document read, one op log append, one database write) per group; the count is the groups, the sum the writes.",
			Buckets: []float64{1, 2, 4, 8, 16, 32, 64}}),
		coalesced: prometheus.NewCounter(prometheus.CounterOpts{Name: "edgenode_mongoproxy_coalesced_ops_total",
			Help: "Single-document writes stored in another writer's group, saving their own read, op log append and database write."}),
		unstored: prometheus.NewGauge(prometheus.GaugeOpts{Name: "edgenode_mongoproxy_unstored_ops",
			Help: "Local operations logged whose database write gave up on a transient error (no primary for mongo store retry); stored as soon as the database has a primary again. Non-zero while the database cannot take writes."}),
		cacheLookups: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "edgenode_mongoproxy_doc_cache_lookups_total",
			Help: "Document reads before a write or a peer's op, by result: hit (served from the document cache, no database read) or miss."}, []string{"result"}),
		cacheBytes: prometheus.NewGauge(prometheus.GaugeOpts{Name: "edgenode_mongoproxy_doc_cache_bytes",
			Help: "Memory charged to the document cache (an estimate: about three times each document's stored size), bounded by mongo.doc_cache_bytes."}),
		cacheDocs: prometheus.NewGauge(prometheus.GaugeOpts{Name: "edgenode_mongoproxy_doc_cache_documents",
			Help: "Documents in the document cache."}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.opsCaptured, m.opsApplied, m.casRetries, m.lateApplies, m.conflicts, m.parked, m.compensations, m.replayed, m.retryHits, m.retryEvicted, m.groupOps, m.coalesced, m.unstored, m.cacheLookups, m.cacheBytes, m.cacheDocs} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("replica: register metrics: %w", err)
		}
	}
	return m, nil
}
