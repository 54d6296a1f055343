package pubsub

import (
	"encoding/json"
	"time"
)

// A sync round asks peers what they have of one channel: the heads of its
// streams (so that a new subscriber's position names them), and the
// messages after a vector (so that a resuming subscriber gets what it
// missed, or this node what it lost). Three kinds:
//
//   - follow: the channel has its first subscriber here. The request also
//     registers this node's interest; each peer registers it and answers
//     in one critical section, so every message of that peer is either in
//     its answer's heads (before the subscribers' position) or sent here
//     afterwards.
//   - fetch: a subscriber resumes from a position the history here does
//     not cover (this node followed the channel only lately, or the
//     position is ahead of it).
//   - repair: a stream has a gap (a message lost between nodes, or sent
//     while a path was cut): its origin is asked for what is missing.
//
// A round completes when every peer asked has answered or become
// unreachable (no path to it, and no peer has reached it, for longer than
// a direct path takes to be declared down: a node killed while the round
// was asked of it), or after Options.SyncTimeout. Without the second
// rule, every widget reconnecting to a node after another died waited the
// whole timeout for the dead node's answer.
type syncRound struct {
	id       uint64
	ch       *channel
	kind     roundKind
	flags    byte
	since    vector
	deadline time.Time
	waiting  map[string]bool
	answered map[string]bool // peers whose final part arrived
	heads    map[uint64]head
	got      map[msgKey]*outMsg
	gotBytes int
	done     bool
}

type roundKind uint8

const (
	roundFollow roundKind = iota
	roundFetch
	roundRepair
)

func (k roundKind) String() string {
	switch k {
	case roundFollow:
		return "follow"
	case roundFetch:
		return "fetch"
	}
	return "repair"
}

// Bounds of what one round collects.
const (
	maxRoundMsgs  = 1 << 14
	maxRoundBytes = 64 << 20
)

// gapWait is how long a gap may last before a repair is asked for: the
// message may just be late (it came by another path).
func (p *PubSub) gapWait() time.Duration { return 2 * p.opts.HeartbeatInterval }

const maxRepairTries = 3

// newRoundID allocates a round's id.
func (c *cluster) newRoundID() uint64 {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	c.nextRound++
	return c.nextRound
}

// startRoundLocked sends round id's request to the peers to and returns
// the round; with nobody to ask it completes at once.
func (p *PubSub) startRoundLocked(ch *channel, id uint64, kind roundKind, flags byte, since vector, to []string, now time.Time) *syncRound {
	c := p.cl
	r := &syncRound{id: id, ch: ch, kind: kind, flags: flags, since: since, deadline: now.Add(p.opts.SyncTimeout),
		waiting: map[string]bool{}, answered: map[string]bool{}, heads: map[uint64]head{}, got: map[msgKey]*outMsg{}}
	for _, id := range to {
		r.waiting[id] = true
	}
	if len(to) > 0 {
		c.rmu.Lock()
		c.rounds[r.id] = r
		c.rmu.Unlock()
	}
	switch kind {
	case roundRepair:
		ch.repair = r
	default:
		ch.round = r
	}
	p.met.syncs.WithLabelValues(kind.String()).Inc()
	if len(to) == 0 {
		p.completeLocked(ch, r, now)
		return r
	}
	req := encodeSyncReq(syncReq{id: r.id, flags: flags, channel: ch.name, since: since})
	for _, id := range to {
		c.send(id, MeshControlTopic, req)
	}
	return r
}

// expireRounds completes the rounds past their deadline, and those whose
// remaining peers are all unreachable.
func (p *PubSub) expireRounds(now time.Time) {
	c := p.cl
	var open []*syncRound
	c.rmu.Lock()
	for _, r := range c.rounds {
		open = append(open, r)
	}
	c.rmu.Unlock()
	for _, r := range open {
		r.ch.mu.Lock()
		if !r.done {
			if now.After(r.deadline) {
				p.completeLocked(r.ch, r, now)
			} else if len(r.waiting) > 0 && c.allUnreachable(r.waiting, now) {
				p.met.syncUnreachable.Inc()
				p.completeLocked(r.ch, r, now)
			}
		}
		r.ch.mu.Unlock()
	}
}

// onSyncReq answers a peer's sync request (and registers its interest).
func (p *PubSub) onSyncReq(from string, q syncReq) {
	tn, _, ok := splitChannel(q.channel)
	if !ok || p.tenant(tn) == nil {
		p.met.meshBad.Inc()
		return
	}
	h := channelHash(q.channel)
	var heads []head
	var msgs []*outMsg
	p.chMu.RLock()
	ch := p.channels[q.channel]
	if ch != nil {
		ch.mu.Lock()
		if q.flags&syncRegister != 0 {
			p.cl.register(from, h)
		}
		heads = ch.headsLocked()
		if q.flags&syncMessages != 0 {
			msgs = ch.historyAfterLocked(q.since, q.flags&syncAll != 0)
		}
		ch.mu.Unlock()
	} else if q.flags&syncRegister != 0 {
		// Under chMu: a publish that creates the channel comes after, and
		// sees the interest.
		p.cl.register(from, h)
	}
	p.chMu.RUnlock()

	// The answer, in parts of up to maxReplyPart; heads go in the last.
	rep := syncReply{id: q.id, channel: q.channel}
	size := 0
	for _, m := range msgs {
		if size > 0 && size+len(m.data) > maxReplyPart {
			p.cl.send(from, MeshTopic, encodeSyncReply(rep))
			rep.msgs, size = nil, 0
		}
		rep.msgs = append(rep.msgs, wireMsg{sid: m.sid, seq: m.seq, otime: m.otime, data: m.data})
		size += len(m.data) + 24
	}
	rep.final, rep.heads = true, heads
	p.cl.send(from, MeshTopic, encodeSyncReply(rep))
}

// onSyncReply adds a part of an answer to its round.
func (p *PubSub) onSyncReply(from string, rep syncReply) {
	c := p.cl
	c.rmu.Lock()
	r := c.rounds[rep.id]
	c.rmu.Unlock()
	if r == nil || r.ch.name != rep.channel {
		return // late: the round completed without it
	}
	ch := r.ch
	now := time.Now()
	ch.mu.Lock()
	defer ch.mu.Unlock()
	if r.done || !r.waiting[from] {
		return
	}
	for _, m := range rep.msgs {
		k := msgKey{m.sid, m.seq}
		if _, ok := r.got[k]; ok || len(r.got) >= maxRoundMsgs || r.gotBytes+len(m.data) > maxRoundBytes || !p.validData(m.data) {
			continue
		}
		// A copy: the part's buffer is large and short-lived.
		r.got[k] = &outMsg{sid: m.sid, seq: m.seq, otime: m.otime, data: append([]byte(nil), m.data...), at: now}
		r.gotBytes += len(m.data)
	}
	if !rep.final {
		return
	}
	for _, h := range rep.heads {
		if h.origin == "" {
			h.origin = from
		}
		if cur, ok := r.heads[h.sid]; !ok || h.last > cur.last {
			r.heads[h.sid] = h
		}
	}
	delete(r.waiting, from)
	r.answered[from] = true
	if r.kind == roundFollow && r.flags&syncRegister != 0 {
		if ch.confirmed == nil {
			ch.confirmed = map[string]bool{}
		}
		ch.confirmed[from] = true
	}
	if len(r.waiting) == 0 {
		p.completeLocked(ch, r, now)
	}
}

func (p *PubSub) validData(data []byte) bool {
	return len(data) <= p.o().MaxMessageBytes && json.Valid(data)
}

// completeLocked ends a round: what it learned goes into the channel's
// streams and history, and the subscribers waiting for it are admitted.
func (p *PubSub) completeLocked(ch *channel, r *syncRound, now time.Time) {
	r.done = true
	p.cl.rmu.Lock()
	delete(p.cl.rounds, r.id)
	p.cl.rmu.Unlock()
	// A round the channel no longer waits for (everyone left meanwhile,
	// and maybe came back with a round of their own) is dropped.
	switch {
	case ch.round == r:
		ch.round = nil
	case ch.repair == r:
		ch.repair = nil
	default:
		return
	}
	if ch.dead {
		return
	}
	switch r.kind {
	case roundFollow:
		if ch.follow != syncing {
			return
		}
		p.beginFollowingLocked(ch, r, now)
	case roundFetch, roundRepair:
		if ch.follow != following {
			return
		}
		p.learnLocked(ch, r, now)
		if r.kind == roundRepair {
			p.settleRepairLocked(ch, r, now)
		}
	}
	p.admitPendingLocked(ch, r, now)
}

// beginFollowingLocked turns the answers to a follow round into the
// channel's streams: each stream's last is its best head (messages up to
// it come before the position of the subscribers waiting); messages
// fetched for them go into the history; messages that arrived meanwhile
// are delivered after.
func (p *PubSub) beginFollowingLocked(ch *channel, r *syncRound, now time.Time) {
	var older [][]*outMsg
	for sid, h := range r.heads {
		st := ch.streams[sid]
		if st == nil {
			st = ch.addStreamLocked(sid, h.origin, now)
		}
		if st.origin == "" && st != ch.own && h.origin != "" {
			st.origin = h.origin
		}
		st.otime = max(st.otime, h.otime)
		if h.last <= st.last {
			continue
		}
		var l []*outMsg
		for seq := st.last + 1; seq <= h.last; seq++ {
			if m := r.got[msgKey{sid, seq}]; m != nil {
				l = append(l, m)
			}
		}
		older = append(older, l)
		ch.advanceLocked(st, h.last, now)
	}
	for _, m := range mergeByTime(older) {
		ch.hist.push(m, p.o().History)
	}
	ch.trimLocked(now, p.o().HistoryTTL)
	ch.follow = following
	for _, st := range ch.streams {
		if st.last == 0 && st != ch.own {
			// Known only from messages that came while the round was out,
			// from a peer that did not answer: they may predate us.
			st.fresh = !ch.confirmed[st.origin]
		}
		p.drainLocked(ch, st, now)
	}
}

// learnLocked takes what a fetch or repair round brought into a followed
// channel: new heads, and messages this node had missed, which are
// delivered to its subscribers in order.
func (p *PubSub) learnLocked(ch *channel, r *syncRound, now time.Time) {
	for sid, h := range r.heads {
		st := ch.streams[sid]
		if st == nil {
			if h.last == 0 {
				continue
			}
			st = p.learnStreamLocked(ch, sid, h.origin, now)
		}
		st.head = max(st.head, h.last)
		st.otime = max(st.otime, h.otime)
	}
	for k, m := range r.got {
		st := ch.streams[k.sid]
		if st == nil || k.seq <= st.last || st.ooo[k.seq] != nil || len(st.ooo) >= maxOutOfOrder {
			continue
		}
		if st.ooo == nil {
			st.ooo = map[uint64]*outMsg{}
		}
		st.ooo[k.seq] = m
		st.head = max(st.head, k.seq)
	}
	for _, st := range ch.streams {
		p.drainLocked(ch, st, now)
	}
}

// learnStreamLocked starts tracking a stream a followed channel had not
// heard of. From a peer that confirmed our interest it is new (it began
// after): all of it is delivered. From another (it could not be reached
// when we began following), what it published before we did is skipped.
func (p *PubSub) learnStreamLocked(ch *channel, sid uint64, origin string, now time.Time) *stream {
	st := ch.addStreamLocked(sid, origin, now)
	st.fresh = !ch.confirmed[origin]
	return st
}

// drainLocked delivers a stream's messages that are next in line, and
// notes a gap when some are missing.
func (p *PubSub) drainLocked(ch *channel, st *stream, now time.Time) {
	if st.fresh {
		// Skip what was published before this node followed the channel.
		for {
			seq, m := st.lowest()
			if m == nil || m.otime >= ch.followFrom {
				break
			}
			delete(st.ooo, seq)
			ch.advanceLocked(st, max(st.last, seq), now)
		}
		if st.ooo[st.last+1] != nil || len(st.ooo) == 0 && st.head <= st.last {
			st.fresh = false
		}
	}
	for {
		m := st.ooo[st.last+1]
		if m == nil {
			break
		}
		delete(st.ooo, st.last+1)
		p.appendLocked(ch, st, m.seq, m.otime, m.data, now)
	}
	for seq := range st.ooo {
		if seq <= st.last {
			delete(st.ooo, seq)
		}
	}
	if st.head > st.last {
		if st.gapAt.IsZero() {
			st.gapAt = now
			p.cl.noteGap(ch)
		}
	} else {
		if !st.gapAt.IsZero() && st.tries > 0 {
			p.met.gaps.WithLabelValues("repaired").Inc()
		}
		st.gapAt, st.tries = time.Time{}, 0
	}
}

// lowest is the waiting message with the lowest sequence number.
func (st *stream) lowest() (uint64, *outMsg) {
	var best uint64
	var bm *outMsg
	for seq, m := range st.ooo {
		if bm == nil || seq < best {
			best, bm = seq, m
		}
	}
	return best, bm
}

func (c *cluster) noteGap(ch *channel) {
	c.rmu.Lock()
	c.gaps[ch] = struct{}{}
	c.rmu.Unlock()
}

// checkGaps asks for what gaps are missing once they have lasted gapWait,
// and gives up on those that repairs could not fill.
func (p *PubSub) checkGaps(now time.Time) {
	c := p.cl
	c.rmu.Lock()
	chs := make([]*channel, 0, len(c.gaps))
	for ch := range c.gaps {
		chs = append(chs, ch)
	}
	c.rmu.Unlock()
	for _, ch := range chs {
		ch.mu.Lock()
		pending := false
		if !ch.dead && ch.follow == following {
			pending = p.repairLocked(ch, now)
		}
		ch.mu.Unlock()
		if !pending {
			c.rmu.Lock()
			delete(c.gaps, ch)
			c.rmu.Unlock()
		}
	}
}

// repairLocked starts a repair round for the channel's gaps that are due;
// it reports whether any gap remains.
func (p *PubSub) repairLocked(ch *channel, now time.Time) bool {
	var since vector
	origins := map[string]bool{}
	remain := false
	for _, st := range ch.streams {
		if st.head <= st.last {
			continue
		}
		remain = true
		if ch.repair != nil || now.Sub(st.gapAt) < p.gapWait() {
			continue
		}
		if st.tries >= maxRepairTries {
			p.giveUpLocked(ch, st, now)
			continue
		}
		st.tries++
		since = append(since, streamPos{st.sid, st.last})
		origins[st.origin] = true
	}
	if len(since) == 0 {
		return remain
	}
	// The origins have their own messages; when one cannot be reached (or
	// is unknown), every peer is asked.
	var to []string
	for o := range origins {
		if o == "" || !p.cl.routable(o, now) {
			to = p.cl.targets(now)
			break
		}
		to = append(to, o)
	}
	sortVector(since)
	p.startRoundLocked(ch, p.cl.newRoundID(), roundRepair, syncMessages, since, to, now)
	return true
}

func sortVector(v vector) {
	for i := 1; i < len(v); i++ {
		for j := i; j > 0 && v[j].sid < v[j-1].sid; j-- {
			v[j], v[j-1] = v[j-1], v[j]
		}
	}
}

// settleRepairLocked gives up at once on gaps the streams' origins
// answered without filling: nobody has those messages any more.
func (p *PubSub) settleRepairLocked(ch *channel, r *syncRound, now time.Time) {
	for _, e := range r.since {
		st := ch.streams[e.sid]
		if st != nil && st.head > st.last && st.origin != "" && r.answered[st.origin] {
			p.giveUpLocked(ch, st, now)
		}
	}
}

// giveUpLocked skips a gap nobody can fill. The subscribers get an error
// must_reload (their state misses something), then the messages after it.
func (p *PubSub) giveUpLocked(ch *channel, st *stream, now time.Time) {
	if st.fresh {
		// A stream we learned late: what is missing at its start is what
		// it published before we followed.
		last := st.head
		if seq, m := st.lowest(); m != nil {
			last = max(st.last, seq-1)
		}
		st.fresh = false
		st.gapAt, st.tries = time.Time{}, 0
		ch.advanceLocked(st, last, now)
		p.drainLocked(ch, st, now)
		return
	}
	p.met.gaps.WithLabelValues("lost").Inc()
	p.log.Warn("pubsub: messages lost between nodes", "channel", ch.name, "origin", st.origin, "after", st.last)
	frame := serverFrame{Type: typeError, Code: codeMustReload, Channel: ch.name,
		Reason: "messages were lost between nodes: reload the channel's state"}
	for _, s := range ch.subs {
		s.c.mu.Lock()
		s.c.enqueueLocked(connFrame(s.c.kind, frame), false)
		s.c.mu.Unlock()
	}
	if seq, m := st.lowest(); m != nil {
		ch.advanceLocked(st, seq-1, now)
	} else {
		ch.advanceLocked(st, st.head, now)
	}
	st.gapAt, st.tries = time.Time{}, 0
	p.drainLocked(ch, st, now)
}

// ---- messages from peers ----

// onMessage takes a message of a followed channel from a peer (origin:
// its publisher, also when it came through a relay).
func (p *PubSub) onMessage(origin string, m wireMsg) {
	tn, _, ok := splitChannel(m.channel)
	if !ok || p.tenant(tn) == nil || !p.validData(m.data) {
		// A peer with another tenant list or limits: count, drop.
		p.met.meshBad.Inc()
		return
	}
	p.met.publishes.WithLabelValues("peer").Inc()
	p.chMu.RLock()
	ch := p.channels[m.channel]
	p.chMu.RUnlock()
	if ch == nil {
		p.met.peerReceived.WithLabelValues("unwanted").Inc()
		return
	}
	now := time.Now()
	ch.mu.Lock()
	defer ch.mu.Unlock()
	if ch.dead || ch.follow == notFollowing {
		p.met.peerReceived.WithLabelValues("unwanted").Inc()
		return
	}
	st := ch.streams[m.sid]
	if st == nil {
		if ch.follow == syncing {
			st = ch.addStreamLocked(m.sid, origin, now) // settled when the round completes
		} else {
			st = p.learnStreamLocked(ch, m.sid, origin, now)
		}
	}
	if m.seq <= st.last || st.ooo[m.seq] != nil {
		p.met.peerReceived.WithLabelValues("duplicate").Inc()
		return
	}
	if len(st.ooo) >= maxOutOfOrder {
		p.met.peerReceived.WithLabelValues("overflow").Inc()
		st.head = max(st.head, m.seq)
		return
	}
	if st.ooo == nil {
		st.ooo = map[uint64]*outMsg{}
	}
	st.ooo[m.seq] = &outMsg{sid: m.sid, seq: m.seq, otime: m.otime, data: m.data, at: now}
	st.head = max(st.head, m.seq)
	p.met.peerReceived.WithLabelValues("accepted").Inc()
	if ch.follow == following {
		p.drainLocked(ch, st, now)
	}
}

// onLegacy delivers a message from a node that predates cluster-wide
// positions: to the subscribers here, outside any stream (no history, the
// channel's position unchanged), as such nodes did.
func (p *PubSub) onLegacy(channel string, data []byte) {
	tn, _, ok := splitChannel(channel)
	if !ok || p.tenant(tn) == nil || !p.validData(data) {
		p.met.meshBad.Inc()
		return
	}
	p.met.publishes.WithLabelValues("peer").Inc()
	p.chMu.RLock()
	ch := p.channels[channel]
	p.chMu.RUnlock()
	if ch == nil {
		return
	}
	ch.mu.Lock()
	defer ch.mu.Unlock()
	if ch.dead {
		return
	}
	p.fanoutLocked(ch, newMessage(channel, ch.vec.position(time.Now()), data, time.Now()))
}

// onHeads takes a peer's heads (its answer to our digest): a stream ahead
// of what this node has is a gap to repair, one it had not heard of is
// learned.
func (p *PubSub) onHeads(from string, hs []chanHead) {
	now := time.Now()
	for _, h := range hs {
		p.chMu.RLock()
		ch := p.byHash[h.hash]
		p.chMu.RUnlock()
		if ch == nil {
			continue
		}
		ch.mu.Lock()
		if !ch.dead && ch.follow == following {
			st := ch.streams[h.sid]
			if st == nil {
				st = p.learnStreamLocked(ch, h.sid, from, now)
			}
			if h.seq > st.head {
				st.head = h.seq
				p.drainLocked(ch, st, now)
			}
		}
		ch.mu.Unlock()
	}
}

// ownHeads are this node's current streams of the channels with hashes hs.
func (p *PubSub) ownHeads(hs []uint64) []chanHead {
	var out []chanHead
	for _, h := range hs {
		p.chMu.RLock()
		ch := p.byHash[h]
		p.chMu.RUnlock()
		if ch == nil {
			continue
		}
		ch.mu.Lock()
		if !ch.dead && ch.own != nil && ch.own.last > 0 {
			out = append(out, chanHead{hash: h, sid: ch.own.sid, seq: ch.own.last})
		}
		ch.mu.Unlock()
	}
	return out
}

// followedHashes are the hashes of the channels this node follows.
func (p *PubSub) followedHashes() []uint64 {
	p.chMu.RLock()
	defer p.chMu.RUnlock()
	out := make([]uint64, 0, len(p.channels))
	for _, ch := range p.channels {
		ch.mu.Lock()
		if ch.follow != notFollowing {
			out = append(out, ch.hash)
		}
		ch.mu.Unlock()
	}
	return out
}
