package repl

import (
	"fmt"
	"slices"
	"time"

	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
)

// Heartbeats and the compaction frontier (see the package documentation):
// every node announces its clock and positions; a peer's announcement
// becomes safe here once its ops are all applied, and the minimum over
// every node known is the frontier handed to the replica core.

// hbQueue keeps recent (frontier, last) announcements of one origin and the
// newest frontier whose ops this node has all applied.
type hbQueue struct {
	pending []hbEntry
	safe    crdt.Timestamp
}

type hbEntry struct {
	frontier crdt.Timestamp
	last     uint64
}

const hbQueueMax = 128

func (q *hbQueue) push(f crdt.Timestamp, last uint64) {
	if n := len(q.pending); n > 0 && q.pending[n-1].last == last && q.pending[n-1].frontier.Compare(f) >= 0 {
		return
	}
	if len(q.pending) >= hbQueueMax {
		// Keep the newest: the old ones would only give an older frontier.
		q.pending = slices.Delete(q.pending, 0, len(q.pending)-hbQueueMax/2)
	}
	q.pending = append(q.pending, hbEntry{f, last})
}

// advance moves safe to the newest announced frontier whose ops are all
// applied (applied >= its last).
func (q *hbQueue) advance(applied uint64) {
	i := 0
	for i < len(q.pending) && q.pending[i].last <= applied {
		if q.pending[i].frontier.Compare(q.safe) > 0 {
			q.safe = q.pending[i].frontier
		}
		i++
	}
	q.pending = q.pending[i:]
}

// onHeartbeat records a peer's announcement.
func (r *Replicator) onHeartbeat(from string, m heartbeat) {
	if NodeOf(m.origin) != from {
		r.bad(from, "heartbeat", fmt.Errorf("origin %q is not an incarnation of %q", m.origin, from))
		return
	}
	if err := r.core.ObserveClock(m.frontier); err != nil {
		// Not heard: a peer whose clock runs ahead is not a sync source,
		// does not move its frontier here, and is counted as unheard
		// wherever that matters, until its clock is right.
		r.clockRefused(from, "heartbeat", 1, err)
		return
	}
	r.mu.Lock()
	// Read under r.mu: a sync resets both the applied positions and the
	// queues (resetFrontiers), and a heartbeat must not mix the two.
	applied := r.core.Applied(m.origin)
	n := r.node(from)
	if n.origin != m.origin {
		if n.origin != "" {
			r.log.Info("peer has a new incarnation (its op log was wiped)", "peer", from, "old", n.origin, "new", m.origin)
		}
		n.origin = m.origin
		n.hbs = hbQueue{}
		n.behind = time.Time{}
	}
	n.heard = time.Now()
	n.last, n.first, n.flags, n.applied = m.last, m.first, m.flags, m.applied
	n.hbs.push(m.frontier, m.last)
	n.hbs.advance(applied)
	if applied < m.last {
		if n.behind.IsZero() {
			n.behind = time.Now()
		}
	} else {
		n.behind = time.Time{}
	}
	s := r.senders[from]
	var relays []*sender
	for k, rs := range r.relays {
		if k.peer == from {
			relays = append(relays, rs)
		}
	}
	r.mu.Unlock()
	if s != nil {
		s.onHeartbeat(m.applied[r.origin], m.flags)
	}
	for _, rs := range relays {
		rs.onHeartbeat(m.applied[rs.origin], m.flags)
	}
	// A position below what the origin still has in its log can never be
	// streamed again: resync.
	if r.isSynced() && ((m.first == 0 && m.last > applied) || (m.first > 0 && applied+1 < m.first)) {
		reason := fmt.Sprintf("behind %s's trimmed op log (at %d, its log starts at %d)", m.origin, applied, m.first)
		if r.resync.CompareAndSwap(nil, &reason) {
			r.log.Warn("resync needed", "reason", reason)
			r.wakeSync()
		}
	}
}

// resetFrontiers forgets every announced frontier: after a sync the
// applied positions were replaced, and a frontier satisfied under the old
// ones says nothing about the new data.
func (r *Replicator) resetFrontiers() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.self = &hbQueue{}
	for _, n := range r.nodes {
		n.hbs = hbQueue{}
		n.behind = time.Time{}
	}
}

// heartbeatLoop announces this node's clock and positions, fences the
// clock in the op log, and recomputes the compaction frontier.
func (r *Replicator) heartbeatLoop() {
	defer r.wg.Done()
	t := time.NewTicker(r.opts.HeartbeatInterval)
	defer t.Stop()
	for {
		r.beat()
		select {
		case <-r.ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (r *Replicator) beat() {
	f := r.core.Frontier()
	if f.IsZero() {
		return
	}
	// Announce only what is fenced: after a crash the clock resumes above
	// the log's max timestamp, so a fenced frontier stays true forever.
	// The fence runs a second ahead so that an idle node commits about once
	// a second, not once per heartbeat.
	if mt := r.core.MaxTimestamp(); mt.Compare(f) < 0 {
		fence := crdt.Timestamp{Wall: f.Wall + 1000, Node: r.origin}
		if err := r.core.Fence(r.ctx, fence); err != nil {
			if r.ctx.Err() == nil {
				r.log.Warn("fencing the clock in the op log", "err", err)
			}
			return
		}
	}
	if mt := r.core.MaxTimestamp(); mt.Compare(f) < 0 {
		f = mt
	}
	last := r.core.LastSeq() // read after the frontier: see replica.Replication.Frontier
	r.mu.Lock()
	applied := r.core.AppliedVector()
	r.self.push(f, last)
	r.self.advance(applied[r.origin])
	r.mu.Unlock()
	r.updateStable()
	if t := r.opts.Transport; t != nil {
		var flags byte
		switch r.state.Load() {
		case stateSynced:
			flags |= hbSynced
		case stateSyncing:
			flags |= hbSyncing
		}
		hb := heartbeat{origin: r.origin, frontier: f, last: last, first: r.core.FirstSeq(), flags: flags, applied: applied}
		t.Broadcast(Topic, hb.encode())
		r.mu.Lock()
		links := linksMsg{origin: r.origin, nodes: r.heardLocked(time.Now())}
		r.mu.Unlock()
		t.Broadcast(Topic, links.encode())
		r.planRelays()
	}
}

// updateStable recomputes the compaction frontier: the minimum, over this
// node and every peer it knows (present or absent from the node map, until
// forgotten), of the newest frontier of theirs whose ops are all applied
// here, and never later than the wall clock minus StableMargin. A peer seen
// in the map but not heard yet freezes it where it was.
func (r *Replicator) updateStable() {
	stable := crdt.Timestamp{Wall: time.Now().Add(-r.opts.StableMargin).UnixMilli()}
	if !r.isSynced() {
		stable = crdt.Timestamp{}
	}
	r.mu.Lock()
	if r.self.safe.Compare(stable) < 0 {
		stable = r.self.safe
	}
	for _, n := range r.nodes {
		if n.forgotten(r.opts.ForgetPeerAfter) {
			continue
		}
		var s crdt.Timestamp
		if n.origin == "" {
			s = n.frozen
		} else {
			s = n.hbs.safe
		}
		if s.Compare(stable) < 0 {
			stable = s
		}
	}
	r.mu.Unlock()
	r.stable.Store(&stable)
	r.core.SetStable(stable)
	if stable.Compare(*r.maxStable.Load()) > 0 {
		r.maxStable.Store(&stable)
	}
}

// stableNow is the compaction frontier last handed to the core.
func (r *Replicator) stableNow() crdt.Timestamp {
	return *r.stable.Load()
}
