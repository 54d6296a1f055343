package rum

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	beacons       *prometheus.CounterVec
	networks      prometheus.Gauge
	preferred     prometheus.Gauge
	remoteDigests prometheus.Gauge
	digestsBad    prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		beacons: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "edgenode_rum_beacons_total",
			Help: "Round-trip beacons posted by browsers, by result (ok, or why refused)."}, []string{"result"}),
		networks: prometheus.NewGauge(prometheus.GaugeOpts{Name: "edgenode_rum_networks",
			Help: "Client networks (/24, /48) this node holds measurements of (at most dns.measured.max_networks)."}),
		preferred: prometheus.NewGauge(prometheus.GaugeOpts{Name: "edgenode_rum_preferred_networks",
			Help: "Client networks with enough samples for DNS to prefer a node by its measured median."}),
		remoteDigests: prometheus.NewGauge(prometheus.GaugeOpts{Name: "edgenode_rum_peer_digests",
			Help: "Peers whose measurement digest this node holds."}),
		digestsBad: prometheus.NewCounter(prometheus.CounterOpts{Name: "edgenode_rum_peer_digests_bad_total",
			Help: "Measurement digests from peers that could not be decoded (dropped)."}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.beacons, m.networks, m.preferred, m.remoteDigests, m.digestsBad} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("rum: metrics: %w", err)
			}
		}
	}
	return m, nil
}
