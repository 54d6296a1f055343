package oplog

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	appends       *prometheus.CounterVec
	batchOps      prometheus.Histogram
	commitSeconds prometheus.Histogram
	commitErrors  prometheus.Counter
	bytes         prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer, l *Log) (*metrics, error) {
	m := &metrics{
		appends: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgenode_oplog_appends_total",
			Help: "Ops written to the op log, by kind (local: captured here; remote: from peers, duplicates excluded).",
		}, []string{"kind"}),
		batchOps: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "edgenode_oplog_batch_ops",
			Help:    "Ops per committed transaction (group commit: concurrent appends share one fsync).",
			Buckets: prometheus.ExponentialBuckets(1, 2, 12),
		}),
		commitSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "edgenode_oplog_commit_seconds",
			Help:    "Duration of one op log transaction commit, dominated by its fsync.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}),
		commitErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgenode_oplog_commit_errors_total",
			Help: "Op log transactions that failed (their appends returned an error and wrote nothing).",
		}),
		bytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "edgenode_oplog_bytes",
			Help: "Size of the op log file in bytes.",
		}),
	}
	entries := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "edgenode_oplog_entries",
		Help: "Ops stored in the op log.",
	}, func() float64 { return float64(l.Entries()) })
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.appends, m.batchOps, m.commitSeconds, m.commitErrors, m.bytes, entries} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				return nil, fmt.Errorf("oplog: metrics already registered (one Log per registry): %w", err)
			}
			return nil, fmt.Errorf("oplog: register metrics: %w", err)
		}
	}
	return m, nil
}
