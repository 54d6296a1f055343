package repl

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/edgenode/edgenode/internal/nodemap"
)

// Status is replication's view for /status.json.
type Status struct {
	Origin   string `json:"origin"` // this node's origin (node id plus incarnation)
	State    string `json:"state"`  // checking, waiting_for_source, initial_sync, synced
	Ready    bool   `json:"ready"`
	NotReady string `json:"not_ready,omitempty"` // why Ready is false
	Writes   string `json:"writes"`              // "accepted" or why they are refused
	// Stable is the compaction frontier (HLC, wall.logical@node).
	Stable string `json:"stable"`
	// Origins: how far this node is behind each peer's ops (inbound).
	Origins []OriginStatus `json:"origins"`
	// Peers: how far each peer is behind this node's ops (outbound), and
	// what it says it has applied of every origin.
	Peers       []PeerStatus `json:"peers"`
	CronLeaders []string     `json:"cron_leaders"`
}

// OriginStatus is this node's position in one peer's ops.
type OriginStatus struct {
	Node       string  `json:"node"`
	Origin     string  `json:"origin"`
	State      string  `json:"state"` // in the node map
	Last       uint64  `json:"last"`  // the peer's last seq, from its heartbeat
	Applied    uint64  `json:"applied"`
	LagOps     uint64  `json:"lag_ops"`
	LagSeconds float64 `json:"lag_seconds"`
	// Via is the peer its ops arrived through last, when not from the
	// node itself (its link to this node is down: relay.go); empty:
	// direct.
	Via string `json:"via,omitempty"`
}

// PeerStatus is one peer's position in this node's ops.
type PeerStatus struct {
	Node       string            `json:"node"`
	Acked      uint64            `json:"acked"`
	LagOps     uint64            `json:"lag_ops"`
	LagSeconds float64           `json:"lag_seconds"`
	Synced     bool              `json:"synced"`
	Applied    map[string]uint64 `json:"applied,omitempty"` // by origin, from its heartbeat
	// Relaying lists the nodes whose ops this node relays to the peer
	// (it cannot hear them directly).
	Relaying []string `json:"relaying,omitempty"`
}

// Status returns the current replication state.
func (r *Replicator) Status() Status {
	st := Status{Origin: r.origin, State: stateNames[r.state.Load()], Writes: "accepted", Stable: r.stableNow().String()}
	if w := r.core.WritesBlocked(); w != "" {
		st.Writes = w
	}
	now := time.Now()
	r.mu.Lock()
	for _, n := range r.nodes {
		origin := n.origin
		if origin == "" {
			// Never heard (cut off before its first heartbeat arrived),
			// but its ops may come through a relay: show that route.
			origin = r.relayedOriginLocked(n.id)
		}
		if origin == "" || !n.inMap {
			continue
		}
		applied := r.core.Applied(origin)
		o := OriginStatus{Node: n.id, Origin: origin, State: n.mapState.String(), Last: n.last, Applied: applied}
		// Direct while this node hears the origin's node; otherwise through
		// whoever delivered its ops last.
		if rt, ok := r.routes[origin]; ok && rt.from != n.id && !n.hearsMe(now, r.linkTimeout()) {
			o.Via = rt.from
		}
		if n.last > applied {
			o.LagOps = n.last - applied
			if !n.behind.IsZero() {
				o.LagSeconds = now.Sub(n.behind).Seconds()
			}
		}
		st.Origins = append(st.Origins, o)
	}
	st.CronLeaders = slices.Clone(r.leaders)
	senders := make(map[string]*sender, len(r.senders))
	for id, s := range r.senders {
		senders[id] = s
	}
	peerInfo := map[string]*nodeState{}
	for id, n := range r.nodes {
		peerInfo[id] = n
	}
	var peers []PeerStatus
	for id := range senders {
		p := PeerStatus{Node: id}
		if n := peerInfo[id]; n != nil {
			p.Synced = n.flags&hbSynced != 0
			p.Applied = n.applied
		}
		for k := range r.relays {
			if k.peer == id {
				p.Relaying = append(p.Relaying, NodeOf(k.origin))
			}
		}
		slices.Sort(p.Relaying)
		peers = append(peers, p)
	}
	r.mu.Unlock()
	last := r.core.LastSeq()
	for i := range peers {
		acked, _ := senders[peers[i].Node].position()
		peers[i].Acked = acked
		if last > acked {
			peers[i].LagOps = last - acked
			if op, err := r.core.LocalOp(acked + 1); err == nil && op != nil {
				peers[i].LagSeconds = max(0, now.Sub(op.TS.Time()).Seconds())
			}
		}
	}
	slices.SortFunc(st.Origins, func(a, b OriginStatus) int { return strings.Compare(a.Node, b.Node) })
	slices.SortFunc(peers, func(a, b PeerStatus) int { return strings.Compare(a.Node, b.Node) })
	st.Peers = peers
	if err := r.ready(st); err != nil {
		st.NotReady = err.Error()
	} else {
		st.Ready = true
	}
	return st
}

// Ready returns nil when the node's data is complete and fresh: it is a
// synced replica and no live peer's ops have waited here longer than
// MaxLag. Writes are accepted whatever Ready says once synced (see the
// package documentation): the caller decides what not-ready means, for
// example /readyz failing so that DNS and load balancers send clients to
// fresher nodes.
func (r *Replicator) Ready() error { return r.ready(r.Status()) }

func (r *Replicator) ready(st Status) error {
	if st.State != stateNames[stateSynced] {
		return fmt.Errorf("%s (%s)", st.State, st.Writes)
	}
	if r.opts.MaxLag < 0 {
		return nil
	}
	var errs []error
	for _, o := range st.Origins {
		if o.State == nodemap.Alive.String() && o.LagSeconds > r.opts.MaxLag.Seconds() {
			errs = append(errs, fmt.Errorf("%d ops of %s waiting for %.0fs (max_lag %v)", o.LagOps, o.Node, o.LagSeconds, r.opts.MaxLag))
		}
	}
	return errors.Join(errs...)
}

// senderPosition returns the position of peer's sender and whether it is
// known (tests).
func (r *Replicator) senderPosition(peer string) (uint64, bool) {
	r.mu.Lock()
	s := r.senders[peer]
	r.mu.Unlock()
	if s == nil {
		return 0, false
	}
	return s.position()
}

// relayedOriginLocked is the incarnation of node id whose ops arrived
// last through another node ("" if none did); r.mu held.
func (r *Replicator) relayedOriginLocked(id string) string {
	var origin string
	var at time.Time
	for o, rt := range r.routes {
		if NodeOf(o) == id && rt.from != id && rt.at.After(at) {
			origin, at = o, rt.at
		}
	}
	return origin
}
