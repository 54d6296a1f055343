package clientaddr

import (
	"net/netip"
	"testing"
)

// Every address of an IPv6 /64 is one client; IPv4 addresses, mapped or
// not, stay apart.
func TestKeyGroupsIPv6By64(t *testing.T) {
	for _, tc := range []struct{ a, b string }{
		{"2001:db8:1:2::1", "2001:db8:1:2:ffff:ffff:ffff:ffff"},
		{"2001:db8:1:2:aaaa::1", "2001:db8:1:2:bbbb::2"},
		{"fe80::1%eth0", "fe80::2"},
		{"::ffff:192.0.2.1", "192.0.2.1"},
	} {
		a, b := Key(netip.MustParseAddr(tc.a)), Key(netip.MustParseAddr(tc.b))
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
		a, b := Key(netip.MustParseAddr(tc.a)), Key(netip.MustParseAddr(tc.b))
		if a == b {
			t.Errorf("%s and %s are both %v: want two clients", tc.a, tc.b, a)
		}
	}
	if got := Key(netip.MustParseAddr("2001:db8:1:2:3:4:5:6")); got != netip.MustParseAddr("2001:db8:1:2::") {
		t.Errorf("key %v, want 2001:db8:1:2::", got)
	}
	if got := Key(netip.Addr{}); got.IsValid() {
		t.Errorf("invalid address: key %v", got)
	}
}
