package pubsub

import (
	"hash/fnv"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/serf/coordinate"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgenode/edgenode/internal/nodemap"
)

// cluster is this node's side of pubsub between nodes: which peers run
// pubsub and whether the direct path to each works (heartbeats), which
// channels each follows (interest), how to reach each (directly, or
// through one peer that reaches it), and the loop that sends heartbeats
// and digests and watches sync rounds and gaps.
//
// Lock order: channel.mu, then cluster.mu, then peerState.rmu; cluster.rmu
// is taken last (it may be taken under channel.mu, never the other way).
type cluster struct {
	p         *PubSub
	mesh      Mesh
	src       nodemap.Source // nil: the mesh publishes no node map
	self      string         // this node's id in the mesh ("" when unknown)
	instance  uint64
	hbEvery   time.Duration
	deadAfter time.Duration // a direct path is down after this long without a heartbeat

	mu      sync.RWMutex
	peers   map[string]*peerState
	members map[string]time.Time              // live members of the node map, and since when
	coords  map[string]*coordinate.Coordinate // network coordinates from the node map, this node's included
	legacy  []string                          // members that never sent a heartbeat: nodes from before heartbeats

	rmu       sync.Mutex
	rounds    map[uint64]*syncRound
	nextRound uint64
	gaps      map[*channel]struct{} // channels with a stream waiting for missing messages
}

// peerState is what this node knows of one peer running pubsub.
type peerState struct {
	id       string
	instance uint64
	heardAt  time.Time            // last heartbeat received on the direct path
	flagsMe  byte                 // what that heartbeat said of this node
	reach    map[string]bool      // peers it reaches directly, as of that heartbeat
	seen     time.Time            // last sign of life: its heartbeat, or a peer reaching it
	direct   bool                 // our direct path to it works (set every tick)
	interest map[uint64]time.Time // channels it follows, and when it last said so
	sendDig  bool                 // send it our digest at the next tick: it is new, or restarted
	digSent  bool                 // we sent this instance our digest

	sentDirect, sentRelay prometheus.Counter
	directGauge           prometheus.Gauge

	rmu         sync.Mutex
	recent      []sentMsg // sent directly lately (from rhead on); resent through a relay if the path turns out down
	rhead       int
	recentBytes int
}

type sentMsg struct {
	at    time.Time
	topic string
	msg   []byte
}

const (
	// forgetAfter: a peer without any sign of life for this long is
	// forgotten (with the interest it had announced).
	forgetAfter = 30 * time.Second
	// Bounds of what is kept per peer for a resend through a relay.
	maxRecent      = 512
	maxRecentBytes = 4 << 20
	// maxInterest bounds the channels one peer may follow here.
	maxInterest = 1 << 20
)

// legacyAfter: a live member that has sent no heartbeat for this long (4s
// by default) runs a version of pubsub from before them, and gets every
// publish in the old form, as such nodes sent to each other.
func (c *cluster) legacyAfter() time.Duration { return 20 * c.hbEvery }

func newCluster(p *PubSub, m Mesh) *cluster {
	c := &cluster{
		p:         p,
		mesh:      m,
		instance:  newInstance(),
		hbEvery:   p.opts.HeartbeatInterval,
		deadAfter: p.opts.HeartbeatInterval * 7 / 2,
		peers:     map[string]*peerState{},
		members:   map[string]time.Time{},
		rounds:    map[uint64]*syncRound{},
		gaps:      map[*channel]struct{}{},
	}
	if src, ok := m.(nodemap.Source); ok {
		c.src = src
		if mp, _ := src.Current(); mp != nil {
			for _, n := range mp.Nodes {
				if n.Self {
					c.self = n.ID
				}
			}
		}
	}
	return c
}

func newInstance() uint64 {
	for {
		if id := newSID()<<24 | newSID()&(1<<24-1); id != 0 {
			return id
		}
	}
}

// ---- heartbeats and paths ----

func (c *cluster) run() {
	defer c.p.bg.Done()
	t := time.NewTicker(c.hbEvery)
	defer t.Stop()
	nextDigest := time.Now().Add(c.p.opts.DigestInterval)
	for {
		select {
		case <-c.p.stop:
			return
		case now := <-t.C:
			c.tick(now)
			c.p.expireRounds(now)
			c.p.checkGaps(now)
			if !now.Before(nextDigest) {
				nextDigest = now.Add(c.p.opts.DigestInterval)
				c.sendDigests(nil)
				c.expireInterest(now)
			}
		}
	}
}

// allUnreachable reports whether no path reaches any of the peers ids:
// each one's direct path is down and nobody has reached it for longer
// than deadAfter (a peer relaying for it refreshes seen).
func (c *cluster) allUnreachable(ids map[string]bool, now time.Time) bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	for id := range ids {
		if c.reachableLocked(c.peers[id], now) {
			return false
		}
	}
	return true
}

// tick decides which direct paths work, resends what went down a path
// that turned out to be cut, and broadcasts the heartbeat.
func (c *cluster) tick(now time.Time) {
	var gone map[string]bool
	var live map[string]bool
	if c.src != nil {
		mp, _ := c.src.Current()
		gone = map[string]bool{}
		live = map[string]bool{}
		coords := map[string]*coordinate.Coordinate{}
		for _, n := range mp.Nodes {
			if n.State != nodemap.Dead && !n.Self {
				live[n.ID] = true
			}
			if n.Coord != nil {
				coords[n.ID] = n.Coord
			}
		}
		c.mu.Lock()
		c.coords = coords
		for id := range c.peers {
			if !live[id] {
				gone[id] = true
			}
		}
		c.mu.Unlock()
	}
	var down []*peerState
	var newDigest []string
	hb := heartbeat{instance: c.instance}
	c.mu.Lock()
	if live != nil {
		c.legacy = c.legacy[:0]
		for id := range c.members {
			if !live[id] {
				delete(c.members, id)
			}
		}
		for id := range live {
			since, ok := c.members[id]
			if !ok {
				c.members[id] = now
				continue
			}
			if ps := c.peers[id]; ps == nil && now.Sub(since) >= c.legacyAfter() {
				c.legacy = append(c.legacy, id)
			}
		}
	}
	for id, ps := range c.peers {
		if gone[id] || now.Sub(ps.seen) > forgetAfter {
			c.forgetLocked(ps)
			continue
		}
		hears := now.Sub(ps.heardAt) <= c.deadAfter
		ok := hears && (c.self == "" || ps.flagsMe&hbHears != 0)
		if ps.direct && !ok {
			down = append(down, ps)
			c.p.log.Info("pubsub: direct path to peer down; relaying", "peer", id)
		} else if !ps.direct && ok && !ps.heardAt.IsZero() {
			c.p.log.Info("pubsub: direct path to peer up", "peer", id)
		}
		if ps.direct != ok {
			ps.direct = ok
			ps.directGauge.Set(b2f(ok))
		}
		var f byte
		if hears {
			f |= hbHears
		}
		if ok {
			f |= hbDirect
		}
		hb.peers = append(hb.peers, hbPeer{id, f})
		if ps.sendDig {
			ps.sendDig = false
			ps.digSent = true
			newDigest = append(newDigest, id)
		}
	}
	c.mu.Unlock()
	c.mesh.Broadcast(MeshControlTopic, encodeHeartbeat(hb))
	for _, ps := range down {
		// What went straight to it lately may be stuck in the cut: send
		// it again through a relay. Duplicates are dropped by id there.
		for _, m := range ps.takeRecent(now.Add(-c.resendWindow())) {
			c.send(ps.id, m.topic, m.msg)
		}
	}
	if len(newDigest) > 0 {
		c.sendDigests(newDigest)
	}
}

// resendWindow is how far back direct sends are resent through a relay
// when a path turns out down: the time it takes to notice, and a margin.
func (c *cluster) resendWindow() time.Duration { return c.deadAfter + 2*c.hbEvery }

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func (c *cluster) forgetLocked(ps *peerState) {
	delete(c.peers, ps.id)
	c.p.met.peerSent.DeleteLabelValues(ps.id, "direct")
	c.p.met.peerSent.DeleteLabelValues(ps.id, "relay")
	c.p.met.peerDirect.DeleteLabelValues(ps.id)
	c.p.log.Info("pubsub: peer forgotten", "peer", ps.id)
}

// peerLocked returns the state of peer id, creating it.
func (c *cluster) peerLocked(id string, now time.Time) *peerState {
	ps := c.peers[id]
	if ps == nil {
		ps = &peerState{
			id: id, seen: now,
			sentDirect:  c.p.met.peerSent.WithLabelValues(id, "direct"),
			sentRelay:   c.p.met.peerSent.WithLabelValues(id, "relay"),
			directGauge: c.p.met.peerDirect.WithLabelValues(id),
		}
		c.peers[id] = ps
	}
	return ps
}

func (c *cluster) onHeartbeat(from string, h heartbeat) {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	ps := c.peerLocked(from, now)
	if ps.instance != h.instance {
		if ps.instance != 0 {
			c.p.log.Info("pubsub: peer restarted", "peer", from)
		}
		// A new process follows nothing yet, and knows nothing of what
		// we follow: tell it (our digest) at the next tick.
		ps.instance = h.instance
		ps.interest = nil
		ps.sendDig, ps.digSent = true, false
	}
	ps.heardAt, ps.seen = now, now
	ps.flagsMe = 0
	clear(ps.reach)
	for _, e := range h.peers {
		if e.id == c.self {
			ps.flagsMe = e.flags
			continue
		}
		if e.flags&hbDirect != 0 {
			if ps.reach == nil {
				ps.reach = map[string]bool{}
			}
			ps.reach[e.id] = true
			if q := c.peers[e.id]; q != nil {
				q.seen = now // alive, if not to us
			}
		}
	}
}

// ---- sending ----

// send routes msg on topic to peer id: directly when that path works,
// else through a peer that reaches it (one hop). It reports whether it
// went through a relay.
func (c *cluster) send(id, topic string, msg []byte) (relayed bool) {
	c.mu.RLock()
	ps := c.peers[id]
	var via []string
	if ps != nil && !ps.direct {
		via = c.relaysLocked(ps)
	}
	c.mu.RUnlock()
	if len(via) == 0 {
		// Direct, or no other way: try it.
		_ = c.mesh.Send(id, topic, msg)
		if ps != nil {
			ps.remember(topic, msg, c.resendWindow())
		}
		return false
	}
	w := wrap(kindRelay, id, msg)
	for _, r := range via {
		_ = c.mesh.Send(r, topic, w)
	}
	return true
}

// relaysLocked picks the peers to relay through to ps: one whose direct
// paths to us and to ps work (as its heartbeats say), the same one for a
// given target while paths hold; if none is known, up to two peers that
// we reach, which may reach it. Of several, the one on the shortest path
// by network coordinates (issue 19); without coordinates, one spread by
// a hash of the target, so the targets' shares fall on different relays.
func (c *cluster) relaysLocked(ps *peerState) []string {
	var cands []string
	var costs []nodemap.RelayCandidate
	known := false
	for id, r := range c.peers {
		if r != ps && r.direct && r.reach[ps.id] {
			cands = append(cands, id)
			cost, ok := nodemap.RelayCost(c.coords[c.self], c.coords[id], c.coords[ps.id])
			costs = append(costs, nodemap.RelayCandidate{ID: id, Cost: cost, Known: ok})
			known = known || ok
		}
	}
	if known {
		return []string{nodemap.PickRelay(costs)}
	}
	if len(cands) > 0 {
		slices.Sort(cands)
		h := fnv.New32a()
		h.Write([]byte(ps.id))
		i := int(h.Sum32() % uint32(len(cands)))
		return cands[i : i+1]
	}
	for id, r := range c.peers {
		if r != ps && r.direct {
			cands = append(cands, id)
			if len(cands) == 2 {
				break
			}
		}
	}
	return cands
}

// remember keeps a direct send for window, to be resent through a relay
// if the path turns out to have been down.
func (ps *peerState) remember(topic string, msg []byte, window time.Duration) {
	now := time.Now()
	ps.rmu.Lock()
	defer ps.rmu.Unlock()
	ps.recent = append(ps.recent, sentMsg{now, topic, msg})
	ps.recentBytes += len(msg)
	old := now.Add(-window)
	for ps.rhead < len(ps.recent) && (ps.recent[ps.rhead].at.Before(old) ||
		len(ps.recent)-ps.rhead > maxRecent || ps.recentBytes > maxRecentBytes) {
		ps.recentBytes -= len(ps.recent[ps.rhead].msg)
		ps.recent[ps.rhead] = sentMsg{}
		ps.rhead++
	}
	if ps.rhead > 64 && 2*ps.rhead > len(ps.recent) {
		n := copy(ps.recent, ps.recent[ps.rhead:])
		clear(ps.recent[n:])
		ps.recent, ps.rhead = ps.recent[:n], 0
	}
}

// takeRecent returns (and forgets) what was sent directly since t.
func (ps *peerState) takeRecent(since time.Time) []sentMsg {
	ps.rmu.Lock()
	defer ps.rmu.Unlock()
	var out []sentMsg
	for _, m := range ps.recent[ps.rhead:] {
		if !m.at.Before(since) {
			out = append(out, m)
		}
	}
	ps.recent, ps.rhead, ps.recentBytes = nil, 0, 0
	return out
}

// publish sends a message of the channel with hash h to every peer that
// follows it (every peer, with Options.BroadcastAll), and in the old form
// (channel, data) to nodes from before interest routing.
func (c *cluster) publish(h uint64, msg []byte, channel string, data []byte) {
	var buf [16]*peerState
	targets := buf[:0]
	c.mu.RLock()
	for _, ps := range c.peers {
		if _, ok := ps.interest[h]; ok || c.p.opts.BroadcastAll {
			targets = append(targets, ps)
		}
	}
	if len(c.legacy) > 0 {
		old := encodeLegacy(channel, data)
		for _, id := range c.legacy {
			_ = c.mesh.Send(id, MeshTopic, old)
		}
	}
	c.mu.RUnlock()
	for _, ps := range targets {
		if c.send(ps.id, MeshTopic, msg) {
			ps.sentRelay.Inc()
		} else {
			ps.sentDirect.Inc()
		}
	}
}

// targets are the peers a sync round asks: those heard from lately
// (directly, or through a peer that reaches them).
func (c *cluster) targets(now time.Time) []string {
	c.mu.RLock()
	defer c.mu.RUnlock()
	var out []string
	for id, ps := range c.peers {
		if c.reachableLocked(ps, now) {
			out = append(out, id)
		}
	}
	return out
}

// reachableLocked reports whether peer ps (nil: unknown) is heard from
// lately: its direct path works, or a peer reached it within deadAfter.
func (c *cluster) reachableLocked(ps *peerState, now time.Time) bool {
	return ps != nil && (ps.direct || now.Sub(ps.seen) <= c.deadAfter)
}

// speaks reports whether peer id has sent heartbeats: it speaks this
// protocol, and an old-form message from it is a copy (sent while we were
// taken for an old node) of one that comes with its id.
func (c *cluster) speaks(id string) bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	ps := c.peers[id]
	return ps != nil && ps.instance != 0
}

// routable reports whether peer id is heard from lately.
func (c *cluster) routable(id string, now time.Time) bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.reachableLocked(c.peers[id], now)
}

// onRelay forwards a relay request to its target: one hop, no further.
func (c *cluster) onRelay(from, topic string, b []byte) bool {
	to, inner, err := unwrap(b)
	if err != nil || to == from {
		return false
	}
	c.p.met.relayed.Inc()
	_ = c.mesh.Send(to, topic, wrap(kindRelayed, from, inner))
	return true
}

// ---- interest ----
//
// A peer's interest in a channel is set by its follow round (register) and
// refreshed by its digests; it ends with its "no longer" message, or when
// three digests in a row have not named the channel (that message was
// lost). Digests never remove: one made just before a follow began may
// arrive after it.

// register records that peer from follows the channel with hash h. The
// caller holds the channel's lock (when this node has the channel), so
// that a publish either sees the interest or is counted in the heads the
// caller answers with.
func (c *cluster) register(from string, h uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.peerLocked(from, time.Now()).follows(h, time.Now())
}

func (ps *peerState) follows(h uint64, now time.Time) {
	if ps.interest == nil {
		ps.interest = map[uint64]time.Time{}
	}
	if _, ok := ps.interest[h]; ok || len(ps.interest) < maxInterest {
		ps.interest[h] = now
	}
}

func (c *cluster) onInterest(from string, ops []interestOp) {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	ps := c.peerLocked(from, now)
	for _, op := range ops {
		if op.follow {
			ps.follows(op.hash, now)
		} else {
			delete(ps.interest, op.hash)
		}
	}
}

// unfollow tells every peer this node no longer follows the channel.
func (c *cluster) unfollow(h uint64) {
	msg := encodeInterest([]interestOp{{h, false}})
	for _, id := range c.targets(time.Now()) {
		c.send(id, MeshControlTopic, msg)
	}
}

// onDigest refreshes what a peer follows with one part of its digest. The
// part's hashes are answered with this node's heads.
func (c *cluster) onDigest(from string, d digest) {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	ps := c.peerLocked(from, now)
	for _, h := range d.hashes {
		ps.follows(h, now)
	}
	if !ps.digSent {
		// It (re)discovered us: we may be new to it as well.
		ps.sendDig = true
	}
}

// expireInterest forgets what peers have not said they follow for three
// digest intervals.
func (c *cluster) expireInterest(now time.Time) {
	old := now.Add(-3 * c.p.opts.DigestInterval)
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, ps := range c.peers {
		for h, at := range ps.interest {
			if at.Before(old) {
				delete(ps.interest, h)
			}
		}
	}
}

// sendDigests sends the hashes of every channel this node follows to the
// peers to (nil: all), in parts of up to digestPartLen.
func (c *cluster) sendDigests(to []string) {
	if to == nil {
		to = c.targets(time.Now())
	}
	if len(to) == 0 {
		return
	}
	hashes := c.p.followedHashes()
	round := c.newRoundID()
	parts := max(1, (len(hashes)+digestPartLen-1)/digestPartLen)
	for i := range parts {
		part := hashes[i*digestPartLen : min(len(hashes), (i+1)*digestPartLen)]
		msg := encodeDigest(digest{round: round, part: uint64(i), parts: uint64(parts), hashes: part})
		for _, id := range to {
			c.send(id, MeshControlTopic, msg)
		}
	}
}
