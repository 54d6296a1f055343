package repl

import (
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	opsSent           *prometheus.CounterVec // by peer
	opsRelayed        *prometheus.CounterVec // by peer
	relays            prometheus.Gauge
	opsApplied        *prometheus.CounterVec // by origin node
	resends           *prometheus.CounterVec // by peer
	delay             *prometheus.HistogramVec
	applySeconds      prometheus.Histogram
	applyErrors       prometheus.Counter
	gaps              prometheus.Counter
	dropped           prometheus.Counter
	badMessages       prometheus.Counter
	lateOps           prometheus.Counter
	tooLarge          prometheus.Counter
	trimmed           prometheus.Counter
	syncs             *prometheus.CounterVec
	syncDocs          prometheus.Counter
	syncInProgress    prometheus.Gauge
	syncDocsPerSecond prometheus.Gauge
	cronLeaders       prometheus.Gauge
	clockSkew         *prometheus.CounterVec // by peer, what
	syncRefused       *prometheus.CounterVec // by peer
}

// DelayBuckets are the buckets of edgenode_mongo_repl_delay_seconds: fine
// below 100 ms, where the lag target lies.
var DelayBuckets = []float64{.001, .002, .003, .005, .0075, .01, .015, .02, .03, .04, .05, .075, .1, .15, .2, .3, .5, .75, 1, 2, 5, 10, 30, 60, 300}

func newMetrics(reg prometheus.Registerer, r *Replicator) (*metrics, error) {
	m := &metrics{
		opsSent: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "edgenode_mongo_repl_ops_sent_total",
			Help: "This node's ops sent to each peer (resends included)."}, []string{"peer"}),
		opsRelayed: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "edgenode_mongo_repl_ops_relayed_total",
			Help: "Other origins' ops this node relayed to each peer, which could not hear their origin directly (resends included)."}, []string{"peer"}),
		relays: prometheus.NewGauge(prometheus.GaugeOpts{Name: "edgenode_mongo_repl_relays",
			Help: "Streams of another origin's ops this node relays to a peer right now."}),
		opsApplied: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "edgenode_mongo_repl_ops_applied_total",
			Help: "Peers' ops applied here, by origin node."}, []string{"origin"}),
		resends: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "edgenode_mongo_repl_resends_total",
			Help: "Times a sender went back to a peer's acknowledged position (lost messages, gaps, timeouts)."}, []string{"peer"}),
		delay: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "edgenode_mongo_repl_delay_seconds",
			Help:    "Replication lag of each applied peer op: time applied here minus its origin's clock reading at capture.",
			Buckets: DelayBuckets}, []string{"origin"}),
		applySeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "edgenode_mongo_repl_apply_seconds",
			Help: "Time to log and apply one batch of a peer's ops.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}),
		applyErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "edgenode_mongo_repl_apply_errors_total",
			Help: "Batches of peers' ops whose apply failed (retried)."}),
		gaps: prometheus.NewCounter(prometheus.CounterOpts{Name: "edgenode_mongo_repl_gaps_total",
			Help: "Batches that did not follow the applied position (something was lost before them)."}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{Name: "edgenode_mongo_repl_dropped_total",
			Help: "Incoming batches dropped because the apply queue was full (the sender resends)."}),
		badMessages: prometheus.NewCounter(prometheus.CounterOpts{Name: "edgenode_mongo_repl_bad_messages_total",
			Help: "Malformed replication messages from peers (dropped)."}),
		lateOps: prometheus.NewCounter(prometheus.CounterOpts{Name: "edgenode_mongo_repl_late_ops_total",
			Help: "Peers' ops that arrived below the compaction frontier already used (clock skew beyond the stable margin)."}),
		tooLarge: prometheus.NewCounter(prometheus.CounterOpts{Name: "edgenode_mongo_repl_too_large_total",
			Help: "Attempts to send an op larger than the mesh's maximum message size."}),
		trimmed: prometheus.NewCounter(prometheus.CounterOpts{Name: "edgenode_mongo_repl_log_trimmed_total",
			Help: "Ops removed from the op log because every peer has them."}),
		syncs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "edgenode_mongo_repl_initial_syncs_total",
			Help: "Initial syncs this node ran, by result."}, []string{"result"}),
		syncDocs: prometheus.NewCounter(prometheus.CounterOpts{Name: "edgenode_mongo_repl_initial_sync_items_total",
			Help: "Items (documents, tombstones, indexes...) copied by initial syncs."}),
		syncInProgress: prometheus.NewGauge(prometheus.GaugeOpts{Name: "edgenode_mongo_repl_initial_sync_in_progress",
			Help: "1 while this node copies a peer's snapshot."}),
		syncDocsPerSecond: prometheus.NewGauge(prometheus.GaugeOpts{Name: "edgenode_mongo_repl_initial_sync_docs_per_second",
			Help: "Documents per second of the last completed initial sync."}),
		cronLeaders: prometheus.NewGauge(prometheus.GaugeOpts{Name: "edgenode_cron_leader_claims",
			Help: "Live nodes in the node map claiming cron_leader (anything but 1 is logged as a warning)."}),
		clockSkew: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "edgenode_mongo_repl_clock_skew_refused_total",
			Help: "Peers' clock readings refused for running more than mongo.max_clock_skew ahead of this node's wall clock, by peer and what carried them: ops (each time an op is refused, resends included), heartbeat, sync (a sync source's clock)."}, []string{"peer", "what"}),
		syncRefused: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "edgenode_mongo_repl_sync_refused_items_total",
			Help: "Initial-sync snapshot items not stored, by source peer: their namespace is not replicated on this node (mongo.replicate, mongo.local_only, system databases), or their record does not match it."}, []string{"peer"}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.opsSent, m.opsRelayed, m.relays, m.opsApplied, m.resends, m.delay, m.applySeconds, m.applyErrors, m.gaps, m.dropped,
		m.badMessages, m.lateOps, m.tooLarge, m.trimmed, m.syncs, m.syncDocs, m.syncInProgress, m.syncDocsPerSecond,
		m.cronLeaders, m.clockSkew, m.syncRefused, &lagCollector{r}} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("repl: register metrics: %w", err)
		}
	}
	return m, nil
}

// lagCollector computes the lag gauges at scrape time from Status.
type lagCollector struct{ r *Replicator }

var (
	descLagOps = prometheus.NewDesc("edgenode_mongo_repl_lag_ops",
		"Ops of each origin node this node has not applied yet (from the origin's heartbeat).", []string{"origin"}, nil)
	descLagSeconds = prometheus.NewDesc("edgenode_mongo_repl_lag_seconds",
		"How long this node has known of ops of each origin node it has not applied (0: caught up).", []string{"origin"}, nil)
	descPeerLagOps = prometheus.NewDesc("edgenode_mongo_repl_peer_lag_ops",
		"This node's ops each peer has not acknowledged yet.", []string{"peer"}, nil)
	descPeerLagSeconds = prometheus.NewDesc("edgenode_mongo_repl_peer_lag_seconds",
		"Age of this node's oldest op each peer has not acknowledged (0: none).", []string{"peer"}, nil)
	descRoute = prometheus.NewDesc("edgenode_mongo_repl_route",
		"1 for each origin node, labelled with the way its ops reach this node: via=\"direct\", or the peer that relays them (the direct link is down).", []string{"origin", "via"}, nil)
	descSynced = prometheus.NewDesc("edgenode_mongo_repl_synced",
		"1 when this node's database is a complete replica that streams (0: waiting for or running an initial sync).", nil, nil)
	descReady = prometheus.NewDesc("edgenode_mongo_repl_ready",
		"1 when replication considers the node ready (synced and within max_lag of every live peer).", nil, nil)
	descStableAge = prometheus.NewDesc("edgenode_mongo_repl_stable_age_seconds",
		"Wall-clock age of the compaction frontier (ops older than it are folded into documents).", nil, nil)
)

func (c *lagCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descLagOps, descLagSeconds, descPeerLagOps, descPeerLagSeconds, descRoute, descSynced, descReady, descStableAge} {
		ch <- d
	}
}

func (c *lagCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.r.Status()
	for _, o := range st.Origins {
		ch <- prometheus.MustNewConstMetric(descLagOps, prometheus.GaugeValue, float64(o.LagOps), o.Node)
		ch <- prometheus.MustNewConstMetric(descLagSeconds, prometheus.GaugeValue, o.LagSeconds, o.Node)
		via := o.Via
		if via == "" {
			via = "direct"
		}
		ch <- prometheus.MustNewConstMetric(descRoute, prometheus.GaugeValue, 1, o.Node, via)
	}
	for _, p := range st.Peers {
		ch <- prometheus.MustNewConstMetric(descPeerLagOps, prometheus.GaugeValue, float64(p.LagOps), p.Node)
		ch <- prometheus.MustNewConstMetric(descPeerLagSeconds, prometheus.GaugeValue, p.LagSeconds, p.Node)
	}
	ch <- prometheus.MustNewConstMetric(descSynced, prometheus.GaugeValue, b2f(st.State == stateNames[stateSynced]))
	ch <- prometheus.MustNewConstMetric(descReady, prometheus.GaugeValue, b2f(st.Ready))
	age := 0.0
	if s := c.r.stableNow(); s.Wall > 0 {
		age = time.Since(time.UnixMilli(s.Wall)).Seconds()
	}
	ch <- prometheus.MustNewConstMetric(descStableAge, prometheus.GaugeValue, age)
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
