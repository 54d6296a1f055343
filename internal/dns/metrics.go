package dns

import (
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

var qtypeLabels = []string{"A", "NS", "CNAME", "SOA", "MX", "TXT", "AAAA", "CAA", "ANY", "other", "none"}

func qtypeIndex(q *query) int {
	if !q.hasQuestion {
		return 10
	}
	switch q.qtype {
	case typeA:
		return 0
	case typeNS:
		return 1
	case typeCNAME:
		return 2
	case typeSOA:
		return 3
	case typeMX:
		return 4
	case typeTXT:
		return 5
	case typeAAAA:
		return 6
	case typeCAA:
		return 7
	case typeANY:
		return 8
	}
	return 9
}

var rcodeLabels = []string{"NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "NOTAUTH", "BADVERS", "other"}

func rcodeIndex(rc int) int {
	switch rc {
	case rcodeSuccess, rcodeFormErr, rcodeServFail, rcodeNXDomain, rcodeNotImp, rcodeRefused:
		return rc
	case rcodeNotAuth:
		return 6
	case rcodeBadVers:
		return 7
	}
	return 8
}

var transportLabels = [2]string{"udp", "tcp"}

const (
	dropMalformed = iota
	dropRRL
	nDrop
)

var dropLabels = [nDrop]string{"malformed", "rrl"}

// metrics are the server's Prometheus series. The serving path only touches
// pre-resolved counters and observers, so counting costs no allocation.
type metrics struct {
	queries  *prometheus.CounterVec
	cells    [11][9][2]atomic.Pointer[cell]
	latency  [2]prometheus.Observer
	answers  *prometheus.CounterVec
	dropped  [nDrop]prometheus.Counter
	slipped  prometheus.Counter
	networks prometheus.Gauge
	locs     prometheus.Gauge
	build    prometheus.Gauge
	builds   *prometheus.CounterVec
	mapVer   prometheus.Gauge
	// tcpRefused counts TCP connections closed at accept, by reason.
	tcpRefused *prometheus.CounterVec
	// unverified is the number of alive nodes left out of the answers
	// because the map does not vouch for their addresses.
	unverified prometheus.Gauge
	// unready is the number of alive, verified nodes that say they are
	// not ready; unreadyPools the pools (dynamic names' tag and address
	// family) in which no node is ready, so that answers name nodes that
	// are not; unreadyAnswers counts those answers.
	unready        prometheus.Gauge
	unreadyPools   prometheus.Gauge
	unreadyAnswers prometheus.Counter
}

type cell struct{ c prometheus.Counter }

// newMetrics makes the server's metrics and registers them on reg (nil:
// nowhere). A registration that fails (a second Server on one registry) is
// returned as an error, never a panic: docs/metrics.md.
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		queries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgenode_dns_queries_total",
			Help: "DNS queries answered, by query type, response code and transport.",
		}, []string{"qtype", "rcode", "transport"}),
		answers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgenode_dns_dynamic_answers_total",
			Help: "Dynamic-name answers, by the node they put first.",
		}, []string{"node"}),
		slipped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgenode_dns_rrl_slipped_total",
			Help: "Rate-limited responses sent truncated instead of dropped.",
		}),
		networks: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "edgenode_dns_geoindex_networks",
			Help: "Networks in the in-memory GeoIP index.",
		}),
		locs: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "edgenode_dns_geoindex_locations",
			Help: "Distinct locations in the in-memory GeoIP index.",
		}),
		build: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "edgenode_dns_geoindex_build_seconds",
			Help: "How long the last successful GeoIP index build took.",
		}),
		builds: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgenode_dns_geoindex_builds_total",
			Help: "GeoIP index builds, by result.",
		}, []string{"result"}),
		mapVer: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "edgenode_dns_nodemap_version",
			Help: "Version of the node map the answers are made from.",
		}),
		tcpRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgenode_dns_tcp_refused_total",
			Help: "TCP connections closed at accept without reading, by reason: max_conns (the server's cap), conns_per_ip (one client address's cap; IPv6 per /64).",
		}, []string{"reason"}),
		unverified: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "edgenode_dns_unverified_nodes",
			Help: "Alive nodes of the node map left out of every answer because their addresses are not verified (no mutual-TLS mesh link, or addresses their certificate does not name).",
		}),
		unready: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "edgenode_dns_unready_nodes",
			Help: "Alive, verified nodes that say they are not ready (starting, Mongo replica not synced or lagging past mongo.max_lag): left out of the dynamic answers of every pool that has a ready node.",
		}),
		unreadyPools: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "edgenode_dns_unready_fallback_pools",
			Help: "Dynamic-name pools (tag and address family) in which no node is ready, so that their answers name alive, verified nodes that are not ready rather than none.",
		}),
		unreadyAnswers: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgenode_dns_unready_fallback_answers_total",
			Help: "Dynamic answers that named nodes that are not ready because none of the name's pool was.",
		}),
	}
	for _, r := range []string{"max_conns", "conns_per_ip"} {
		m.tcpRefused.WithLabelValues(r)
	}
	lat := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "edgenode_dns_answer_duration_seconds",
		Help:    "Time from reading a query to writing its answer.",
		Buckets: []float64{10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 50e-3},
	}, []string{"transport"})
	drops := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "edgenode_dns_dropped_total",
		Help: "Packets not answered, by reason.",
	}, []string{"reason"})
	for t, l := range transportLabels {
		m.latency[t] = lat.WithLabelValues(l)
	}
	for i, l := range dropLabels {
		m.dropped[i] = drops.WithLabelValues(l)
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.queries, m.answers, m.slipped, m.networks, m.locs, m.build,
		m.builds, m.mapVer, m.tcpRefused, m.unverified, m.unready, m.unreadyPools, m.unreadyAnswers, lat, drops} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				return nil, fmt.Errorf("dns: register metrics (two servers on one registry?): %w", err)
			}
			return nil, fmt.Errorf("dns: register metrics: %w", err)
		}
	}
	return m, nil
}

func (m *metrics) query(q *query, rcode, tr int) {
	qi, ri := qtypeIndex(q), rcodeIndex(rcode)
	p := &m.cells[qi][ri][tr]
	c := p.Load()
	if c == nil {
		// First time for this combination: resolve the series once.
		c = &cell{m.queries.WithLabelValues(qtypeLabels[qi], rcodeLabels[ri], transportLabels[tr])}
		p.Store(c)
	}
	c.c.Inc()
}

func (m *metrics) drop(reason int) { m.dropped[reason].Inc() }
