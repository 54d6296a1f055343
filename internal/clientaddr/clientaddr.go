// Package clientaddr says which client an address belongs to, for the
// per-address limits of every listener (HTTPS, pubsub, DNS over TCP).
package clientaddr

import "net/netip"

// Key is what a per-address limit counts: an IPv4 address as it is (also
// when it arrives IPv4-mapped on a dual-stack socket), an IPv6 address by
// its /64. A /64 is the smallest network a site or a home is given, and its
// owner picks any of its 2^64 addresses freely, so counting single IPv6
// addresses would be no limit at all. The zero Addr stays invalid.
func Key(a netip.Addr) netip.Addr {
	a = a.Unmap()
	if !a.Is6() {
		return a
	}
	p, err := a.WithZone("").Prefix(64)
	if err != nil {
		return a
	}
	return p.Addr()
}

// Network is the client network an address belongs to for measurements
// that are kept per network, not per person (package rum): an IPv4
// address's /24, an IPv6 address's /48, the granularity RFC 7871
// recommends for EDNS client subnet. The zero Prefix for an invalid Addr.
func Network(a netip.Addr) netip.Prefix {
	a = a.Unmap().WithZone("")
	bits := 24
	if a.Is6() {
		bits = 48
	}
	p, err := a.Prefix(bits)
	if err != nil {
		return netip.Prefix{}
	}
	return p
}
