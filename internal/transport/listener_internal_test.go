package transport

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestLimitListenerGroupsIPv6: the listener's count is per key, so a
// second address of the same /64 is over a limit of one.
func TestLimitListenerGroupsIPv6(t *testing.T) {
	met, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	l := newLimitListener(nil, 1, met)
	k1 := netip.MustParseAddr("2001:db8::1")
	k2 := netip.MustParseAddr("2001:db8::2")
	if l.acquire(k1) {
		t.Fatal("first connection over the limit")
	}
	if !l.acquire(k2) {
		t.Error("second address of the same /64 not over the limit of 1")
	}
	l.forget(k2)
	l.forget(k1)
	if len(l.count) != 0 {
		t.Errorf("counts left: %v", l.count)
	}
}

// TestMetricsTwiceOnOneRegistry: a second server on one registry is a
// programming error that surfaces as an error naming the package, not as a
// panic.
func TestMetricsTwiceOnOneRegistry(t *testing.T) {
	reg := prometheus.NewRegistry()
	if _, err := newMetrics(reg); err != nil {
		t.Fatal(err)
	}
	_, err := newMetrics(reg)
	var are prometheus.AlreadyRegisteredError
	if !errors.As(err, &are) || !strings.HasPrefix(err.Error(), "transport: ") {
		t.Fatalf("second registration: %v", err)
	}
}
