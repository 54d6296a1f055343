package mongoproxy

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the front-end's; the replica core has its own
// (replica.Metrics), registered by New too.
type metrics struct {
	conns         prometheus.Gauge
	connsRejected prometheus.Counter
	badMessages   prometheus.Counter
	timeouts      *prometheus.CounterVec // by reason: idle, message, reply
	commands      *prometheus.CounterVec // by handling: forwarded, captured, refused
	writeSeconds  prometheus.Histogram   // captured write commands, end to end

	primaryKnown   prometheus.Gauge   // 1 while the upstream has a known primary
	primaryChanges prometheus.Counter // the upstream primary changed (or was lost)
	connsMoved     prometheus.Counter // client connections closed: their upstream stopped being primary
	secondaryReads prometheus.Counter // commands served by an upstream secondary
	coalesced      prometheus.Counter // reads answered with another client's identical read's reply
	sharedReads    prometheus.Counter // upstream round trips made for coalesced reads
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
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
		primaryKnown: prometheus.NewGauge(prometheus.GaugeOpts{Name: "edgenode_mongoproxy_upstream_primary_known",
			Help: "1 while the upstream database has a known primary (writes and client connections go there), 0 while it has none."}),
		primaryChanges: prometheus.NewCounter(prometheus.CounterOpts{Name: "edgenode_mongoproxy_upstream_primary_changes_total",
			Help: "Changes of the upstream database's primary as the proxy's driver saw them (a loss of the primary counts too)."}),
		connsMoved: prometheus.NewCounter(prometheus.CounterOpts{Name: "edgenode_mongoproxy_connections_moved_total",
			Help: "Client connections closed because their upstream member stopped being the primary (the driver reconnects to the new one)."}),
		secondaryReads: prometheus.NewCounter(prometheus.CounterOpts{Name: "edgenode_mongoproxy_secondary_reads_total",
			Help: "Client reads (and their getMore/killCursors) served by an upstream secondary, as their read preference allowed."}),
		coalesced: prometheus.NewCounter(prometheus.CounterOpts{Name: "edgenode_mongoproxy_coalesced_reads_total",
			Help: "Client reads answered with the reply of an identical read in flight at the same time (no upstream round trip of their own)."}),
		sharedReads: prometheus.NewCounter(prometheus.CounterOpts{Name: "edgenode_mongoproxy_shared_reads_total",
			Help: "Upstream round trips made on the proxy's pool for coalescable reads (each may answer many clients)."}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.conns, m.connsRejected, m.badMessages, m.timeouts, m.commands, m.writeSeconds, m.primaryKnown, m.primaryChanges, m.connsMoved, m.secondaryReads, m.coalesced, m.sharedReads} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("mongoproxy: register metrics: %w", err)
		}
	}
	return m, nil
}
