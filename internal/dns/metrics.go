package dns

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

var qtypeLabels = [...]string{"A", "NS", "CNAME", "SOA", "MX", "TXT", "AAAA", "CAA", "ANY", "other", "none"}

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

var rcodeLabels = [...]string{"NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "NOTAUTH", "BADVERS", "other"}

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
// its own tally and pre-resolved counters, so counting costs no allocation
// and, for the per-query figures, no cache line shared between sockets.
type metrics struct {
	talliesMu sync.Mutex
	tallies   []*tally  // every tally ever made, summed at scrape time
	common    [2]*tally // by transport: TCP connections, and callers without their own
	answers   *prometheus.CounterVec
	networks  prometheus.Gauge
	locs      prometheus.Gauge
	build     prometheus.Gauge
	builds    *prometheus.CounterVec
	mapVer    prometheus.Gauge
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
	// measuredAnswers counts dynamic answers led by a measured preference.
	measuredAnswers prometheus.Counter
}

// latBuckets are the upper bounds of edgenode_dns_answer_duration_seconds.
var latBuckets = [...]float64{10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 50e-3}

// tally counts queries for one writer: one UDP socket's serving goroutine,
// or many (TCP). Summed at scrape time, per-socket tallies cost the serving
// path an uncontended atomic add per figure, where one shared counter
// would bounce its cache line between the cores at every query.
type tally struct {
	tr      int
	queries [len(qtypeLabels)][len(rcodeLabels)]atomic.Uint64
	dropped [nDrop]atomic.Uint64
	slipped atomic.Uint64
	lat     [len(latBuckets) + 1]atomic.Uint64 // per bucket, not cumulative; the last is +Inf
	latSum  atomic.Uint64                      // nanoseconds
	_       [64]byte                           // no cache line shared with the next allocation
}

func (t *tally) query(q *query, rcode int) { t.queries[qtypeIndex(q)][rcodeIndex(rcode)].Add(1) }

func (t *tally) drop(reason int) { t.dropped[reason].Add(1) }

// observe counts n answers that took d each.
func (t *tally) observe(d time.Duration, n int) {
	sec := d.Seconds()
	i := 0
	for i < len(latBuckets) && sec > latBuckets[i] {
		i++
	}
	t.lat[i].Add(uint64(n))
	t.latSum.Add(uint64(max(d, 0)) * uint64(n))
}

// newTally makes a tally for one more writer on transport tr.
func (m *metrics) newTally(tr int) *tally {
	t := &tally{tr: tr}
	m.talliesMu.Lock()
	m.tallies = append(m.tallies, t)
	m.talliesMu.Unlock()
	return t
}

// tallyCollector exports the tallies' sums.
type tallyCollector struct {
	m                                  *metrics
	queries, dropped, slipped, latency *prometheus.Desc
}

func (c *tallyCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.queries
	ch <- c.dropped
	ch <- c.slipped
	ch <- c.latency
}

func (c *tallyCollector) Collect(ch chan<- prometheus.Metric) {
	var (
		queries [2][len(qtypeLabels)][len(rcodeLabels)]uint64
		dropped [nDrop]uint64
		slipped uint64
		lat     [2][len(latBuckets) + 1]uint64
		latSum  [2]uint64
	)
	c.m.talliesMu.Lock()
	for _, t := range c.m.tallies {
		for qi := range t.queries {
			for ri := range t.queries[qi] {
				queries[t.tr][qi][ri] += t.queries[qi][ri].Load()
			}
		}
		for i := range t.dropped {
			dropped[i] += t.dropped[i].Load()
		}
		slipped += t.slipped.Load()
		for i := range t.lat {
			lat[t.tr][i] += t.lat[i].Load()
		}
		latSum[t.tr] += t.latSum.Load()
	}
	c.m.talliesMu.Unlock()

	// A query series appears once it has counted something, as before
	// per-socket tallies; the others are there from the start.
	for tr := range queries {
		for qi := range queries[tr] {
			for ri, v := range queries[tr][qi] {
				if v > 0 {
					ch <- prometheus.MustNewConstMetric(c.queries, prometheus.CounterValue, float64(v),
						qtypeLabels[qi], rcodeLabels[ri], transportLabels[tr])
				}
			}
		}
	}
	for i, v := range dropped {
		ch <- prometheus.MustNewConstMetric(c.dropped, prometheus.CounterValue, float64(v), dropLabels[i])
	}
	ch <- prometheus.MustNewConstMetric(c.slipped, prometheus.CounterValue, float64(slipped))
	for tr := range lat {
		buckets := make(map[float64]uint64, len(latBuckets))
		var cum uint64
		for i, b := range latBuckets {
			cum += lat[tr][i]
			buckets[b] = cum
		}
		cum += lat[tr][len(latBuckets)]
		ch <- prometheus.MustNewConstHistogram(c.latency, cum, float64(latSum[tr])/1e9, buckets, transportLabels[tr])
	}
}

// newMetrics makes the server's metrics and registers them on reg (nil:
// nowhere). A registration that fails (a second Server on one registry) is
// returned as an error, never a panic: docs/metrics.md.
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		answers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgenode_dns_dynamic_answers_total",
			Help: "Dynamic-name answers, by the node they put first.",
		}, []string{"node"}),
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
		measuredAnswers: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgenode_dns_measured_answers_total",
			Help: "Dynamic answers led by the node browsers in the client's network measured fastest (dns.measured).",
		}),
	}
	for _, r := range []string{"max_conns", "conns_per_ip"} {
		m.tcpRefused.WithLabelValues(r)
	}
	for tr := range m.common {
		m.common[tr] = m.newTally(tr)
	}
	tc := &tallyCollector{
		m: m,
		queries: prometheus.NewDesc("edgenode_dns_queries_total",
			"DNS queries answered, by query type, response code and transport.", []string{"qtype", "rcode", "transport"}, nil),
		dropped: prometheus.NewDesc("edgenode_dns_dropped_total", "Packets not answered, by reason.", []string{"reason"}, nil),
		slipped: prometheus.NewDesc("edgenode_dns_rrl_slipped_total",
			"Rate-limited responses sent truncated instead of dropped.", nil, nil),
		latency: prometheus.NewDesc("edgenode_dns_answer_duration_seconds",
			"Time from reading a query to writing its answer. Over UDP, from reading a batch of queries to "+
				"writing its answers, for each of them.", []string{"transport"}, nil),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{tc, m.answers, m.networks, m.locs, m.build,
		m.builds, m.mapVer, m.tcpRefused, m.unverified, m.unready, m.unreadyPools, m.unreadyAnswers, m.measuredAnswers} {
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
