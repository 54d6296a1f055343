package nodemap

import (
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/serf/coordinate"
)

// A RelayCandidate is a node that could carry traffic from one node to
// another that cannot reach each other directly.
type RelayCandidate struct {
	ID string
	// Cost is the estimated round trip of the two hops through it (from
	// the source to it, plus from it to the target); Known is false when a
	// coordinate is missing (a node of an older version, or no mesh).
	Cost  time.Duration
	Known bool
}

// RelayCost estimates the path from a through x to b from their network
// coordinates (see Node.RTT); false when any of them has none.
func RelayCost(a, x, b *coordinate.Coordinate) (time.Duration, bool) {
	if a == nil || x == nil || b == nil || !a.IsCompatibleWith(x) || !x.IsCompatibleWith(b) {
		return 0, false
	}
	return a.DistanceTo(x) + x.DistanceTo(b), true
}

// relayMargin is how much cheaper a candidate must be to displace one
// that sorts before it: coordinates move with every probe, and each node
// decides from its own copy of the map, so two candidates within the
// noise must not trade places (every node would flip its choice, or two
// nodes would disagree on who relays). Within the margin the lower ID
// wins, which every node computes alike.
func relayMargin(best time.Duration) time.Duration {
	return max(2*time.Millisecond, best/10)
}

// PickRelay chooses among cands the one with the cheapest path, as every
// node computes it alike from the same map: candidates are taken in ID
// order; one with a known cost beats one without; one beats a cheaper-ID
// one only when it is cheaper by more than the margin. With no
// coordinates at all this is simply the lowest ID. It returns "" when
// cands is empty. cands is sorted in place.
func PickRelay(cands []RelayCandidate) string {
	if len(cands) == 0 {
		return ""
	}
	slices.SortFunc(cands, func(a, b RelayCandidate) int { return strings.Compare(a.ID, b.ID) })
	best := cands[0]
	for _, c := range cands[1:] {
		switch {
		case !c.Known:
		case !best.Known:
			best = c
		case c.Cost+relayMargin(best.Cost) < best.Cost:
			best = c
		}
	}
	return best.ID
}
