package dns

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"sync/atomic"

	"github.com/hashicorp/serf/coordinate"

	"github.com/edgenode/edgenode/internal/dns/geoindex"
	"github.com/edgenode/edgenode/internal/nodemap"
)

const earthRadiusKM = 6371.0

// Address families of a dynamic answer.
const (
	famV4 = 0
	famV6 = 1
)

// nodeInfo is what the serving path needs of one node of the map.
type nodeInfo struct {
	id      string
	v4      [4]byte
	v6      [16]byte
	hasV4   bool
	hasV6   bool
	load    float64
	answers counter // dynamic answers that put this node first
}

// members are the nodes one pool answers with for one address family,
// sorted by id: its serving nodes with an address of the family that are
// ready, or, when none of them is, all of them (see buildNodeState).
// Rankings refer to members by position, so a ranking stays valid for as
// long as the members' ids, places and regions are the same, whatever
// their load does.
type members struct {
	node   []int32 // index into nodeState.nodes
	x      []float64
	y      []float64
	z      []float64
	placed []bool
	region []string
	self   string // region of the node that made the map
	// fingerprint identifies ids, places and regions; equal fingerprints
	// mean cached rankings can be kept.
	fingerprint string
	// unready says that no candidate was ready, so the members are
	// nodes that are not.
	unready bool
	// closest is, for each member, the other member estimated closest in
	// round trip time by the network coordinates (-1: none), computed
	// once per node map rather than per answer; nil when no member has
	// coordinates. Not in the fingerprint: pick reads it, cached rankings
	// do not.
	closest []int32
}

// nodeState is derived from one nodemap.Map. Immutable.
type nodeState struct {
	version    uint64
	nodes      []nodeInfo
	byName     map[string]nodeRef // lower-case wire <id>.nodes.<zone>
	pools      [][2]members       // per compiled pool, per family
	selfRegion string
	// notReady are the serving nodes that say they are not ready, by id,
	// with their reasons: left out of the answers of every pool that has
	// a ready node.
	notReady map[string]string
}

type nodeRef struct {
	node int32
	zone *zone
}

type counter interface{ Inc() }

func buildNodeState(c *compiled, m *nodemap.Map, answers func(id string) counter) (*nodeState, []string) {
	var warnings []string
	ns := &nodeState{
		version: m.Version,
		nodes:   make([]nodeInfo, len(m.Nodes)),
		byName:  make(map[string]nodeRef, len(m.Nodes)*len(c.zoneList)),
		pools:   make([][2]members, len(c.pools)),
	}
	for i := range m.Nodes {
		n := &m.Nodes[i]
		ni := &ns.nodes[i]
		ni.id = n.ID
		ni.load = n.Load
		if math.IsNaN(ni.load) {
			ni.load = math.Inf(1)
		}
		if a := n.IPv4.Unmap(); a.Is4() {
			ni.v4, ni.hasV4 = a.As4(), true
		}
		if a := n.IPv6; a.Is6() && !a.Is4In6() {
			ni.v6, ni.hasV6 = a.As16(), true
		}
		ni.answers = answers(n.ID)
		if n.Self {
			ns.selfRegion = n.Region
		}
		// Per-node names, like dynamic answers, name only nodes whose
		// addresses the map vouches for.
		if n.State != nodemap.Dead && n.Verified {
			label := strings.ToLower(n.ID)
			if !validLabel(label) {
				warnings = append(warnings, fmt.Sprintf("node id %q is not a DNS label; no per-node name", n.ID))
			} else {
				for _, z := range c.zoneList {
					key := string([]byte{byte(len(label))}) + label + string([]byte{byte(len(NodesLabel))}) + NodesLabel + z.origin
					ns.byName[key] = nodeRef{node: int32(i), zone: z}
				}
			}
		}
	}
	for i := range m.Nodes {
		if n := &m.Nodes[i]; n.Serving() && !n.Ready {
			if ns.notReady == nil {
				ns.notReady = map[string]string{}
			}
			ns.notReady[n.ID] = n.NotReady
		}
	}
	for p, tag := range c.pools {
		for fam := range 2 {
			ms := &ns.pools[p][fam]
			var fp strings.Builder
			// The candidates: serving nodes of the pool with an address of
			// the family. Answers name the ready ones; when none is ready,
			// all of them, since a node that lags still serves, and an
			// empty answer serves no one.
			var cand []int32
			ready := 0
			for i := range m.Nodes {
				n := &m.Nodes[i]
				ni := &ns.nodes[i]
				if !n.Serving() || (tag != "" && !n.HasTag(tag)) {
					continue
				}
				if (fam == famV4 && !ni.hasV4) || (fam == famV6 && !ni.hasV6) {
					continue
				}
				cand = append(cand, int32(i))
				if n.Ready {
					ready++
				}
			}
			ms.unready = len(cand) > 0 && ready == 0
			var coords []*coordinate.Coordinate
			withCoord := false
			for _, i := range cand {
				n := &m.Nodes[i]
				if ready > 0 && !n.Ready {
					continue
				}
				ms.node = append(ms.node, i)
				placed := n.Lat != 0 || n.Lon != 0
				x, y, z := unit(n.Lat, n.Lon)
				ms.x, ms.y, ms.z = append(ms.x, x), append(ms.y, y), append(ms.z, z)
				ms.placed = append(ms.placed, placed)
				ms.region = append(ms.region, n.Region)
				coords = append(coords, n.Coord)
				if n.Coord != nil {
					withCoord = true
				}
				fmt.Fprintf(&fp, "%s|%g|%g|%s\n", n.ID, n.Lat, n.Lon, n.Region)
			}
			if withCoord {
				ms.closest = closestByRTT(coords)
			}
			fmt.Fprintf(&fp, "self=%s", ns.selfRegion)
			ms.fingerprint = fp.String()
			ms.self = ns.selfRegion
		}
	}
	return ns, warnings
}

func validLabel(s string) bool {
	if len(s) == 0 || len(s) > 63 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

func unit(lat, lon float64) (x, y, z float64) {
	la, lo := lat*math.Pi/180, lon*math.Pi/180
	return math.Cos(la) * math.Cos(lo), math.Cos(la) * math.Sin(lo), math.Sin(la)
}

// ranking orders a pool's members for one client location: the first tier
// members are all within the slack of the nearest and are chosen among by
// load at answer time; the rest follow nearest first.
type ranking struct {
	tier  int
	order []int32 // positions in members
}

// rankCache holds the rankings of one pool and family for every location of
// one geo index (plus one slot for "unknown location"), filled on first use.
type rankCache struct {
	fingerprint string
	slots       []atomic.Pointer[ranking]
}

// maxTier bounds the p2c candidates so picking needs only a stack array.
const maxTier = 64

func computeRanking(ms *members, loc geoindex.Location, known bool, slackKM float64) *ranking {
	n := len(ms.node)
	r := &ranking{order: make([]int32, n)}
	for i := range r.order {
		r.order[i] = int32(i)
	}
	if n == 0 {
		return r
	}
	if !known || !loc.HasCoords {
		// No idea where the client is: prefer this node's region (the
		// resolver reached us, so it is probably not far), then anyone.
		if ms.region != nil {
			self := ms.self
			slices.SortStableFunc(r.order, func(a, b int32) int {
				ra, rb := ms.region[a] == self, ms.region[b] == self
				switch {
				case ra && !rb:
					return -1
				case rb && !ra:
					return 1
				}
				return 0
			})
			for r.tier < n && ms.region[r.order[r.tier]] == self && self != "" {
				r.tier++
			}
		}
		if r.tier == 0 {
			r.tier = n
		}
		r.tier = min(r.tier, maxTier)
		return r
	}
	cx, cy, cz := unit(float64(loc.Lat), float64(loc.Lon))
	d := make([]float64, n)
	for i := range n {
		if !ms.placed[i] {
			d[i] = math.Inf(1)
			continue
		}
		dot := cx*ms.x[i] + cy*ms.y[i] + cz*ms.z[i]
		d[i] = earthRadiusKM * math.Acos(max(-1, min(1, dot)))
	}
	slices.SortStableFunc(r.order, func(a, b int32) int {
		switch {
		case d[a] < d[b]:
			return -1
		case d[a] > d[b]:
			return 1
		}
		return 0
	})
	nearest := d[r.order[0]]
	for r.tier < n && (d[r.order[r.tier]] <= nearest+slackKM || math.IsInf(nearest, 1)) {
		r.tier++
	}
	r.tier = min(r.tier, maxTier)
	return r
}

// pick appends up to k member positions to dst: first the measured
// preference when there is one (first >= 0), else one from the first tier
// by the power of two random choices on load (so the herd spreads over
// equally near nodes, leaning away from busy ones); then, when the
// members have network coordinates, the member estimated closest in RTT
// to the first (the client's fallback is then near what it reached); then
// more of the first tier by load, then the rest in distance order.
func pick(r *ranking, ns *nodeState, ms *members, k int, first int32, dst []int32) []int32 {
	var cand [maxTier]int32
	n := copy(cand[:r.tier], r.order[:r.tier])
	drop := func(m int32) {
		for i := range n {
			if cand[i] == m {
				n--
				cand[i] = cand[n]
				return
			}
		}
	}
	p2c := func() {
		c := 0
		if n > 1 {
			a := rand.IntN(n)
			b := rand.IntN(n - 1)
			if b >= a {
				b++
			}
			c = a
			if ns.nodes[ms.node[cand[b]]].load < ns.nodes[ms.node[cand[a]]].load {
				c = b
			}
		}
		dst = append(dst, cand[c])
		n--
		cand[c] = cand[n]
	}
	if k <= 0 {
		return dst
	}
	switch {
	case first >= 0:
		dst = append(dst, first)
		drop(first)
	case n > 0:
		p2c()
	}
	if len(dst) == 1 && k > 1 {
		if c := closestRTT(ms, dst[0]); c >= 0 {
			dst = append(dst, c)
			drop(c)
		}
	}
	for len(dst) < k && n > 0 {
		p2c()
	}
	for i := r.tier; len(dst) < k && i < len(r.order); i++ {
		if m := r.order[i]; !slices.Contains(dst, m) {
			dst = append(dst, m)
		}
	}
	return dst
}
