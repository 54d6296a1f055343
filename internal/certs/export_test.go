package certs

import "github.com/prometheus/client_golang/prometheus"

// ManagerMetrics are a Manager's collectors, for the external tests to read
// with testutil.
type ManagerMetrics struct {
	Decisions, Events, Challenges *prometheus.CounterVec
}

func (m *Manager) Metrics() ManagerMetrics {
	return ManagerMetrics{Decisions: m.m.decisions, Events: m.m.events, Challenges: m.m.challenges}
}
