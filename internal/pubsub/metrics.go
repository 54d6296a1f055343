package pubsub

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	conns           *prometheus.GaugeVec
	subs            prometheus.Gauge
	channels        prometheus.Gauge
	publishes       *prometheus.CounterVec
	deliveries      prometheus.Counter
	drops           *prometheus.CounterVec
	disconnects     *prometheus.CounterVec
	refusals        *prometheus.CounterVec
	recoveries      *prometheus.CounterVec
	fanout          prometheus.Histogram
	meshBad         prometheus.Counter
	peerSent        *prometheus.CounterVec
	peerDirect      *prometheus.GaugeVec
	peerReceived    *prometheus.CounterVec
	relayed         prometheus.Counter
	syncs           *prometheus.CounterVec
	syncUnreachable prometheus.Counter
	gaps            *prometheus.CounterVec
	writerStalls    prometheus.Counter
	connsWS         prometheus.Gauge
	connsSSE        prometheus.Gauge
}

// Reasons, pre-registered so dashboards see zeros.
var (
	disconnectReasons = []string{"client_close", "read_error", "write_error", "slow_consumer", "ping_timeout",
		"protocol_error", "too_many_errors", "drain", "drain_timeout", "shutdown"}
	refusalReasons = []string{codeTokenRequired, codeTokenInvalid, codeTokenExpired, codeTokenTenant, codeTokenScope,
		codeBadChannel, codeUnknownTenant, codeTenantMismatch, codeOrigin, codeTooManySubs, codeTooManyChannels, codeRateLimited, "conns_per_ip", "draining"}
)

// newMetrics makes the metrics of one PubSub and registers them on reg. A
// registration that fails (a second PubSub on one registry) is returned as
// an error, never a panic: docs/metrics.md.
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	const ns, sub = "edgenode", "pubsub"
	m := &metrics{
		conns: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "connections",
			Help: "Open subscriber connections by transport (ws, sse).",
		}, []string{"transport"}),
		subs: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "subscriptions",
			Help: "Channel subscriptions of open connections.",
		}),
		channels: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "channels",
			Help: "Channels this node keeps (subscribed, or with recent history).",
		}),
		publishes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "publishes_total",
			Help: "Messages accepted for fan-out, by source (local: publish API; peer: the mesh).",
		}, []string{"source"}),
		deliveries: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "deliveries_total",
			Help: "Message frames written to subscriber connections (history replays included).",
		}),
		drops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "dropped_total",
			Help: "Messages not delivered to a subscriber, by reason (slow_consumer, closed, bad_peer_message).",
		}, []string{"reason"}),
		disconnects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "disconnects_total",
			Help: "Connections ended, by reason.",
		}, []string{"reason"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "refusals_total",
			Help: "Connections and subscriptions refused, by reason (token, tenant, origin and limit checks).",
		}, []string{"reason"}),
		recoveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "recoveries_total",
			Help: "Subscriptions with a position to resume from, by result (recovered, must_reload).",
		}, []string{"result"}),
		fanout: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Subsystem: sub, Name: "fanout_seconds",
			Help:    "From a publish accepted to its last local subscriber socket written.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}),
		meshBad: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "peer_messages_bad_total",
			Help: "Messages from peers that could not be decoded or named an unknown tenant.",
		}),
		peerSent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "peer_sent_total",
			Help: "Messages published here and sent to a peer that follows their channel, by peer and path (direct, or relay through another peer).",
		}, []string{"peer", "path"}),
		peerDirect: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "peer_direct",
			Help: "1 when the direct path to the peer works (heartbeats both ways), 0 when messages to it are relayed.",
		}, []string{"peer"}),
		peerReceived: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "peer_received_total",
			Help: "Messages from peers, by result: accepted, duplicate (already had it), unwanted (channel not followed here), overflow.",
		}, []string{"result"}),
		relayed: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "relayed_total",
			Help: "Messages this node forwarded from one peer to another whose direct path was down.",
		}),
		syncs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "sync_rounds_total",
			Help: "Sync rounds started, by kind: follow (first subscriber here), fetch (a resume the history here does not cover), repair (a gap).",
		}, []string{"kind"}),
		syncUnreachable: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "sync_rounds_unreachable_total",
			Help: "Sync rounds completed before their timeout because every peer still to answer had become unreachable (a node killed meanwhile).",
		}),
		gaps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "gaps_total",
			Help: "Gaps in a stream that needed a repair round, by result: repaired, lost (subscribers got must_reload).",
		}, []string{"result"}),
		writerStalls: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "writer_stalls_total",
			Help: "Websocket writer workers replaced because one write to a client (a full socket buffer) lasted over 20 ms.",
		}),
	}
	m.connsWS = m.conns.WithLabelValues("ws")
	m.connsSSE = m.conns.WithLabelValues("sse")
	for _, r := range disconnectReasons {
		m.disconnects.WithLabelValues(r)
	}
	for _, r := range refusalReasons {
		m.refusals.WithLabelValues(r)
	}
	for _, r := range []string{"slow_consumer", "closed"} {
		m.drops.WithLabelValues(r)
	}
	for _, r := range []string{"recovered", "must_reload"} {
		m.recoveries.WithLabelValues(r)
	}
	m.publishes.WithLabelValues("local")
	m.publishes.WithLabelValues("peer")
	for _, r := range []string{"accepted", "duplicate", "unwanted", "overflow"} {
		m.peerReceived.WithLabelValues(r)
	}
	for _, k := range []string{"follow", "fetch", "repair"} {
		m.syncs.WithLabelValues(k)
	}
	for _, r := range []string{"repaired", "lost"} {
		m.gaps.WithLabelValues(r)
	}
	for _, c := range []prometheus.Collector{m.conns, m.subs, m.channels, m.publishes, m.deliveries, m.drops,
		m.disconnects, m.refusals, m.recoveries, m.fanout, m.meshBad,
		m.peerSent, m.peerDirect, m.peerReceived, m.relayed, m.syncs, m.syncUnreachable, m.gaps, m.writerStalls} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("pubsub: register metrics: %w", err)
		}
	}
	return m, nil
}
