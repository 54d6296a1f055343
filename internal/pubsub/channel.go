package pubsub

import (
	"container/list"
	"crypto/rand"
	"encoding/base32"
	"strings"
	"sync"
	"time"
)

// tenant is a configured Tenant, ready for checks.
type tenant struct {
	name      string
	secret    []byte
	publicKey []byte
	origins   []originPattern
	public    []string

	// Guarded by PubSub.chMu.
	nChannels int        // channels kept for this tenant
	idle      *list.List // its channels without subscribers, most recently idle first
}

func (t *tenant) isPublic(thread string) bool {
	for _, p := range t.public {
		if matchPattern(p, thread) {
			return true
		}
	}
	return false
}

// channel is one channel this node keeps: its subscribers and its recent
// history. Lock order: PubSub.chMu, then channel.mu, then conn.mu.
//
// A channel without subscribers is kept for its history (a client that
// reconnects recovers what it missed) and listed as idle, so that it can
// be forgotten, the one idle longest first, when the channel caps need
// room. The idle lists are a hint kept under chMu: a channel may get a
// subscriber while listed, and the eviction, which looks under mu, then
// just takes it off the lists.
//
// Fan-out happens under mu, so that positions are handed out and queued in
// the same order on every connection, and a subscriber joining with a
// position sees history and live messages without gap or repeat. Nothing
// under mu blocks: enqueueing is an append to a bounded queue.
type channel struct {
	name   string
	tenant *tenant

	// Guarded by PubSub.chMu: the channel's places in PubSub.idle and
	// tenant.idle; nil when not listed.
	idleAll, idleTenant *list.Element

	mu      sync.Mutex
	dead    bool // removed from the map; look it up again
	epoch   string
	last    uint64 // offset of the newest message; 0: none yet
	hist    ring
	subs    []*subscription
	touched time.Time // last publish, or when the last subscriber left
}

// subscription links a connection and a channel.
type subscription struct {
	ch  *channel
	c   *conn
	idx int // in ch.subs, under ch.mu
}

var epochEnc = base32.StdEncoding.WithPadding(base32.NoPadding)

// newEpoch is 40 random bits in lower-case base32 (8 characters).
func newEpoch() string {
	var b [5]byte
	_, _ = rand.Read(b[:])
	return strings.ToLower(epochEnc.EncodeToString(b[:]))
}

// addLocked appends s to the subscribers.
func (ch *channel) addLocked(s *subscription) {
	s.idx = len(ch.subs)
	ch.subs = append(ch.subs, s)
}

// removeLocked takes s out of the subscribers (swap with the last one). It
// reports whether that left the channel without subscribers.
func (ch *channel) removeLocked(s *subscription, now time.Time) (idle bool) {
	i := s.idx
	if i < 0 || i >= len(ch.subs) || ch.subs[i] != s {
		return false
	}
	last := len(ch.subs) - 1
	ch.subs[i] = ch.subs[last]
	ch.subs[i].idx = i
	ch.subs[last] = nil
	ch.subs = ch.subs[:last]
	s.idx = -1
	if len(ch.subs) == 0 {
		ch.touched = now
	}
	// Give back the memory of a crowd that left.
	if cap(ch.subs) > 64 && len(ch.subs) < cap(ch.subs)/4 {
		ch.subs = append([]*subscription(nil), ch.subs...)
	}
	return len(ch.subs) == 0
}

// trimLocked drops history older than ttl.
func (ch *channel) trimLocked(now time.Time, ttl time.Duration) {
	for ch.hist.n > 0 && now.Sub(ch.hist.at(0).at) > ttl {
		ch.hist.popOldest()
	}
	if ch.hist.n == 0 {
		ch.hist.buf, ch.hist.start = nil, 0
	}
}

// replayLocked decides what a subscriber resuming after since gets: the
// messages after it, or mustReload when the history does not cover the gap
// (another epoch, an offset from the future, or messages already dropped).
func (ch *channel) replayLocked(since Position) (msgs []*outMsg, mustReload bool) {
	if since.Epoch != ch.epoch || since.Offset > ch.last {
		return nil, true
	}
	missed := ch.last - since.Offset
	if missed > uint64(ch.hist.n) {
		return nil, true
	}
	msgs = make([]*outMsg, 0, missed)
	for i := ch.hist.n - int(missed); i < ch.hist.n; i++ {
		msgs = append(msgs, ch.hist.at(i))
	}
	return msgs, false
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
