package repl

import (
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/serf/coordinate"

	"github.com/edgenode/edgenode/internal/nodemap"
)

// Relays: ops from any peer that has them.
//
// Each node streams its own ops to each peer over their direct link. When
// that link is down while both nodes are up (a bad route between two
// regions), a third node that hears both relays: it streams the origin's
// ops it applied, from its own log, to the peer that cannot hear the
// origin, from the position the peer announces in its heartbeats. Ops are
// numbered per origin, so it does not matter who delivers them: the
// receiver applies each origin's ops in order from its position whoever
// sends them, skips what it has, and acknowledges to whoever sent them.
//
// Who hears whom: every node announces, with its heartbeat (a separate
// links message), the peers whose heartbeats it received within
// linkTimeout. Node R relays origin O to peer P when
//
//   - P is a synced replica that R hears, and P has applied less of O
//     than R (or R already relays O to P: it keeps the stream until the
//     direct one works again, so that the ops after the cut begins keep
//     flowing), and
//   - P cannot get O's ops directly: O is not the current origin of a
//     node P hears (the node is cut off from P, dead, or O is an old
//     incarnation of a node whose data folder was wiped), and
//   - R is the chosen relay: for a live origin, of the peers that P
//     hears and that hear O's node (R included, if it hears it), the one
//     on the shortest path by network coordinates (nodemap.PickRelay:
//     lowest id within a margin of the best, and lowest id when
//     coordinates are missing); for an origin whose node nobody hears
//     (dead, or an old incarnation), the peer P hears that has applied
//     the most of O (ties: smallest id). Nodes decide from the links and
//     heartbeats they have, which may differ for a moment: then two relay
//     at once, and the receiver skips what arrives twice.
//
// Peers keep the ops they applied in their logs for LogRetention (as
// every origin keeps its own), so a relay can serve a peer cut off for
// that long, and a node whose data folder was wiped gets back those of
// its old incarnation's ops that reached some peer but not its sync
// source. Relayed positions are not persisted: a relay is re-planned from
// heartbeats after a restart.
//
// A cut costs one hop of latency and the time to notice it (linkTimeout
// plus a heartbeat), not a stalled stream. Heartbeats are not relayed: a
// node that cannot hear an origin does not learn its compaction frontier,
// so its compaction waits (documents keep their commutative history a
// little longer) until the link heals.

// linkTimeout is how long after a peer's last heartbeat this node still
// says it hears it.
func (r *Replicator) linkTimeout() time.Duration {
	return max(5*r.opts.HeartbeatInterval, time.Second)
}

type relayKey struct{ peer, origin string }

// heardLocked lists the peers whose heartbeats arrived within linkTimeout.
func (r *Replicator) heardLocked(now time.Time) []string {
	var ids []string
	for id, n := range r.nodes {
		if n.hearsMe(now, r.linkTimeout()) {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids
}

// hearsMe reports whether this node heard the peer's heartbeat recently.
func (n *nodeState) hearsMe(now time.Time, timeout time.Duration) bool {
	return !n.heard.IsZero() && now.Sub(n.heard) <= timeout
}

// onLinks records which peers a peer hears.
func (r *Replicator) onLinks(from string, m linksMsg) {
	if NodeOf(m.origin) != from {
		r.bad(from, "links", errMalformed)
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	n := r.node(from)
	n.links = make(map[string]bool, len(m.nodes))
	for _, id := range m.nodes {
		n.links[id] = true
	}
	n.linksAt = time.Now()
}

// planRelays starts and stops relay streams (see above). It runs with
// every heartbeat.
func (r *Replicator) planRelays() {
	now := time.Now()
	mine := r.core.AppliedVector()
	timeout := r.linkTimeout()
	r.mu.Lock()
	defer r.mu.Unlock()
	want := map[relayKey]uint64{}
	if r.isSynced() && !r.stopping {
		for pid, p := range r.nodes {
			if !p.inMap || p.origin == "" || !p.hearsMe(now, timeout) || p.links == nil || now.Sub(p.linksAt) > timeout ||
				p.flags&hbSynced == 0 || p.flags&hbSyncing != 0 {
				continue
			}
			for origin, have := range mine {
				if origin == r.origin || origin == p.origin {
					continue
				}
				pos := p.applied[origin]
				_, running := r.relays[relayKey{pid, origin}]
				if have <= pos && !running {
					continue
				}
				if r.chosenRelayLocked(now, pid, p, origin, have) {
					want[relayKey{pid, origin}] = pos
				}
			}
		}
	}
	for k, s := range r.relays {
		if _, ok := want[k]; !ok {
			s.stop()
			delete(r.relays, k)
			r.log.Info("relay stopped", "peer", k.peer, "origin", k.origin)
		}
	}
	for k, pos := range want {
		if r.relays[k] != nil {
			continue
		}
		s := newRelay(r, k.peer, k.origin, pos)
		r.relays[k] = s
		r.wg.Add(1)
		go s.run()
		r.log.Info("relaying a peer's ops to a node that cannot hear it", "peer", k.peer, "origin", k.origin, "from", pos)
	}
	r.met.relays.Set(float64(len(r.relays)))
}

// chosenRelayLocked decides whether this node relays origin to peer p
// (pid), which cannot hear it directly. have is this node's applied
// position of origin.
func (r *Replicator) chosenRelayLocked(now time.Time, pid string, p *nodeState, origin string, have uint64) bool {
	timeout := r.linkTimeout()
	if !p.links[r.opts.NodeID] {
		return false // p does not hear this node
	}
	onode := NodeOf(origin)
	if o := r.nodes[onode]; o != nil && o.origin == origin {
		// A live origin, as far as this node knows.
		if p.links[onode] {
			return false // p hears it: the direct stream works
		}
		if !o.hearsMe(now, timeout) {
			return false // this node cannot vouch for getting its ops promptly
		}
		// Of the nodes that hear the origin and that p hears, the one on
		// the shortest path by network coordinates relays (issue 19); every
		// candidate computes the same choice from the same map.
		cands := []nodemap.RelayCandidate{r.relayCandidate(r.opts.NodeID, r.coord, o, p)}
		for id, x := range r.nodes {
			if id == pid || id == onode || !x.hearsMe(now, timeout) || x.links == nil || !x.links[onode] || !p.links[id] {
				continue
			}
			cands = append(cands, r.relayCandidate(id, x.coord, o, p))
		}
		return nodemap.PickRelay(cands) == r.opts.NodeID
	}
	// Nobody streams this origin any more (its node is gone, or it is an
	// old incarnation): the peer p hears that has the most of it relays.
	best, bestPos := r.opts.NodeID, have
	for id, x := range r.nodes {
		if id == pid || !x.hearsMe(now, timeout) || !p.links[id] {
			continue
		}
		if a := x.applied[origin]; a > bestPos || (a == bestPos && strings.Compare(id, best) < 0) {
			best, bestPos = id, a
		}
	}
	return best == r.opts.NodeID
}

// relayCandidate is node id (coordinate c) as a relay from origin node o
// to peer p, with the path's estimated cost when every coordinate is known.
func (r *Replicator) relayCandidate(id string, c *coordinate.Coordinate, o, p *nodeState) nodemap.RelayCandidate {
	cost, ok := nodemap.RelayCost(o.coord, c, p.coord)
	return nodemap.RelayCandidate{ID: id, Cost: cost, Known: ok}
}
