package node

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgenode/edgenode/internal/config"
)

// registerLimits exports the configured bounds that alert rules compare
// figures with (configs/prometheus/alerts.yml), so one rule fits every
// node whatever its config says: 0 means the bound is off (no alert).
// It returns the gauge of cdn.max_bytes (nil without the CDN), which a
// reload sets.
func registerLimits(reg prometheus.Registerer, cfg *config.Config) (cdnMax prometheus.Gauge, err error) {
	var gs []prometheus.Collector
	if cfg.CDN.Enabled {
		cdnMax = prometheus.NewGauge(prometheus.GaugeOpts{Name: "edgenode_cdn_max_bytes",
			Help: "cdn.max_bytes: the disk budget of the media cache (0: none)."})
		cdnMax.Set(float64(cfg.CDN.MaxBytes))
		gs = append(gs, cdnMax)
	}
	if cfg.Mongo.Enabled {
		g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "edgenode_mongo_repl_max_lag_seconds",
			Help: "mongo.max_lag: the replication lag past which the node is not ready (0: never)."})
		g.Set(cfg.Mongo.MaxLag.Seconds())
		gs = append(gs, g)
	}
	for _, g := range gs {
		if err := reg.Register(g); err != nil {
			return nil, fmt.Errorf("metrics: register the configured limits: %w", err)
		}
	}
	return cdnMax, nil
}
