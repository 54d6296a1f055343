package dns

import (
	"sync/atomic"

	"github.com/edgenode/edgenode/internal/dns/geoindex"
)

// view is what one query reads: a node state, a geo index and the ranking
// caches for that pair. It is immutable apart from the caches' slots, which
// fill lazily; the Server swaps whole views atomically, so a query sees
// either the old or the new pair, never half of each.
type view struct {
	c       *compiled // the zones, names and pools ns was built for
	ns      *nodeState
	changed <-chan struct{} // closed when the node map behind ns is replaced
	ix      *geoindex.Index
	ranks   [][2]*rankCache // per pool, per family
}

// newView pairs ns with ix. Ranking caches of prev are kept when they were
// made for the same index and the same members (ids, places, regions):
// a load change alone does not throw rankings away.
func newView(c *compiled, ns *nodeState, changed <-chan struct{}, ix *geoindex.Index, prev *view) *view {
	v := &view{c: c, ns: ns, changed: changed, ix: ix, ranks: make([][2]*rankCache, len(c.pools))}
	for p := range c.pools {
		for fam := range 2 {
			fp := ns.pools[p][fam].fingerprint
			if prev != nil && prev.c == c && prev.ix == ix && prev.ranks[p][fam].fingerprint == fp {
				v.ranks[p][fam] = prev.ranks[p][fam]
				continue
			}
			v.ranks[p][fam] = &rankCache{
				fingerprint: fp,
				// One slot per location of the index, plus "unknown".
				slots: make([]atomic.Pointer[ranking], ix.NumLocations()+1),
			}
		}
	}
	return v
}

// ranking returns the cached ranking for a location, computing it on first
// use. Two queries racing on an empty slot both compute it; either result
// is right.
func (v *view) ranking(pool, fam int, loc uint32, known bool, ms *members, slackKM float64) *ranking {
	rc := v.ranks[pool][fam]
	slots := rc.slots
	i := len(slots) - 1 // the "unknown location" slot
	if known {
		i = int(loc)
	}
	if r := slots[i].Load(); r != nil {
		return r
	}
	var l geoindex.Location
	if known {
		l = v.ix.Location(loc)
	}
	r := computeRanking(ms, l, known, slackKM)
	slots[i].Store(r)
	return r
}
