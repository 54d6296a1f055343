package pubsub

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
)

// Messages between nodes. Two mesh topics: MeshTopic carries messages
// (and relayed messages, and history sent in answer to a sync), so that
// their bytes are counted apart; MeshControlTopic carries everything else.
// Every message starts with its kind:
//
//	0x01 legacy message:  uvarint len(channel), channel, data      (from nodes before cluster-wide positions; received only)
//	0x02 presence:        uvarint count, count × (uvarint len(channel), channel, uvarint subscribers)
//	0x03 message:         uvarint len(channel), channel, stream (5 bytes), uvarint seq, uvarint time (Unix ms), data
//	0x04 relay request:   uvarint len(to), to, inner (a message of any other kind but 0x04, 0x05, 0x06)
//	0x05 relayed:         uvarint len(origin), origin, inner
//	0x06 heartbeat:       instance (8 bytes), uvarint n, n × (uvarint len(node), node, flags (1: I hear it, 2: I reach it directly))
//	0x07 interest:        uvarint n, n × (channel hash (8 bytes), op (1 follow, 0 no longer))
//	0x08 digest:          uvarint round, uvarint part, uvarint parts, uvarint n, n × channel hash (the channels the sender follows)
//	0x09 sync request:    uvarint id, flags, uvarint len(channel), channel, uvarint n, n × (stream, uvarint seq)
//	0x0a sync reply:      uvarint id, flags (bit 0: final), uvarint len(channel), channel,
//	                      uvarint heads, heads × (stream, uvarint last, uvarint time, uvarint len(origin), origin),
//	                      uvarint n, n × (stream, uvarint seq, uvarint time, uvarint len(data), data)
//	0x0b heads:           uvarint n, n × (channel hash, stream, uvarint seq)
//
// A channel hash is the first 8 bytes of SHA-256 of the channel name: the
// interest tables hold hashes, so digests stay small; a collision only costs
// a message sent to a node that drops it.
const (
	kindLegacy    = 0x01
	kindPresence  = 0x02
	kindMessage   = 0x03
	kindRelay     = 0x04
	kindRelayed   = 0x05
	kindHeartbeat = 0x06
	kindInterest  = 0x07
	kindDigest    = 0x08
	kindSyncReq   = 0x09
	kindSyncReply = 0x0a
	kindHeads     = 0x0b
)

// Sync request flags.
const (
	syncRegister = 1 << iota // follow the channel: send me its messages from now on
	syncMessages             // send the messages after the vector
	syncAll                  // ...and those of streams not in it
)

var errPeerMsg = errors.New("malformed peer message")

func channelHash(name string) uint64 {
	h := sha256.Sum256([]byte(name))
	return binary.BigEndian.Uint64(h[:8])
}

// reader decodes; the first error sticks and every later read returns
// zero values.
type reader struct {
	b   []byte
	bad bool
}

func (r *reader) fail() { r.bad, r.b = true, nil }

// uvarint reads a minimally encoded uvarint (one spelling per value).
func (r *reader) uvarint() uint64 {
	n, k := binary.Uvarint(r.b)
	if k <= 0 || k > 1 && r.b[k-1] == 0 {
		r.fail()
		return 0
	}
	r.b = r.b[k:]
	return n
}

func (r *reader) bytes(n uint64) []byte {
	if n > uint64(len(r.b)) {
		r.fail()
		return nil
	}
	b := r.b[:n]
	r.b = r.b[n:]
	return b
}

// str reads a length-prefixed string of at most max bytes.
func (r *reader) str(max int) string {
	n := r.uvarint()
	if n > uint64(max) {
		r.fail()
		return ""
	}
	return string(r.bytes(n))
}

func (r *reader) byte1() byte {
	b := r.bytes(1)
	if b == nil {
		return 0
	}
	return b[0]
}

func (r *reader) u64() uint64 {
	b := r.bytes(8)
	if b == nil {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}

func (r *reader) sid() uint64 {
	b := r.bytes(5)
	if b == nil {
		return 0
	}
	id := uint64(b[0])<<32 | uint64(b[1])<<24 | uint64(b[2])<<16 | uint64(b[3])<<8 | uint64(b[4])
	if id == 0 {
		r.fail()
	}
	return id
}

// count reads a count of items of at least minSize bytes each, so that a
// forged count cannot make the decoder allocate more than the message.
func (r *reader) count(minSize int) int {
	n := r.uvarint()
	if n > uint64(len(r.b)/minSize) {
		r.fail()
		return 0
	}
	return int(n)
}

func (r *reader) rest() []byte {
	b := r.b
	r.b = nil
	return b
}

func (r *reader) done() bool { return !r.bad && len(r.b) == 0 }

func appendStr(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendSIDBytes(b []byte, sid uint64) []byte {
	return append(b, byte(sid>>32), byte(sid>>24), byte(sid>>16), byte(sid>>8), byte(sid))
}

// maxNodeIDLen bounds node ids on the wire.
const maxNodeIDLen = 255

// wireMsg is one published message as it travels between nodes.
type wireMsg struct {
	channel string
	sid     uint64
	seq     uint64
	otime   int64 // Unix milliseconds at the origin
	data    []byte
}

func encodeMessage(m wireMsg) []byte {
	b := make([]byte, 0, 1+2+len(m.channel)+5+10+6+len(m.data))
	b = append(b, kindMessage)
	b = appendStr(b, m.channel)
	b = appendSIDBytes(b, m.sid)
	b = binary.AppendUvarint(b, m.seq)
	b = binary.AppendUvarint(b, uint64(m.otime))
	return append(b, m.data...)
}

func decodeMessage(b []byte) (wireMsg, error) {
	r := reader{b: b[1:]}
	var m wireMsg
	m.channel = r.str(maxTenantLen + 1 + maxThreadLen)
	m.sid = r.sid()
	m.seq = r.uvarint()
	m.otime = int64(r.uvarint())
	m.data = r.rest()
	if r.bad || m.seq == 0 || m.otime < 0 || len(m.data) == 0 {
		return wireMsg{}, errPeerMsg
	}
	return m, nil
}

func encodeLegacy(channel string, data []byte) []byte {
	b := make([]byte, 0, 1+binary.MaxVarintLen64+len(channel)+len(data))
	b = append(b, kindLegacy)
	b = appendStr(b, channel)
	return append(b, data...)
}

func decodeLegacy(b []byte) (channel string, data []byte, err error) {
	r := reader{b: b[1:]}
	channel = r.str(maxTenantLen + 1 + maxThreadLen)
	data = r.rest()
	if r.bad || len(data) == 0 {
		return "", nil, errPeerMsg
	}
	return channel, data, nil
}

// wrap builds a relay request (kindRelay, to) or a relayed message
// (kindRelayed, origin) around inner.
func wrap(kind byte, node string, inner []byte) []byte {
	b := make([]byte, 0, 2+len(node)+len(inner))
	b = append(b, kind)
	b = appendStr(b, node)
	return append(b, inner...)
}

func unwrap(b []byte) (node string, inner []byte, err error) {
	r := reader{b: b[1:]}
	node = r.str(maxNodeIDLen)
	inner = r.rest()
	if r.bad || node == "" || len(inner) == 0 {
		return "", nil, errPeerMsg
	}
	switch inner[0] {
	case kindRelay, kindRelayed, kindHeartbeat:
		return "", nil, errPeerMsg // one hop only; heartbeats say something of the direct path
	}
	return node, inner, nil
}

// heartbeat is what a node broadcasts every HeartbeatInterval: who it is
// (instance), and what it knows of each peer's direct path.
type heartbeat struct {
	instance uint64 // random per process: a new one means the peer restarted
	peers    []hbPeer
}

type hbPeer struct {
	id    string
	flags byte
}

// Heartbeat peer flags.
const (
	hbHears  = 1 << iota // the sender got a heartbeat from this peer lately
	hbDirect             // the sender's direct path to this peer works: it may relay to it
)

func encodeHeartbeat(h heartbeat) []byte {
	b := make([]byte, 0, 16+len(h.peers)*12)
	b = append(b, kindHeartbeat)
	b = binary.BigEndian.AppendUint64(b, h.instance)
	b = binary.AppendUvarint(b, uint64(len(h.peers)))
	for _, p := range h.peers {
		b = appendStr(b, p.id)
		b = append(b, p.flags)
	}
	return b
}

func decodeHeartbeat(b []byte) (heartbeat, error) {
	r := reader{b: b[1:]}
	var h heartbeat
	h.instance = r.u64()
	n := r.count(3)
	for range n {
		p := hbPeer{id: r.str(maxNodeIDLen), flags: r.byte1()}
		if p.id == "" || p.flags > hbHears|hbDirect {
			r.fail()
		}
		h.peers = append(h.peers, p)
	}
	if !r.done() || h.instance == 0 {
		return heartbeat{}, errPeerMsg
	}
	return h, nil
}

type interestOp struct {
	hash   uint64
	follow bool
}

func encodeInterest(ops []interestOp) []byte {
	b := make([]byte, 0, 2+9*len(ops))
	b = append(b, kindInterest)
	b = binary.AppendUvarint(b, uint64(len(ops)))
	for _, op := range ops {
		b = binary.BigEndian.AppendUint64(b, op.hash)
		if op.follow {
			b = append(b, 1)
		} else {
			b = append(b, 0)
		}
	}
	return b
}

func decodeInterest(b []byte) ([]interestOp, error) {
	r := reader{b: b[1:]}
	n := r.count(9)
	ops := make([]interestOp, 0, n)
	for range n {
		h := r.u64()
		f := r.byte1()
		if f > 1 {
			r.fail()
		}
		ops = append(ops, interestOp{h, f == 1})
	}
	if !r.done() {
		return nil, errPeerMsg
	}
	return ops, nil
}

type digest struct {
	round, part, parts uint64
	hashes             []uint64
}

// digestPartLen bounds the hashes of one digest part (64 KiB).
const digestPartLen = 8192

func encodeDigest(d digest) []byte {
	b := make([]byte, 0, 16+8*len(d.hashes))
	b = append(b, kindDigest)
	b = binary.AppendUvarint(b, d.round)
	b = binary.AppendUvarint(b, d.part)
	b = binary.AppendUvarint(b, d.parts)
	b = binary.AppendUvarint(b, uint64(len(d.hashes)))
	for _, h := range d.hashes {
		b = binary.BigEndian.AppendUint64(b, h)
	}
	return b
}

func decodeDigest(b []byte) (digest, error) {
	r := reader{b: b[1:]}
	var d digest
	d.round = r.uvarint()
	d.part = r.uvarint()
	d.parts = r.uvarint()
	n := r.count(8)
	d.hashes = make([]uint64, 0, n)
	for range n {
		d.hashes = append(d.hashes, r.u64())
	}
	if !r.done() || d.parts == 0 || d.part >= d.parts || d.parts > 1<<12 {
		return digest{}, errPeerMsg
	}
	return d, nil
}

type syncReq struct {
	id      uint64
	flags   byte
	channel string
	since   vector
}

func encodeSyncReq(q syncReq) []byte {
	b := make([]byte, 0, 16+len(q.channel)+len(q.since)*10)
	b = append(b, kindSyncReq)
	b = binary.AppendUvarint(b, q.id)
	b = append(b, q.flags)
	b = appendStr(b, q.channel)
	b = binary.AppendUvarint(b, uint64(len(q.since)))
	for _, e := range q.since {
		b = appendSIDBytes(b, e.sid)
		b = binary.AppendUvarint(b, e.seq)
	}
	return b
}

func decodeSyncReq(b []byte) (syncReq, error) {
	r := reader{b: b[1:]}
	var q syncReq
	q.id = r.uvarint()
	q.flags = r.byte1()
	q.channel = r.str(maxTenantLen + 1 + maxThreadLen)
	n := r.count(6)
	if n > maxVectorLen {
		r.fail()
	}
	for range n {
		q.since = append(q.since, streamPos{r.sid(), r.uvarint()})
	}
	if !r.done() {
		return syncReq{}, errPeerMsg
	}
	if !sortedVector(q.since) {
		return syncReq{}, errPeerMsg
	}
	return q, nil
}

func sortedVector(v vector) bool {
	for i := 1; i < len(v); i++ {
		if v[i].sid <= v[i-1].sid {
			return false
		}
	}
	return true
}

// head is what a node knows of one stream of a channel.
type head struct {
	sid    uint64
	last   uint64
	otime  int64  // origin time of message last (Unix ms)
	origin string // "" in a reply: the node that sent it
}

type syncReply struct {
	id      uint64
	final   bool
	channel string
	heads   []head
	msgs    []wireMsg
}

// maxReplyPart bounds the message bytes of one part of a sync reply.
const maxReplyPart = 256 << 10

func encodeSyncReply(s syncReply) []byte {
	size := 16 + len(s.channel) + len(s.heads)*24
	for _, m := range s.msgs {
		size += 24 + len(m.data)
	}
	b := make([]byte, 0, size)
	b = append(b, kindSyncReply)
	b = binary.AppendUvarint(b, s.id)
	if s.final {
		b = append(b, 1)
	} else {
		b = append(b, 0)
	}
	b = appendStr(b, s.channel)
	b = binary.AppendUvarint(b, uint64(len(s.heads)))
	for _, h := range s.heads {
		b = appendSIDBytes(b, h.sid)
		b = binary.AppendUvarint(b, h.last)
		b = binary.AppendUvarint(b, uint64(h.otime))
		b = appendStr(b, h.origin)
	}
	b = binary.AppendUvarint(b, uint64(len(s.msgs)))
	for _, m := range s.msgs {
		b = appendSIDBytes(b, m.sid)
		b = binary.AppendUvarint(b, m.seq)
		b = binary.AppendUvarint(b, uint64(m.otime))
		b = binary.AppendUvarint(b, uint64(len(m.data)))
		b = append(b, m.data...)
	}
	return b
}

func decodeSyncReply(b []byte) (syncReply, error) {
	r := reader{b: b[1:]}
	var s syncReply
	s.id = r.uvarint()
	f := r.byte1()
	s.final = f&1 != 0
	s.channel = r.str(maxTenantLen + 1 + maxThreadLen)
	n := r.count(8)
	for range n {
		h := head{sid: r.sid(), last: r.uvarint(), otime: int64(r.uvarint()), origin: r.str(maxNodeIDLen)}
		if h.last == 0 || h.otime < 0 {
			r.fail()
		}
		s.heads = append(s.heads, h)
	}
	n = r.count(9)
	for range n {
		m := wireMsg{channel: s.channel, sid: r.sid(), seq: r.uvarint(), otime: int64(r.uvarint())}
		m.data = r.bytes(r.uvarint())
		if m.seq == 0 || m.otime < 0 || len(m.data) == 0 {
			r.fail()
		}
		s.msgs = append(s.msgs, m)
	}
	if !r.done() || f > 1 {
		return syncReply{}, errPeerMsg
	}
	return s, nil
}

type chanHead struct {
	hash uint64
	sid  uint64
	seq  uint64
}

func encodeHeads(hs []chanHead) []byte {
	b := make([]byte, 0, 2+len(hs)*20)
	b = append(b, kindHeads)
	b = binary.AppendUvarint(b, uint64(len(hs)))
	for _, h := range hs {
		b = binary.BigEndian.AppendUint64(b, h.hash)
		b = appendSIDBytes(b, h.sid)
		b = binary.AppendUvarint(b, h.seq)
	}
	return b
}

func decodeHeads(b []byte) ([]chanHead, error) {
	r := reader{b: b[1:]}
	n := r.count(14)
	hs := make([]chanHead, 0, n)
	for range n {
		h := chanHead{hash: r.u64(), sid: r.sid(), seq: r.uvarint()}
		if h.seq == 0 {
			r.fail()
		}
		hs = append(hs, h)
	}
	if !r.done() {
		return nil, errPeerMsg
	}
	return hs, nil
}
