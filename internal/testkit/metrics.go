package testkit

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// SampleCount is how many observations h has: the one figure of a
// histogram that testutil.ToFloat64 cannot read.
func SampleCount(t testing.TB, h prometheus.Histogram) uint64 {
	t.Helper()
	var m dto.Metric
	if err := h.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetHistogram().GetSampleCount()
}

// Sum adds up the values of the counters and gauges c collects whose
// labels include labels (name, value pairs). It reads a family across the
// labels a test does not care about (handshakes of every TLS version, say),
// which testutil cannot; for one series, testutil.ToFloat64 on the vector's
// WithLabelValues says more.
func Sum(t testing.TB, c prometheus.Collector, labels ...string) float64 {
	t.Helper()
	if len(labels)%2 != 0 {
		t.Fatalf("Sum: labels %q are not name, value pairs", labels)
	}
	ch := make(chan prometheus.Metric)
	go func() {
		c.Collect(ch)
		close(ch)
	}()
	sum := 0.0
	var werr error
	for m := range ch { // drained to the end, so Collect returns
		var pb dto.Metric
		if err := m.Write(&pb); err != nil {
			werr = err
			continue
		}
		if !hasLabels(&pb, labels) {
			continue
		}
		switch {
		case pb.Counter != nil:
			sum += pb.Counter.GetValue()
		case pb.Gauge != nil:
			sum += pb.Gauge.GetValue()
		case pb.Untyped != nil:
			sum += pb.Untyped.GetValue()
		}
	}
	if werr != nil {
		t.Fatalf("Sum: %v", werr)
	}
	return sum
}

func hasLabels(m *dto.Metric, labels []string) bool {
next:
	for i := 0; i < len(labels); i += 2 {
		for _, lp := range m.GetLabel() {
			if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
				continue next
			}
		}
		return false
	}
	return true
}
