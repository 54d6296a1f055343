package dns

import (
	"net/netip"
	"time"

	"github.com/hashicorp/serf/coordinate"
)

// Measured steering (see Options.Measured). Two signals refine the map
// distance ranking of a dynamic answer:
//
//   - Real-user measurements: when the client's network has a measured
//     preference, its best node that is a member of the answer goes first.
//     The client is the ECS address when the query has one (and only when
//     its source prefix covers the whole /24 or /48 the measurements are
//     kept for: a shorter one names several networks), else the resolver.
//   - Network coordinates: the second address is the member estimated
//     closest in round trip time to the first (see closestRTT), so a
//     client that falls back to it stays near what it reached.

// measuredClient is the address whose network's measurements apply, and
// the prefix length they are kept for.
func measuredClient(q *query, client netip.Addr) (netip.Addr, uint8, bool) {
	if !q.ecs {
		return client, 0, client.IsValid()
	}
	switch {
	case q.ecsFamily == 1 && q.ecsSource >= 24:
		return netip.AddrFrom4([4]byte(q.ecsAddr[:4])), 24, true
	case q.ecsFamily == 2 && q.ecsSource >= 48:
		return netip.AddrFrom16(q.ecsAddr), 48, true
	}
	return netip.Addr{}, 0, false
}

// preferred returns the member position of the first id of ids that is a
// member of ms, or -1.
func preferred(ns *nodeState, ms *members, ids []string) int32 {
	for _, id := range ids {
		for i, n := range ms.node {
			if ns.nodes[n].id == id {
				return int32(i)
			}
		}
	}
	return -1
}

// closestRTT returns the member estimated closest in round trip time to
// member m, or -1 when m or every other member has no coordinates.
func closestRTT(ms *members, m int32) int32 {
	if ms.closest == nil {
		return -1
	}
	return ms.closest[m]
}

// closestByRTT computes closestRTT's table for members with coordinates
// coords (nil: unknown): once per node map, since coordinates only change
// with it, instead of a distance per member in every answer.
func closestByRTT(coords []*coordinate.Coordinate) []int32 {
	out := make([]int32, len(coords))
	for m, cm := range coords {
		best, bestD := int32(-1), time.Duration(1<<62)
		for i, c := range coords {
			if i == m || cm == nil || c == nil || !c.IsCompatibleWith(cm) {
				continue
			}
			if d := cm.DistanceTo(c); d < bestD {
				best, bestD = int32(i), d
			}
		}
		out[m] = best
	}
	return out
}
