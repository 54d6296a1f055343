package pubsub

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"sync"
	"time"
)

// Messages between nodes on the mesh topic "pubsub":
//
//	message:  0x01, uvarint len(channel), channel, data (compact JSON)
//	presence: 0x02, uvarint count, count × (uvarint len(channel), channel, uvarint subscribers)
//
// A message from a peer is delivered to this node's subscribers and never
// sent on: every node broadcasts only what was published on it.
const (
	peerMessage  = 0x01
	peerPresence = 0x02
)

var errPeerMsg = errors.New("malformed peer message")

// uvarint reads a minimally encoded uvarint (one spelling per value); k <= 0
// when there is none.
func uvarint(b []byte) (uint64, int) {
	n, k := binary.Uvarint(b)
	if k > 1 && b[k-1] == 0 {
		return 0, 0 // a trailing zero group: not minimal
	}
	return n, k
}

func encodePeerMessage(channel string, data []byte) []byte {
	b := make([]byte, 0, 1+binary.MaxVarintLen64+len(channel)+len(data))
	b = append(b, peerMessage)
	b = binary.AppendUvarint(b, uint64(len(channel)))
	b = append(b, channel...)
	return append(b, data...)
}

func decodePeerMessage(b []byte) (channel string, data []byte, err error) {
	if len(b) < 2 || b[0] != peerMessage {
		return "", nil, errPeerMsg
	}
	n, k := uvarint(b[1:])
	if k <= 0 || n > uint64(len(b)-1-k) {
		return "", nil, errPeerMsg
	}
	rest := b[1+k:]
	return string(rest[:n]), rest[n:], nil
}

// onPeer handles what a peer sent on the topic. It runs on the mesh's
// reading goroutine and does not block: fan-out only queues.
func (p *PubSub) onPeer(from string, msg []byte) {
	if len(msg) == 0 {
		p.met.meshBad.Inc()
		return
	}
	switch msg[0] {
	case peerMessage:
		channel, data, err := decodePeerMessage(msg)
		if err != nil {
			p.met.meshBad.Inc()
			return
		}
		tn, _, ok := splitChannel(channel)
		if !ok || p.tenants[tn] == nil || len(data) > p.opts.MaxMessageBytes || !json.Valid(data) {
			// A peer with another tenant list or limits: count, drop.
			p.met.meshBad.Inc()
			return
		}
		p.met.publishes.WithLabelValues("peer").Inc()
		p.deliver(channel, data)
	case peerPresence:
		if p.pres == nil || p.pres.apply(from, msg) != nil {
			p.met.meshBad.Inc()
		}
	default:
		p.met.meshBad.Inc()
	}
}

// ---- presence ----

// presence exchanges per-channel subscriber counts with peers, so that a
// presence query answers for the whole cluster. Each node sends the counts
// that changed every PresenceInterval, and all of them every tenth round;
// a peer's count that has not been refreshed for three full rounds is
// forgotten (the peer left, or a zero was lost on the way).
type presence struct {
	p    *PubSub
	sent map[string]int // owned by run

	mu    sync.Mutex
	peers map[string]map[string]peerCount // node -> channel -> count
}

type peerCount struct {
	n  int
	at time.Time
}

const (
	presenceFullEvery = 10
	maxPresenceBatch  = 60 << 10
)

func newPresence(p *PubSub) *presence {
	return &presence{p: p, sent: map[string]int{}, peers: map[string]map[string]peerCount{}}
}

func (pr *presence) run() {
	defer pr.p.bg.Done()
	t := time.NewTicker(pr.p.opts.PresenceInterval)
	defer t.Stop()
	round := 0
	for {
		select {
		case <-pr.p.stop:
			return
		case now := <-t.C:
			round++
			pr.broadcast(round%presenceFullEvery == 0)
			pr.expire(now)
		}
	}
}

// localCounts are the subscriber counts of this node's channels.
func (p *PubSub) localCounts() map[string]int {
	p.chMu.RLock()
	defer p.chMu.RUnlock()
	out := make(map[string]int)
	for name, ch := range p.channels {
		ch.mu.Lock()
		if n := len(ch.subs); n > 0 {
			out[name] = n
		}
		ch.mu.Unlock()
	}
	return out
}

func (pr *presence) broadcast(full bool) {
	now := pr.p.localCounts()
	type entry struct {
		ch string
		n  int
	}
	var changes []entry
	for ch, n := range now {
		if full || pr.sent[ch] != n {
			changes = append(changes, entry{ch, n})
		}
	}
	for ch := range pr.sent {
		if _, ok := now[ch]; !ok {
			changes = append(changes, entry{ch, 0})
		}
	}
	pr.sent = now
	for len(changes) > 0 {
		b := []byte{peerPresence}
		var body []byte
		count := 0
		for len(changes) > 0 && len(body) < maxPresenceBatch {
			e := changes[0]
			changes = changes[1:]
			body = binary.AppendUvarint(body, uint64(len(e.ch)))
			body = append(body, e.ch...)
			body = binary.AppendUvarint(body, uint64(e.n))
			count++
		}
		b = binary.AppendUvarint(b, uint64(count))
		pr.p.mesh.Broadcast(MeshTopic, append(b, body...))
	}
}

func (pr *presence) apply(from string, b []byte) error {
	entries, err := decodePresence(b)
	if err != nil {
		return err
	}
	now := time.Now()
	pr.mu.Lock()
	defer pr.mu.Unlock()
	m := pr.peers[from]
	if m == nil {
		m = map[string]peerCount{}
		pr.peers[from] = m
	}
	for _, e := range entries {
		if e.n == 0 {
			delete(m, e.ch)
		} else {
			m[e.ch] = peerCount{e.n, now}
		}
	}
	if len(m) == 0 {
		delete(pr.peers, from)
	}
	return nil
}

type presenceEntry struct {
	ch string
	n  int
}

func decodePresence(b []byte) ([]presenceEntry, error) {
	if len(b) < 2 || b[0] != peerPresence {
		return nil, errPeerMsg
	}
	b = b[1:]
	count, k := uvarint(b)
	if k <= 0 || count > uint64(len(b)) {
		return nil, errPeerMsg
	}
	b = b[k:]
	out := make([]presenceEntry, 0, count)
	for range count {
		l, k := uvarint(b)
		if k <= 0 || l > uint64(len(b)-k) {
			return nil, errPeerMsg
		}
		ch := string(b[k : k+int(l)])
		b = b[k+int(l):]
		n, k2 := uvarint(b)
		if k2 <= 0 || n > 1<<31 {
			return nil, errPeerMsg
		}
		b = b[k2:]
		if _, _, ok := splitChannel(ch); !ok {
			return nil, errPeerMsg
		}
		out = append(out, presenceEntry{ch, int(n)})
	}
	if len(b) != 0 {
		return nil, errPeerMsg
	}
	return out, nil
}

func (pr *presence) expire(now time.Time) {
	ttl := 3 * presenceFullEvery * pr.p.opts.PresenceInterval
	pr.mu.Lock()
	defer pr.mu.Unlock()
	for node, m := range pr.peers {
		for ch, pc := range m {
			if now.Sub(pc.at) > ttl {
				delete(m, ch)
			}
		}
		if len(m) == 0 {
			delete(pr.peers, node)
		}
	}
}

// peerTotal is the subscribers of channel on other nodes.
func (pr *presence) peerTotal(channel string) (total, nodes int) {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	for _, m := range pr.peers {
		if pc, ok := m[channel]; ok {
			total += pc.n
			nodes++
		}
	}
	return total, nodes
}

// Presence is the number of subscriptions to channel: on this node, and in
// the cluster as last reported by peers (every PresenceInterval).
func (p *PubSub) Presence(channel string) (local, cluster int) {
	p.chMu.RLock()
	ch := p.channels[channel]
	p.chMu.RUnlock()
	if ch != nil {
		ch.mu.Lock()
		local = len(ch.subs)
		ch.mu.Unlock()
	}
	cluster = local
	if p.pres != nil {
		n, _ := p.pres.peerTotal(channel)
		cluster += n
	}
	return local, cluster
}
