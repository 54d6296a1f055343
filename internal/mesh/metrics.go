package mesh

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics of one Mesh. Per-peer gauges (queue depth, link state) are read at
// scrape time by peerCollector instead of being set on every message.
type metrics struct {
	members      *prometheus.GaugeVec
	probeRTT     *prometheus.GaugeVec
	probeRTTHist prometheus.Histogram
	messages     *prometheus.CounterVec
	bytes        *prometheus.CounterVec
	drops        *prometheus.CounterVec
	dropBy       map[string]prometheus.Counter // drops resolved per reason once: drops happen in hot loops
	connects     *prometheus.CounterVec
	dialErrors   *prometheus.CounterVec
	refused      *prometheus.CounterVec
	mapChanges   prometheus.Counter
	joinAttempts *prometheus.CounterVec
}

// newMetrics makes the metrics of one Mesh and registers them on reg (nil:
// nowhere). A registration that fails (a second Mesh on one registry) is
// returned as an error, never a panic: docs/metrics.md.
func newMetrics(reg prometheus.Registerer, peers func() []peerStat, health func() float64) (*metrics, error) {
	const ns, sub = "edgenode", "mesh"
	m := &metrics{
		members: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "members",
			Help: "Members of the cluster in this node's node map, by state (this node included).",
		}, []string{"state"}),
		probeRTT: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "probe_rtt_seconds",
			Help: "Round trip of the last direct gossip probe to each peer.",
		}, []string{"peer"}),
		probeRTTHist: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Subsystem: sub, Name: "probe_rtt_distribution_seconds",
			Help:    "Round trips of direct gossip probes to all peers.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .2, .4, .8},
		}),
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "link_messages_total",
			Help: "Messages written to (out) or read from (in) peer links, by topic.",
		}, []string{"topic", "direction"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "link_bytes_total",
			Help: "Payload bytes written to (out) or read from (in) peer links, by topic.",
		}, []string{"topic", "direction"}),
		drops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "link_dropped_total",
			Help: "Messages dropped, by reason: queue_full, unknown_peer, peer_gone, link_error, no_handler, too_large.",
		}, []string{"reason"}),
		connects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "link_connects_total",
			Help: "Peer link connections established, by how (dialed or accepted).",
		}, []string{"how"}),
		dialErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "link_dial_errors_total",
			Help: "Failed attempts to dial a peer link.",
		}, []string{"peer"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "link_refused_total",
			Help: "Peer link handshakes refused, by reason: bad_certificate, unknown_member, address_mismatch, wrong_id, protocol_version.",
		}, []string{"reason"}),
		mapChanges: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "node_map_changes_total",
			Help: "Node maps published.",
		}),
		joinAttempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "join_attempts_total",
			Help: "Attempts to join seeds or rejoin dead members, by result.",
		}, []string{"result"}),
	}
	cs := []prometheus.Collector{
		m.members, m.probeRTT, m.probeRTTHist, m.messages, m.bytes, m.drops, m.connects,
		m.dialErrors, m.refused, m.mapChanges, m.joinAttempts,
		&peerCollector{peers: peers},
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "health_score",
			Help: "memberlist's Lifeguard health score of this node: 0 is healthy, higher means it is missing probes itself.",
		}, health),
	}
	for _, st := range []string{"alive", "draining", "suspect", "dead"} {
		m.members.WithLabelValues(st)
	}
	m.dropBy = map[string]prometheus.Counter{}
	for _, r := range []string{"queue_full", "unknown_peer", "peer_gone", "link_error", "no_handler", "too_large"} {
		m.dropBy[r] = m.drops.WithLabelValues(r)
	}
	if reg == nil {
		return m, nil
	}
	var errs []error
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("mesh: register metrics: %w", err)
	}
	return m, nil
}

type peerStat struct {
	id         string
	queueLen   int
	queueBytes int64
	drops      uint64
	up         bool
}

var (
	descQueueDepth = prometheus.NewDesc("edgenode_mesh_link_queue_depth",
		"Messages waiting in the send queue of each peer.", []string{"peer"}, nil)
	descQueueBytes = prometheus.NewDesc("edgenode_mesh_link_queue_bytes",
		"Payload bytes waiting in the send queue of each peer.", []string{"peer"}, nil)
	descPeerDrops = prometheus.NewDesc("edgenode_mesh_link_peer_dropped_total",
		"Messages for each peer dropped (any reason) since the peer was last added.", []string{"peer"}, nil)
	descLinkUp = prometheus.NewDesc("edgenode_mesh_link_up",
		"1 when the QUIC link to the peer is established, else 0.", []string{"peer"}, nil)
)

// peerCollector reports per-peer gauges for exactly the current peers, so
// nothing has to be unregistered when a peer goes away.
type peerCollector struct{ peers func() []peerStat }

func (c *peerCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descQueueDepth
	ch <- descQueueBytes
	ch <- descLinkUp
	ch <- descPeerDrops
}

func (c *peerCollector) Collect(ch chan<- prometheus.Metric) {
	for _, p := range c.peers() {
		up := 0.0
		if p.up {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(descQueueDepth, prometheus.GaugeValue, float64(p.queueLen), p.id)
		ch <- prometheus.MustNewConstMetric(descQueueBytes, prometheus.GaugeValue, float64(p.queueBytes), p.id)
		ch <- prometheus.MustNewConstMetric(descLinkUp, prometheus.GaugeValue, up, p.id)
		ch <- prometheus.MustNewConstMetric(descPeerDrops, prometheus.CounterValue, float64(p.drops), p.id)
	}
}

// drop counts n messages dropped for reason (one of the fixed reasons).
func (m *metrics) drop(reason string, n int) {
	m.dropBy[reason].Add(float64(n))
}
