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
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.conns, m.connsRejected, m.badMessages, m.timeouts, m.commands, m.writeSeconds} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("mongoproxy: register metrics: %w", err)
		}
	}
	return m, nil
}
