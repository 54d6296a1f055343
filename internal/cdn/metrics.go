package cdn

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics: the counters the hit path touches are resolved once here, so a
// request only does atomic adds.
type metrics struct {
	requests *prometheus.CounterVec
	hit, miss, stale, staleErr, revalidated, bypass, negative, badReq, originErr,
	notModified, preconditionFailed, rangeUnsat prometheus.Counter

	coalesced      prometheus.Counter
	originRequests *prometheus.CounterVec
	originOK, originNotModified, originNotFound, originError,
	originTimeout prometheus.Counter
	originDuration prometheus.Observer
	fillFailures   *prometheus.CounterVec
	peerFills      *prometheus.CounterVec
	evictions      prometheus.Counter
	purges         prometheus.Counter
	diskBytes      prometheus.Gauge
	entries        prometheus.Gauge
	memBytes       prometheus.Gauge
	memEntries     prometheus.Gauge
	memHits        prometheus.Counter
	memEvictions   prometheus.Counter
}

// newMetrics makes the metrics of one Cache and registers them on reg. A
// registration that fails (a second Cache on one registry) is returned as an
// error, never a panic: docs/metrics.md.
func newMetrics(reg prometheus.Registerer, origin string) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgenode_cdn_requests_total",
			Help: "Media requests by how they were answered: hit, miss, stale (served while revalidating), stale_if_error, revalidated, bypass (not cacheable), negative (remembered 404), not_modified, precondition_failed, range_not_satisfiable, bad_request, origin_error.",
		}, []string{"result"}),
		coalesced: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgenode_cdn_coalesced_waiters_total",
			Help: "Requests that joined an origin fetch already running for their key instead of starting one.",
		}),
		originRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name:        "edgenode_cdn_origin_requests_total",
			Help:        "Origin GETs started by fills and revalidations, by outcome.",
			ConstLabels: prometheus.Labels{"origin": origin},
		}, []string{"result"}),
		fillFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgenode_cdn_fill_failures_total",
			Help: "Downloads that did not become cache entries, by reason.",
		}, []string{"reason"}),
		peerFills: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgenode_cdn_peer_fills_total",
			Help: "Misses asked of the owning peer, by result: ok (filled from the peer), or why the fill went to the origin: slow (no answer within the first-byte bound), unreachable, error (not 200 or malformed), stale (copy older than a purge known here), corrupt (length or MD5 mismatch, or broken stream; the fill failed and the key skips the peer for a while).",
		}, []string{"result"}),
		evictions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgenode_cdn_evictions_total",
			Help: "Entries evicted to stay within the byte and entry budgets.",
		}),
		purges: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgenode_cdn_purges_total",
			Help: "Purges applied (admin route or peers).",
		}),
		diskBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "edgenode_cdn_disk_bytes",
			Help: "Bytes of cached objects on disk.",
		}),
		entries: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "edgenode_cdn_entries",
			Help: "Cached objects.",
		}),
		memBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "edgenode_cdn_memory_bytes",
			Help: "Bytes of cached objects also held in the memory tier (small hot objects).",
		}),
		memEntries: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "edgenode_cdn_memory_entries",
			Help: "Cached objects also held in the memory tier.",
		}),
		memHits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgenode_cdn_memory_hits_total",
			Help: "Responses whose body came from the memory tier (no file read).",
		}),
		memEvictions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgenode_cdn_memory_evictions_total",
			Help: "Objects dropped from the memory tier to stay within its byte budget (they stay on disk).",
		}),
	}
	dur := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:        "edgenode_cdn_origin_duration_seconds",
		Help:        "Time from an origin GET to its answer (headers), errors included.",
		ConstLabels: prometheus.Labels{"origin": origin},
		Buckets:     []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
	})
	m.originDuration = dur
	for _, c := range []prometheus.Collector{m.requests, m.coalesced, m.originRequests, m.fillFailures, m.peerFills, m.evictions,
		m.purges, m.diskBytes, m.entries, m.memBytes, m.memEntries, m.memHits, m.memEvictions, dur} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				return nil, fmt.Errorf("cdn: register metrics (one Cache per registry): %w", err)
			}
			return nil, fmt.Errorf("cdn: register metrics: %w", err)
		}
	}
	r := m.requests.WithLabelValues
	m.hit, m.miss, m.stale, m.staleErr = r("hit"), r("miss"), r("stale"), r("stale_if_error")
	m.revalidated, m.bypass, m.negative, m.badReq = r("revalidated"), r("bypass"), r("negative"), r("bad_request")
	m.originErr, m.notModified, m.preconditionFailed = r("origin_error"), r("not_modified"), r("precondition_failed")
	m.rangeUnsat = r("range_not_satisfiable")
	o := m.originRequests.WithLabelValues
	m.originOK, m.originNotModified, m.originNotFound = o("ok"), o("not_modified"), o("not_found")
	m.originError, m.originTimeout = o("error"), o("timeout")
	for _, r := range peerResults {
		m.peerFills.WithLabelValues(r)
	}
	return m, nil
}
