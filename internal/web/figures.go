package web

import (
	"encoding/json"
	"errors"
	"math"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
)

// Metric families the status page reads from the node's registry. A family
// that is not registered (the part is off) shows as "—", never as 0.
const (
	metricHTTPConns   = "edgenode_http_connections_open"
	metricQUICConns   = "edgenode_quic_connections_open"
	metricHTTPReqs    = "edgenode_http_requests_total"
	metricSubs        = "edgenode_pubsub_subscriptions"
	metricDNSQueries  = "edgenode_dns_queries_total"
	metricCDNRequests = "edgenode_cdn_requests_total"
	metricCDNBytes    = "edgenode_cdn_disk_bytes"
	// The Mongo replication's lag to each peer ("peer" label): the age of
	// this node's oldest op the peer has not acknowledged, and how many
	// ops that is. Any other label is folded (largest value per peer).
	metricReplLagSeconds = "edgenode_mongo_repl_peer_lag_seconds"
	metricReplLagOps     = "edgenode_mongo_repl_peer_lag_ops"
	// How each peer's data reaches this node: its Mongo ops ("origin" and
	// "via" labels: direct, or the relaying peer) and its pubsub messages
	// (1 direct, 0 through a relay, by "peer").
	metricReplRoute    = "edgenode_mongo_repl_route"
	metricPubSubDirect = "edgenode_pubsub_peer_direct"
)

// cacheHitResults are the cdn results answered from the cache without the
// origin; every other result counts as a miss in the ratio.
var cacheHitResults = map[string]bool{"hit": true, "stale": true, "stale_if_error": true, "not_modified": true, "negative": true}

// Figures are one node's live numbers, computed by the node itself and
// shared with its peers on the mesh topic StatusTopic. A nil field means the
// node does not run that part.
type Figures struct {
	At         int64              `json:"at"`                    // unix milliseconds when computed
	Conns      *float64           `json:"conns,omitempty"`       // TCP + QUIC connections open on the public listener
	Subs       *float64           `json:"subs,omitempty"`        // pubsub subscriptions
	ReqPS      *float64           `json:"req_ps,omitempty"`      // HTTPS requests per second
	DNSQPS     *float64           `json:"dns_qps,omitempty"`     // DNS queries per second
	CacheHit   *float64           `json:"cache_hit,omitempty"`   // 0..1 over the last minute; nil without requests
	CacheBytes *float64           `json:"cache_bytes,omitempty"` // bytes in the media cache
	Lag        map[string]float64 `json:"lag,omitempty"`         // peer id -> replication lag in seconds
	LagOps     map[string]float64 `json:"lag_ops,omitempty"`     // peer id -> ops the peer has not acknowledged
	// Routes: peer id -> how its data reaches this node when not over the
	// direct link: "via <id>" (its Mongo ops relayed by that peer) or
	// "relayed" (pubsub through a peer that reaches it). Direct peers are
	// absent.
	Routes map[string]string `json:"routes,omitempty"`
}

// Limits on figures from peers: they come over authenticated links, but a
// bug or a newer version must not make the page unbounded.
const (
	maxFiguresBytes = 16 << 10
	maxLagPeers     = 256
	maxPeerIDLen    = 63
)

var errBadFigures = errors.New("status: bad figures")

// decodeFigures parses a peer's figures and checks them.
func decodeFigures(b []byte) (*Figures, error) {
	if len(b) > maxFiguresBytes {
		return nil, errBadFigures
	}
	var f Figures
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, errBadFigures
	}
	for _, p := range []*float64{f.Conns, f.Subs, f.ReqPS, f.DNSQPS, f.CacheHit, f.CacheBytes} {
		if p != nil && (math.IsNaN(*p) || math.IsInf(*p, 0) || *p < 0) {
			return nil, errBadFigures
		}
	}
	if f.CacheHit != nil && *f.CacheHit > 1 {
		return nil, errBadFigures
	}
	if len(f.Routes) > maxLagPeers {
		return nil, errBadFigures
	}
	for k, v := range f.Routes {
		if k == "" || len(k) > maxPeerIDLen || len(v) > maxPeerIDLen+4 {
			return nil, errBadFigures
		}
	}
	for _, m := range []map[string]float64{f.Lag, f.LagOps} {
		if len(m) > maxLagPeers {
			return nil, errBadFigures
		}
		for k, v := range m {
			if k == "" || len(k) > maxPeerIDLen || math.IsNaN(v) || math.IsInf(v, 0) || v < 0 {
				return nil, errBadFigures
			}
		}
	}
	return &f, nil
}

// sample is the raw state of the registry at one moment.
type sample struct {
	at                    time.Time
	hasConns, hasReqs     bool
	conns, reqs           float64
	hasSubs               bool
	subs                  float64
	hasDNS                bool
	dns                   float64
	hasCDN                bool
	cacheHits, cacheTotal float64
	cacheBytes            float64
	lag, lagOps           map[string]float64
	routes                map[string]string
}

// takeSample reads the families the page shows. parts are the node's
// running parts ("https", "dns", "cdn", "pubsub"): a counter family with no
// series yet is absent from a gather, and for a running part that means 0.
func takeSample(fams []*dto.MetricFamily, at time.Time, parts map[string]bool) sample {
	s := sample{at: at, hasConns: parts["https"], hasReqs: parts["https"], hasSubs: parts["pubsub"],
		hasDNS: parts["dns"], hasCDN: parts["cdn"]}
	for _, f := range fams {
		switch f.GetName() {
		case metricHTTPConns, metricQUICConns:
			s.hasConns = true
			s.conns += sum(f)
		case metricHTTPReqs:
			s.hasReqs = true
			s.reqs = sum(f)
		case metricSubs:
			s.hasSubs = true
			s.subs = sum(f)
		case metricDNSQueries:
			s.hasDNS = true
			s.dns = sum(f)
		case metricCDNRequests:
			s.hasCDN = true
			for _, m := range f.GetMetric() {
				v := value(m)
				s.cacheTotal += v
				if cacheHitResults[label(m, "result")] {
					s.cacheHits += v
				}
			}
		case metricCDNBytes:
			s.hasCDN = true
			s.cacheBytes = sum(f)
		case metricReplLagSeconds:
			s.lag = perPeer(f)
		case metricReplLagOps:
			s.lagOps = perPeer(f)
		case metricReplRoute:
			for _, m := range f.GetMetric() {
				if via := label(m, "via"); via != "direct" && via != "" && value(m) > 0 {
					if s.routes == nil {
						s.routes = map[string]string{}
					}
					s.routes[label(m, "origin")] = "via " + via
				}
			}
		case metricPubSubDirect:
			for _, m := range f.GetMetric() {
				if value(m) == 0 {
					if s.routes == nil {
						s.routes = map[string]string{}
					}
					if _, ok := s.routes[label(m, "peer")]; !ok {
						s.routes[label(m, "peer")] = "relayed"
					}
				}
			}
		}
	}
	return s
}

// perPeer is the largest value of each "peer" label.
func perPeer(f *dto.MetricFamily) map[string]float64 {
	out := map[string]float64{}
	for _, m := range f.GetMetric() {
		peer := label(m, "peer")
		if peer == "" {
			continue
		}
		v := value(m)
		if old, ok := out[peer]; !ok || v > old {
			out[peer] = v
		}
	}
	return out
}

func sum(f *dto.MetricFamily) float64 {
	var t float64
	for _, m := range f.GetMetric() {
		t += value(m)
	}
	return t
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Untyped != nil:
		return m.Untyped.GetValue()
	}
	return 0
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// Windows over which rates and the cache ratio are computed.
const (
	rateWindow  = 10 * time.Second
	ratioWindow = time.Minute
)

// history keeps the samples of the last ratioWindow (plus one) to compute
// rates from counter differences.
type history struct{ s []sample }

func (h *history) add(s sample) {
	h.s = append(h.s, s)
	// Keep one sample older than the longest window.
	cut := 0
	for i := range h.s {
		if s.at.Sub(h.s[i].at) > ratioWindow {
			cut = i
		}
	}
	if cut > 0 {
		h.s = append(h.s[:0], h.s[cut:]...)
	}
}

// base is the newest sample at least w older than the latest, else the
// oldest one kept (rates are then over what is known).
func (h *history) base(w time.Duration) (sample, bool) {
	if len(h.s) < 2 {
		return sample{}, false
	}
	last := h.s[len(h.s)-1]
	for i := len(h.s) - 2; i >= 0; i-- {
		if last.at.Sub(h.s[i].at) >= w {
			return h.s[i], true
		}
	}
	return h.s[0], true
}

// figures turns the kept samples into Figures.
func (h *history) figures() *Figures {
	if len(h.s) == 0 {
		return &Figures{}
	}
	last := h.s[len(h.s)-1]
	f := &Figures{At: last.at.UnixMilli()}
	if last.hasConns {
		f.Conns = ptr(last.conns)
	}
	if last.hasSubs {
		f.Subs = ptr(last.subs)
	}
	if last.hasCDN {
		f.CacheBytes = ptr(last.cacheBytes)
	}
	if len(last.lag) > 0 {
		f.Lag = last.lag
	}
	if len(last.routes) > 0 {
		f.Routes = last.routes
	}
	if len(last.lagOps) > 0 {
		f.LagOps = last.lagOps
	}
	if b, ok := h.base(rateWindow); ok {
		secs := last.at.Sub(b.at).Seconds()
		if secs > 0 {
			if last.hasReqs && b.hasReqs {
				f.ReqPS = ptr(round(math.Max(0, last.reqs-b.reqs) / secs))
			}
			if last.hasDNS && b.hasDNS {
				f.DNSQPS = ptr(round(math.Max(0, last.dns-b.dns) / secs))
			}
		}
	} else {
		// One sample: no rate yet, but the part exists.
		if last.hasReqs {
			f.ReqPS = ptr(0)
		}
		if last.hasDNS {
			f.DNSQPS = ptr(0)
		}
	}
	if b, ok := h.base(ratioWindow); ok && last.hasCDN && b.hasCDN {
		if total := last.cacheTotal - b.cacheTotal; total > 0 {
			f.CacheHit = ptr(math.Min(1, math.Max(0, (last.cacheHits-b.cacheHits)/total)))
		}
	}
	return f
}

func ptr(v float64) *float64 { return &v }

func round(v float64) float64 { return math.Round(v*100) / 100 }

// validPeerID bounds what a peer may call itself on the page.
func validPeerID(id string) bool {
	return id != "" && len(id) <= maxPeerIDLen && !strings.ContainsAny(id, "\x00\n")
}
