package mongoproxy

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	conns         prometheus.Gauge
	connsRejected prometheus.Counter
	badMessages   prometheus.Counter
	timeouts      *prometheus.CounterVec // by reason: idle, message, reply
	commands      *prometheus.CounterVec // by handling: forwarded, captured, refused
	writeSeconds  prometheus.Histogram   // captured write commands, end to end
	opsCaptured   *prometheus.CounterVec // by kind
	opsApplied    *prometheus.CounterVec // by source: local, remote, replay
	casRetries    prometheus.Counter
	lateApplies   prometheus.Counter
	conflicts     *prometheus.CounterVec // by reason: unique, invalid
	compensations prometheus.Counter
	replayed      prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		conns: prometheus.NewGauge(prometheus.GaugeOpts{Name: "edgenode_mongoproxy_connections",
			Help: "Client connections currently open through the Mongo proxy."}),
		connsRejected: prometheus.NewCounter(prometheus.CounterOpts{Name: "edgenode_mongoproxy_connections_rejected_total",
			Help: "Client connections closed at once because max_conns was reached."}),
		badMessages: prometheus.NewCounter(prometheus.CounterOpts{Name: "edgenode_mongoproxy_bad_messages_total",
			Help: "Malformed or unsupported wire messages from clients (their connection is closed)."}),
		timeouts: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "edgenode_mongoproxy_client_timeouts_total",
			Help: "Client connections closed for a timeout: idle (no message within the idle timeout), message (a message not received in full within the message timeout), reply (a reply the client did not take within it)."}, []string{"reason"}),
		commands: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "edgenode_mongoproxy_commands_total",
			Help: "Client commands by how the proxy handled them."}, []string{"handling"}),
		writeSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "edgenode_mongoproxy_write_seconds",
			Help:    "Time to capture, log (fsync) and apply a write command on a replicated collection.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}),
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
		compensations: prometheus.NewCounter(prometheus.CounterOpts{Name: "edgenode_mongoproxy_compensations_total",
			Help: "Local writes logged but refused by the database (unique index), undone by a compensating op."}),
		replayed: prometheus.NewCounter(prometheus.CounterOpts{Name: "edgenode_mongoproxy_replayed_ops_total",
			Help: "Operations re-applied from the op log at start."}),
	}
	if reg != nil {
		reg.MustRegister(m.conns, m.connsRejected, m.badMessages, m.timeouts, m.commands, m.writeSeconds, m.opsCaptured,
			m.opsApplied, m.casRetries, m.lateApplies, m.conflicts, m.compensations, m.replayed)
	}
	return m
}
