package pubsub

import (
	"encoding/binary"
	"sync"
	"time"
)

// onPeer handles what a peer sent on one of pubsub's topics. It runs on
// the mesh's reading goroutine and does not block: fan-out only queues,
// answers go to the mesh's queues.
func (p *PubSub) onPeer(from, topic string, msg []byte) {
	p.handle(from, topic, msg, false)
}

func (p *PubSub) handle(from, topic string, msg []byte, relayed bool) {
	if len(msg) == 0 {
		p.met.meshBad.Inc()
		return
	}
	var err error
	switch msg[0] {
	case kindMessage:
		var m wireMsg
		if m, err = decodeMessage(msg); err == nil {
			p.onMessage(from, m)
		}
	case kindLegacy:
		var ch string
		var data []byte
		if ch, data, err = decodeLegacy(msg); err == nil && !p.cl.speaks(from) {
			p.onLegacy(ch, data)
		}
	case kindPresence:
		if p.pres == nil || p.pres.apply(from, msg) != nil {
			err = errPeerMsg
		}
	case kindRelay:
		if relayed || !p.cl.onRelay(from, topic, msg) {
			err = errPeerMsg
		}
	case kindRelayed:
		var origin string
		var inner []byte
		if origin, inner, err = unwrap(msg); err == nil && !relayed {
			p.handle(origin, topic, inner, true)
			return
		}
		err = errPeerMsg
	case kindHeartbeat:
		var h heartbeat
		if h, err = decodeHeartbeat(msg); err == nil && !relayed {
			p.cl.onHeartbeat(from, h)
		}
	case kindInterest:
		var ops []interestOp
		if ops, err = decodeInterest(msg); err == nil {
			p.cl.onInterest(from, ops)
		}
	case kindDigest:
		var d digest
		if d, err = decodeDigest(msg); err == nil {
			p.cl.onDigest(from, d)
			p.sendHeads(from, p.ownHeads(d.hashes))
		}
	case kindSyncReq:
		var q syncReq
		if q, err = decodeSyncReq(msg); err == nil {
			p.onSyncReq(from, q)
		}
	case kindSyncReply:
		var rep syncReply
		if rep, err = decodeSyncReply(msg); err == nil {
			p.onSyncReply(from, rep)
		}
	case kindHeads:
		var hs []chanHead
		if hs, err = decodeHeads(msg); err == nil {
			p.onHeads(from, hs)
		}
	default:
		err = errPeerMsg
	}
	if err != nil {
		p.met.meshBad.Inc()
	}
}

// sendHeads answers a digest with this node's heads of the channels in it.
func (p *PubSub) sendHeads(to string, hs []chanHead) {
	for len(hs) > 0 {
		n := min(len(hs), 4096)
		p.cl.send(to, MeshControlTopic, encodeHeads(hs[:n]))
		hs = hs[n:]
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
		b := []byte{kindPresence}
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
		pr.p.mesh.Broadcast(MeshControlTopic, append(b, body...))
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
	if len(b) < 2 || b[0] != kindPresence {
		return nil, errPeerMsg
	}
	b = b[1:]
	count, k := uvarintMin(b)
	if k <= 0 || count > uint64(len(b)) {
		return nil, errPeerMsg
	}
	b = b[k:]
	out := make([]presenceEntry, 0, count)
	for range count {
		l, k := uvarintMin(b)
		if k <= 0 || l > uint64(len(b)-k) {
			return nil, errPeerMsg
		}
		ch := string(b[k : k+int(l)])
		b = b[k+int(l):]
		n, k2 := uvarintMin(b)
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

// uvarintMin reads a minimally encoded uvarint (one spelling per value); k
// <= 0 when there is none.
func uvarintMin(b []byte) (uint64, int) {
	n, k := binary.Uvarint(b)
	if k > 1 && b[k-1] == 0 {
		return 0, 0 // a trailing zero group: not minimal
	}
	return n, k
}
