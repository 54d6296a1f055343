package transport

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	requests   *prometheus.CounterVec
	duration   *prometheus.HistogramVec
	handshakes *prometheus.CounterVec
	connsOpen  prometheus.Gauge
	limitHits  *prometheus.CounterVec
	certLoads  *prometheus.CounterVec
	websockets prometheus.Gauge

	// HTTP/3 connections and TLS session resumption. Requests over HTTP/3
	// are counted in requests, under proto="3".
	quicOpen  prometheus.Gauge
	resumed   *prometheus.CounterVec
	ticketSet prometheus.Counter

	// The HTTP/1.1 fast path (fast.go): requests it answered, and
	// connections it handed to net/http, by why. Resolved once: the fast
	// path looks up no label per request.
	fastAnswersVec *prometheus.CounterVec
	fastAnswers    map[string]prometheus.Counter // by proto: 1.1 (fast.go), 2 (fast2.go)
	fastHandoffs   *prometheus.CounterVec
	handoff        map[handoffReason]prometheus.Counter

	// HTTP/2 connections the server ended with an error, by GOAWAY code
	// (ENHANCE_YOUR_CALM: a client past the stream limits).
	h2Errors *prometheus.CounterVec
}

// handoffReason says why the fast path gave a connection to net/http.
type handoffReason string

const (
	handoffHead    handoffReason = "head"    // a request the fast path does not parse (method, path, fields...)
	handoffLong    handoffReason = "long"    // a head longer than its 4 KiB buffer or MaxHeaderBytes
	handoffRoute   handoffReason = "route"   // routed to a handler without a fast path
	handoffHandler handoffReason = "handler" // the handler declined (a miss, an object not in memory...)
)

// newMetrics makes the server's metrics and registers them on reg. As in
// every package, a registration that fails (a second Server on one
// registry) is returned as an error, never a panic: docs/metrics.md.
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgenode_http_requests_total", Help: "HTTPS requests by route pattern, method, status code and protocol (1.1, 2, 3).",
		}, []string{"route", "method", "code", "proto"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "edgenode_http_request_duration_seconds",
			Help:    "Time to the end of the response by route pattern (streams count their whole life).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"route"}),
		handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgenode_tls_handshakes_total", Help: "TLS handshakes on the public listener by version and result.",
		}, []string{"version", "result"}),
		connsOpen: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "edgenode_http_connections_open", Help: "TCP connections open on the public listener.",
		}),
		limitHits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgenode_http_limit_hits_total", Help: "Requests or connections cut by a limit.",
		}, []string{"limit"}),
		certLoads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgenode_tls_certificate_loads_total", Help: "Certificate (re)loads by result.",
		}, []string{"result"}),
		websockets: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "edgenode_websockets_open", Help: "Websocket connections relayed to the app server.",
		}),
		quicOpen: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "edgenode_quic_connections_open", Help: "QUIC (HTTP/3) connections open on the public listener.",
		}),
		resumed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgenode_tls_resumed_handshakes_total", Help: "TLS handshakes that resumed a session (ticket), by transport (tcp, quic).",
		}, []string{"transport"}),
		ticketSet: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgenode_tls_ticket_key_updates_total", Help: "Times the session-ticket keys were replaced (cluster-shared keys).",
		}),
		fastAnswersVec: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgenode_http_fast_answers_total", Help: "Requests answered by the fast paths, by protocol (1.1, 2; also counted in edgenode_http_requests_total).",
		}, []string{"proto"}),
		h2Errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgenode_http2_connection_errors_total", Help: "HTTP/2 connections ended by the server with an error, by GOAWAY code.",
		}, []string{"code"}),
		fastHandoffs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgenode_http_fast_handoffs_total", Help: "HTTP/1.1 connections the fast path handed to net/http, by reason (head, long, route, handler).",
		}, []string{"reason"}),
		handoff: map[handoffReason]prometheus.Counter{},
	}
	m.fastAnswers = map[string]prometheus.Counter{}
	for _, p := range []string{"1.1", "2"} {
		m.fastAnswers[p] = m.fastAnswersVec.WithLabelValues(p)
	}
	for _, r := range []handoffReason{handoffHead, handoffLong, handoffRoute, handoffHandler} {
		m.handoff[r] = m.fastHandoffs.WithLabelValues(string(r))
	}
	for _, l := range []string{"header_size", "body_size", "conns_per_ip", "read_header_timeout"} {
		m.limitHits.WithLabelValues(l)
	}
	for _, c := range []prometheus.Collector{m.requests, m.duration, m.handshakes, m.connsOpen, m.limitHits,
		m.certLoads, m.websockets, m.quicOpen, m.resumed, m.ticketSet, m.fastAnswersVec, m.fastHandoffs, m.h2Errors} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("transport: register metrics: %w", err)
		}
	}
	return m, nil
}
