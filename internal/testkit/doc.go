// Package testkit holds the helpers the tests of every package share: free
// ports that are never handed out twice, polling for a condition with a
// deadline, a log capture that tests can wait on, and the test servers
// (Tool: versitygw, pebble, ferretdb) found or installed once, and a real
// external database: FerretDB over its own PostgreSQL server (PGUpstreams,
// StartPGFerrets), and a network whose links delay packets (DelayNet, on
// Linux: TUN devices in network namespaces, since tc netem may be missing).
//
// Only _test.go files import testkit. The exceptions are the benchmark
// drivers (under scripts/, and the load tool cmd/edgebench), which start
// real nodes and take their free ports from [PickPort]. Production code must not import it; TestOnlyTestsImport
// checks that.
//
// Metrics are read in tests with
// github.com/prometheus/client_golang/prometheus/testutil (ToFloat64 on a
// package's own collectors, CollectAndCount, GatherAndCompare), not with
// hand-written gatherers; [SampleCount] and [Sum] read the two figures
// testutil has no function for. docs/metrics.md has the whole rule.
package testkit
