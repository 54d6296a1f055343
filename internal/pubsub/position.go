package pubsub

import (
	"crypto/rand"
	"encoding/binary"
	"slices"
	"strconv"
	"strings"
	"time"
)

// A stream is the messages one node publishes on one channel: a random
// 40-bit id, new whenever that node starts the channel afresh (it had
// forgotten it, restarted, or published nothing on it for HistoryTTL), and
// sequence numbers 1, 2, 3, ... The pair (stream, seq) is the message's id
// on every node, and a channel's messages from one stream are delivered in
// sequence order everywhere.
//
// A position is a vector: for each stream of the channel, the sequence
// number of the last message received from it. Because every node delivers
// each stream in order and without gaps, a vector names exactly the set of
// messages a subscriber has, whichever node gave it; any node can answer
// "what comes after it" from its own history or its peers'.
//
// A position also carries the time it was made. Streams quiet for longer
// than the history lasts are left out of positions (see channel.pruneLocked),
// so a stream a position does not name is either one of those (nothing of
// it to replay) or one the subscriber never heard of (all of it to
// replay); its last message's time, compared with the position's, tells
// which.

// sidBits is the width of a stream id; it is encoded as 8 base32 characters.
const sidBits = 40

// newSID returns a random, non-zero stream id.
func newSID() uint64 {
	for {
		var b [8]byte
		_, _ = rand.Read(b[:])
		if id := binary.BigEndian.Uint64(b[:]) & (1<<sidBits - 1); id != 0 {
			return id
		}
	}
}

// streamPos is one entry of a vector.
type streamPos struct {
	sid uint64
	seq uint64
}

// vector is a position: entries sorted by stream id, at most one per stream,
// seq > 0.
type vector []streamPos

// maxVectorLen bounds the streams of one position (and so the length of its
// token, under 2 KiB). A channel with more streams forgets the quietest.
const maxVectorLen = 64

// get is the sequence number of stream sid (0: none of its messages).
func (v vector) get(sid uint64) uint64 {
	i, ok := slices.BinarySearchFunc(v, sid, func(e streamPos, sid uint64) int { return cmpU64(e.sid, sid) })
	if !ok {
		return 0
	}
	return v[i].seq
}

func (v vector) has(sid uint64) bool {
	_, ok := slices.BinarySearchFunc(v, sid, func(e streamPos, sid uint64) int { return cmpU64(e.sid, sid) })
	return ok
}

func cmpU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// offset is the position's "offset" on the wire: the number of messages
// the vector accounts for. It grows by one with each message a subscriber
// receives, which keeps it meaningful for clients that count.
func (v vector) offset() uint64 {
	var n uint64
	for _, e := range v {
		n += e.seq
	}
	return n
}

// sidAlphabet is base32 (RFC 4648, lower case): 40 bits in 8 characters.
const sidAlphabet = "abcdefghijklmnopqrstuvwxyz234567"

func appendSID(b []byte, sid uint64) []byte {
	for i := 7; i >= 0; i-- {
		b = append(b, sidAlphabet[(sid>>(5*uint(i)))&31])
	}
	return b
}

func parseSID(s string) (uint64, bool) {
	if len(s) != 8 {
		return 0, false
	}
	var id uint64
	for i := 0; i < 8; i++ {
		c := s[i]
		var d byte
		switch {
		case c >= 'a' && c <= 'z':
			d = c - 'a'
		case c >= '2' && c <= '7':
			d = c - '2' + 26
		default:
			return 0, false
		}
		id = id<<5 | uint64(d)
	}
	return id, id != 0
}

// emptyVector is the vector part of a position with no streams: the
// channel has had no message yet (or none for a long time). '0' is not in
// the base32 alphabet, so it never reads as a stream.
const emptyVector = "0"

// appendToken appends the text form of position (v, t), the "epoch" of a
// position on the wire: "{stream}.{seq}" per stream, joined by '_' ("0"
// when none), then '~' and t in Unix seconds, e.g.
// "k3j5x2ab.41_m2n3b4c5.7~1767225600". Only URL-safe characters and no
// ':' or '@', so it fits SSE event ids and query strings unescaped.
func appendToken(b []byte, v vector, t int64) []byte {
	if len(v) == 0 {
		b = append(b, emptyVector...)
	}
	for i, e := range v {
		if i > 0 {
			b = append(b, '_')
		}
		b = appendSID(b, e.sid)
		b = append(b, '.')
		b = strconv.AppendUint(b, e.seq, 10)
	}
	b = append(b, '~')
	return strconv.AppendInt(b, t, 10)
}

func (v vector) token(t int64) string { return string(appendToken(nil, v, t)) }

// maxPositionLen bounds a token: maxVectorLen entries of 8 + 1 + 20 + 1,
// and the time.
const maxPositionLen = maxVectorLen*30 + 21

// parseToken reads a position's epoch: its vector and time (0 when it has
// none). legacy reports a position from before positions were
// cluster-wide (a bare epoch): valid, but it says nothing usable, so the
// subscriber must reload.
func parseToken(s string) (v vector, t int64, legacy, ok bool) {
	if len(s) == 0 || len(s) > maxPositionLen {
		return nil, 0, false, false
	}
	if vs, ts, found := strings.Cut(s, "~"); found {
		n, err := strconv.ParseInt(ts, 10, 64)
		if err != nil || n < 0 || ts[0] == '+' || len(ts) > 1 && ts[0] == '0' {
			return nil, 0, false, false
		}
		s, t = vs, n
	}
	if s == emptyVector {
		return nil, t, false, true
	}
	if !strings.ContainsRune(s, '.') {
		if t == 0 && validLegacyEpoch(s) {
			return nil, 0, true, true
		}
		return nil, 0, false, false
	}
	for part := range strings.SplitSeq(s, "_") {
		id, num, found := strings.Cut(part, ".")
		if !found {
			return nil, 0, false, false
		}
		sid, okID := parseSID(id)
		seq, err := strconv.ParseUint(num, 10, 64)
		if !okID || err != nil || seq == 0 || len(num) > 20 || num[0] == '+' {
			return nil, 0, false, false
		}
		if len(v) == maxVectorLen {
			return nil, 0, false, false
		}
		v = append(v, streamPos{sid, seq})
	}
	slices.SortFunc(v, func(a, b streamPos) int { return cmpU64(a.sid, b.sid) })
	for i := 1; i < len(v); i++ {
		if v[i].sid == v[i-1].sid {
			return nil, 0, false, false
		}
	}
	return v, t, false, true
}

// validLegacyEpoch: the epochs of positions before they were cluster-wide
// (1..16 characters of lower-case base32).
func validLegacyEpoch(s string) bool {
	if len(s) == 0 || len(s) > 16 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= 'a' && c <= 'z' || c >= '2' && c <= '7') {
			return false
		}
	}
	return true
}

// position is the wire form of v made at now.
func (v vector) position(now time.Time) Position {
	return Position{Epoch: v.token(now.Unix()), Offset: v.offset()}
}

// with sets stream sid to seq (in place when it has the stream).
func (v vector) with(sid, seq uint64) vector {
	i, ok := slices.BinarySearchFunc(v, sid, func(e streamPos, sid uint64) int { return cmpU64(e.sid, sid) })
	if ok {
		v[i].seq = seq
		return v
	}
	return slices.Insert(v, i, streamPos{sid, seq})
}

// unionVec is, per stream, the later of a and b. Over maxVectorLen, the
// streams only a has are left out first.
func unionVec(a, b vector) vector {
	out := make(vector, 0, len(a)+len(b))
	onlyA := 0
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		switch {
		case j == len(b) || i < len(a) && a[i].sid < b[j].sid:
			out = append(out, a[i])
			onlyA++
			i++
		case i == len(a) || b[j].sid < a[i].sid:
			out = append(out, b[j])
			j++
		default:
			out = append(out, streamPos{a[i].sid, max(a[i].seq, b[j].seq)})
			i++
			j++
		}
	}
	for k := len(out) - 1; len(out) > maxVectorLen && k >= 0 && onlyA > 0; k-- {
		if !b.has(out[k].sid) {
			out = slices.Delete(out, k, k+1)
			onlyA--
		}
	}
	return out
}

// minVec is, per stream both name, the earlier of a and b (a stream only
// one names is left out: the other wants all of it).
func minVec(a, b vector) vector {
	out := a[:0]
	for _, e := range a {
		if s := b.get(e.sid); s > 0 {
			out = append(out, streamPos{e.sid, min(e.seq, s)})
		}
	}
	return out
}
