package transport

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestClientKeyGroupsIPv6By64: every address of an IPv6 /64 is one client
// for the per-address limit; IPv4 addresses (mapped or not) stay apart.
func TestClientKeyGroupsIPv6By64(t *testing.T) {
	for _, tc := range []struct{ a, b string }{
		{"2001:db8:1:2::1", "2001:db8:1:2:ffff:ffff:ffff:ffff"},
		{"2001:db8:1:2:aaaa::1", "2001:db8:1:2:bbbb::2"},
		{"fe80::1%eth0", "fe80::2"},
		{"::ffff:192.0.2.1", "192.0.2.1"},
	} {
		a, b := clientKey(netip.MustParseAddr(tc.a)), clientKey(netip.MustParseAddr(tc.b))
		if a != b {
			t.Errorf("%s -> %v and %s -> %v: want the same client", tc.a, a, tc.b, b)
		}
	}
	for _, tc := range []struct{ a, b string }{
		{"2001:db8:1:2::1", "2001:db8:1:3::1"},
		{"2001:db8::1", "2001:db9::1"},
		{"192.0.2.1", "192.0.2.2"},
		{"::ffff:192.0.2.1", "::ffff:192.0.2.2"},
	} {
		a, b := clientKey(netip.MustParseAddr(tc.a)), clientKey(netip.MustParseAddr(tc.b))
		if a == b {
			t.Errorf("%s and %s are both %v: want two clients", tc.a, tc.b, a)
		}
	}
	if got := clientKey(netip.MustParseAddr("2001:db8:1:2:3:4:5:6")); got != netip.MustParseAddr("2001:db8:1:2::") {
		t.Errorf("key %v, want 2001:db8:1:2::", got)
	}
	if got := clientKey(netip.Addr{}); got.IsValid() {
		t.Errorf("invalid address: key %v", got)
	}
}

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
