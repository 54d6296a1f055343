package pubsub

import (
	"cmp"
	"container/list"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// tenant is a configured Tenant, ready for checks.
type tenant struct {
	name  string
	rules atomic.Pointer[tenantRules] // replaced whole by Reconfigure

	// Guarded by PubSub.chMu.
	nChannels int        // channels kept for this tenant
	idle      *list.List // its channels without subscribers, most recently idle first
}

// tenantRules are what a tenant's config says of who may do what: the keys
// its tokens are checked with, the origins and the public threads. They
// are immutable; a reload swaps in new ones, so a subscribe is checked
// against the old rules or the new, never half of each.
type tenantRules struct {
	secret    []byte
	publicKey []byte
	origins   []originPattern
	public    []string
}

func (t *tenant) r() *tenantRules { return t.rules.Load() }

func (t *tenant) isPublic(thread string) bool {
	for _, p := range t.r().public {
		if matchPattern(p, thread) {
			return true
		}
	}
	return false
}

// channel is one channel this node keeps: its subscribers, the streams it
// has seen and its recent history. Lock order: PubSub.chMu, then
// channel.mu, then conn.mu and cluster.mu.
//
// A channel without subscribers is kept for its history (a client that
// reconnects recovers what it missed) and listed as idle, so that it can
// be forgotten, the one idle longest first, when the channel caps need
// room. The idle lists are a hint kept under chMu: a channel may get a
// subscriber while listed, and the eviction, which looks under mu, then
// just takes it off the lists.
//
// Fan-out happens under mu, so that messages are queued in the same order
// on every connection, and a subscriber joining with a position sees
// history and live messages without gap or repeat. Nothing under mu
// blocks: enqueueing is an append to a bounded queue, sending to a peer an
// append to the mesh's queue.
type channel struct {
	name   string
	hash   uint64 // channelHash(name)
	tenant *tenant

	// Guarded by PubSub.chMu: the channel's places in PubSub.idle and
	// tenant.idle; nil when not listed.
	idleAll, idleTenant *list.Element

	mu      sync.Mutex
	dead    bool // removed from the map; look it up again
	streams map[uint64]*stream
	vec     vector  // the channel's position here: each stream's last
	own     *stream // this node's current stream; nil until it publishes
	hist    ring
	subs    []*subscription
	pending []*subscription // waiting for a sync round to be answered
	touched time.Time       // last message, or when the last subscriber left

	// Following: with peers, a channel this node has subscribers for is
	// followed: every peer was asked to send its messages here (a sync
	// round with syncRegister), and what they answered is in streams.
	follow     followState
	followFrom int64           // Unix ms when following began
	confirmed  map[string]bool // peers whose answer registered our interest
	round      *syncRound      // the follow or fetch round in flight
	repair     *syncRound      // the repair round in flight
}

type followState uint8

const (
	notFollowing followState = iota
	syncing                  // the follow round is out; subscribers wait
	following
)

// stream is what this node knows of one stream of a channel.
type stream struct {
	sid    uint64
	origin string    // node id of its publisher; "" for this node
	last   uint64    // every message up to it was delivered here (or lost: see gaps)
	head   uint64    // highest sequence number known to exist (>= last)
	at     time.Time // last message delivered here, or when learned
	otime  int64     // origin time (Unix ms) of its last message here; never goes back
	ooo    map[uint64]*outMsg
	gapAt  time.Time // when the gap after last was noticed; zero: none
	tries  int       // repair rounds for the current gap
	fresh  bool      // from a peer that had not confirmed our interest: skip what predates followFrom
}

// maxOutOfOrder bounds the messages of one stream waiting for a gap.
const maxOutOfOrder = 1024

// subscription links a connection and a channel.
type subscription struct {
	ch  *channel
	c   *conn
	idx int // in ch.subs (or ch.pending while pending), under ch.mu; -1: removed

	// While pending: what the subscribe frame asked for.
	pending  bool
	id       string // the frame's id, echoed in the reply
	hasSince bool
	since    vector
	sinceT   int64  // since's time, Unix seconds
	legacy   bool   // since was a position from before vectors: must reload
	askedIn  uint64 // the round whose request covered since
}

// addStreamLocked starts tracking stream sid. A channel over maxVectorLen
// streams forgets the quietest other one.
func (ch *channel) addStreamLocked(sid uint64, origin string, now time.Time) *stream {
	if ch.streams == nil {
		ch.streams = make(map[uint64]*stream)
	}
	st := &stream{sid: sid, origin: origin, at: now}
	ch.streams[sid] = st
	if len(ch.streams) > maxVectorLen {
		var quiet *stream
		for _, o := range ch.streams {
			if o != st && o != ch.own && (quiet == nil || o.at.Before(quiet.at)) {
				quiet = o
			}
		}
		if quiet != nil {
			ch.removeStreamLocked(quiet)
		}
	}
	return st
}

func (ch *channel) removeStreamLocked(st *stream) {
	delete(ch.streams, st.sid)
	if ch.own == st {
		ch.own = nil
	}
	if i, ok := slices.BinarySearchFunc(ch.vec, st.sid, func(e streamPos, sid uint64) int { return cmpU64(e.sid, sid) }); ok {
		ch.vec = slices.Delete(ch.vec, i, i+1)
	}
}

// advanceLocked records that st has everything up to seq.
func (ch *channel) advanceLocked(st *stream, seq uint64, now time.Time) {
	if seq == 0 {
		return
	}
	st.last = seq
	st.head = max(st.head, seq)
	st.at = now
	i, ok := slices.BinarySearchFunc(ch.vec, st.sid, func(e streamPos, sid uint64) int { return cmpU64(e.sid, sid) })
	if ok {
		ch.vec[i].seq = seq
	} else {
		ch.vec = slices.Insert(ch.vec, i, streamPos{st.sid, seq})
	}
}

// ownStreamLocked is the stream this node publishes into: a new one when
// it has none, or when its stream has been quiet for ttl (then every peer
// may have forgotten it; a new stream starts at 1 and needs no history).
func (ch *channel) ownStreamLocked(now time.Time, ttl time.Duration) *stream {
	if ch.own != nil && now.Sub(ch.own.at) <= ttl {
		return ch.own
	}
	for {
		sid := newSID()
		if ch.streams[sid] == nil {
			ch.own = ch.addStreamLocked(sid, "", now)
			return ch.own
		}
	}
}

// pruneLocked forgets streams quiet for longer than ttl (and grace): their
// messages have left every history, and their publisher starts a new
// stream rather than continue one that quiet.
func (ch *channel) pruneLocked(now time.Time, ttl time.Duration) {
	for _, st := range ch.streams {
		if now.Sub(st.at) > ttl+pruneGrace && len(st.ooo) == 0 && st.head == st.last {
			ch.removeStreamLocked(st)
		}
	}
}

// pruneGrace: streams are kept a little longer than their messages, so
// that a message delayed on its way still finds its stream.
const pruneGrace = time.Minute

// headsLocked is what this node knows of each stream, for a sync reply.
func (ch *channel) headsLocked() []head {
	hs := make([]head, 0, len(ch.streams))
	for _, st := range ch.streams {
		if st.last > 0 {
			hs = append(hs, head{sid: st.sid, last: st.last, otime: st.otime, origin: st.origin})
		}
	}
	return hs
}

// historyAfterLocked is the history after since, for a sync reply: the
// messages of streams in since with a higher sequence number, and with
// all, every message of the streams not in it.
func (ch *channel) historyAfterLocked(since vector, all bool) []*outMsg {
	var out []*outMsg
	for i := 0; i < ch.hist.n; i++ {
		m := ch.hist.at(i)
		if all || since.has(m.sid) {
			if m.seq > since.get(m.sid) {
				out = append(out, m)
			}
		}
	}
	return out
}

// replayLocked decides what a subscriber resuming after position (since,
// sinceT) gets: the messages after it, from the history and extra
// (messages a sync round fetched from peers), in an order that keeps each
// stream's; or ok false when they do not cover the gap. ahead reports that
// since has messages this node does not have yet.
//
// A stream this node knows and since does not name is old news when its
// last message is older than the position by more than the history lasts
// (ttl, and pruneGrace): positions leave such streams out. Otherwise the
// subscriber never heard of it (it began after the position was made) and
// gets all of it, which must still be here. A stream since names and this
// node does not know is ignored: nothing of it is here.
func (ch *channel) replayLocked(since vector, sinceT int64, ttl time.Duration, extra map[msgKey]*outMsg) (msgs []*outMsg, ok, ahead bool) {
	oldBefore := time.Unix(sinceT, 0).Add(-ttl - pruneGrace).UnixMilli()
	type run struct {
		st   *stream
		need uint64 // first sequence number wanted
		got  map[uint64]*outMsg
	}
	runs := make(map[uint64]*run, len(ch.streams))
	for _, st := range ch.streams {
		have := since.get(st.sid)
		if have > st.last {
			ahead = true
			continue
		}
		if have == 0 && st.otime < oldBefore {
			continue // old news
		}
		if have < st.last {
			runs[st.sid] = &run{st: st, need: have + 1, got: map[uint64]*outMsg{}}
		}
	}
	if ahead {
		return nil, false, true
	}
	add := func(m *outMsg) {
		if r := runs[m.sid]; r != nil && m.seq >= r.need && m.seq <= r.st.last {
			if _, dup := r.got[m.seq]; !dup {
				r.got[m.seq] = m
			}
		}
	}
	for i := 0; i < ch.hist.n; i++ {
		add(ch.hist.at(i))
	}
	for _, m := range extra {
		add(m)
	}
	var lists [][]*outMsg
	for _, r := range runs {
		if uint64(len(r.got)) != r.st.last-r.need+1 {
			return nil, false, false
		}
		l := make([]*outMsg, 0, len(r.got))
		for seq := r.need; seq <= r.st.last; seq++ {
			l = append(l, r.got[seq])
		}
		lists = append(lists, l)
	}
	return mergeByTime(lists), true, false
}

// mergeByTime merges per-stream lists (each in sequence order) into one,
// the earliest publish first, keeping each stream's order.
func mergeByTime(lists [][]*outMsg) []*outMsg {
	n := 0
	for _, l := range lists {
		n += len(l)
	}
	out := make([]*outMsg, 0, n)
	for len(out) < n {
		best := -1
		for i, l := range lists {
			if len(l) == 0 {
				continue
			}
			if best < 0 || cmp.Or(cmp.Compare(l[0].otime, lists[best][0].otime), cmpU64(l[0].sid, lists[best][0].sid)) < 0 {
				best = i
			}
		}
		out = append(out, lists[best][0])
		lists[best] = lists[best][1:]
	}
	return out
}

// msgKey is a message's id within its channel.
type msgKey struct{ sid, seq uint64 }

// addLocked appends s to the subscribers.
func (ch *channel) addLocked(s *subscription) {
	s.idx = len(ch.subs)
	ch.subs = append(ch.subs, s)
}

// removeLocked takes s out of the subscribers or the pending ones (swap
// with the last one). It reports whether that left the channel without
// any.
func (ch *channel) removeLocked(s *subscription, now time.Time) (idle bool) {
	list := &ch.subs
	if s.pending {
		list = &ch.pending
	}
	i := s.idx
	l := *list
	if i < 0 || i >= len(l) || l[i] != s {
		return false
	}
	last := len(l) - 1
	l[i] = l[last]
	l[i].idx = i
	l[last] = nil
	*list = l[:last]
	s.idx = -1
	if ch.interestLocked() == 0 {
		ch.touched = now
	}
	// Give back the memory of a crowd that left.
	if cap(ch.subs) > 64 && len(ch.subs) < cap(ch.subs)/4 {
		ch.subs = append([]*subscription(nil), ch.subs...)
	}
	return ch.interestLocked() == 0
}

// interestLocked is the subscribers, admitted or waiting.
func (ch *channel) interestLocked() int { return len(ch.subs) + len(ch.pending) }

// trimLocked drops history older than ttl.
func (ch *channel) trimLocked(now time.Time, ttl time.Duration) {
	for ch.hist.n > 0 && now.Sub(ch.hist.at(0).at) > ttl {
		ch.hist.popOldest()
	}
	if ch.hist.n == 0 {
		ch.hist.buf, ch.hist.start = nil, 0
	}
}

// ring is the history: a circular buffer that grows up to max entries.
type ring struct {
	buf      []*outMsg
	start, n int
}

func (r *ring) at(i int) *outMsg { return r.buf[(r.start+i)%len(r.buf)] }

func (r *ring) push(m *outMsg, limit int) {
	if limit <= 0 {
		return
	}
	if r.n == len(r.buf) && len(r.buf) < limit {
		size := min(limit, max(8, 2*len(r.buf)))
		nb := make([]*outMsg, size)
		for i := 0; i < r.n; i++ {
			nb[i] = r.at(i)
		}
		r.buf, r.start = nb, 0
	}
	if r.n < len(r.buf) {
		r.buf[(r.start+r.n)%len(r.buf)] = m
		r.n++
		return
	}
	r.buf[r.start] = m // full: overwrite the oldest
	r.start = (r.start + 1) % len(r.buf)
}

func (r *ring) popOldest() {
	r.buf[r.start] = nil
	r.start = (r.start + 1) % len(r.buf)
	r.n--
}
