package transport

import "github.com/prometheus/client_golang/prometheus"

// Metrics are a Server's collectors, for the external tests to read with
// testutil (and testkit.Sum).
type Metrics struct {
	Requests, Handshakes, LimitHits, Resumed, FastHandoffs *prometheus.CounterVec
	QUICOpen                                               prometheus.Gauge
	FastAnswers                                            prometheus.Counter
}

func (s *Server) Metrics() Metrics {
	m := s.metrics
	return Metrics{Requests: m.requests, Handshakes: m.handshakes, LimitHits: m.limitHits, Resumed: m.resumed, QUICOpen: m.quicOpen,
		FastHandoffs: m.fastHandoffs, FastAnswers: m.fastAnswers["1.1"]}
}
