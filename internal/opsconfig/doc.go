// Package opsconfig holds no code: its tests check the operators' files in
// configs/ — the Grafana dashboard (configs/grafana/edgenode.json) and the
// Prometheus alert rules (configs/prometheus/alerts.yml, with their
// promtool unit tests in alerts_test.yml) — against promtool and against
// the metrics the code registers, so that neither can drift from the code.
package opsconfig
