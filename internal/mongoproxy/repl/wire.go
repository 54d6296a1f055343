package repl

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sort"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
	"github.com/edgenode/edgenode/internal/replica"
)

// Messages between nodes. Every message starts with its type byte; the
// rest is uvarints, varints and length-prefixed byte strings (see
// encoder). Peers are authenticated by the mesh, but their bytes are still
// parsed defensively: a malformed message is dropped with a log line
// (FuzzDecode covers the decoders).
//
// Topic "repl" (ordered per pair of nodes, at most once):
//
//	ops        origin, prev, ops[]      an origin's ops prev+1 .. prev+n, to one peer
//	ack        origin, pos, flags       the receiver's applied position for origin
//	heartbeat  origin, frontier, last, first, flags, vector
//	links      origin, nodes[]          the peers whose heartbeats the node hears
//	                                    directly (relays, see relay.go)
//
// Topic "repl-sync" (initial sync):
//
//	syncReq    session                  new node -> source
//	syncBegin  session, vector, clock   source -> new node, before any item
//	syncItems  session, chunk, items[]  chunks numbered from 1
//	syncAck    session, chunk           new node -> source: chunks stored up to chunk
//	syncEnd    session, chunks, error   source -> new node ("" error: complete)
//	syncCancel session                  new node -> source: give up
//
// # Versions
//
// These messages travel only over the mesh's peer links, whose handshake
// negotiates the protocol version of the link (mesh.Protocol: a node links
// with peers one version older or newer, never further), so a message
// carries no version of its own: what a message of a link means is what
// that link's version defines. WireVersion is the newest version this file
// encodes; the messages of versions 1 and 2 are the same bytes (version 2
// changed the link handshake, not these). testdata/wire/v<N> holds every
// message as version N encodes it, and the tests hold the encoders and
// decoders to the files of the versions a node still talks to
// (WireVersion-1 and WireVersion). A change to a message's bytes therefore
// needs a new version: the sender chooses the encoding from the version of
// the link to the peer (mesh.Mesh.PeerProtocol), the receiver decodes by
// the same, and a new message type (as msgLinks was) is one an older node
// drops as unknown.
const (
	// WireVersion is the mesh protocol version whose messages this file
	// encodes; internal/node checks it is the mesh's.
	WireVersion = 2
	// MinWireVersion is the oldest link version whose messages this file
	// still decodes: one before WireVersion.
	MinWireVersion = WireVersion - 1
)

const (
	msgOps byte = iota + 1
	msgAck
	msgHeartbeat
	msgSyncReq
	msgSyncBegin
	msgSyncItems
	msgSyncAck
	msgSyncEnd
	msgSyncCancel
	// msgLinks is separate from the heartbeat (not a field of it) so that
	// a node of the version before relays drops it as one message it does
	// not know, and keeps understanding heartbeats, during a rolling
	// upgrade.
	msgLinks
)

// Limits on what a peer may send (beyond the mesh's own message size cap).
const (
	maxString      = 1024
	maxOpsPerMsg   = 1 << 16
	maxVectorLen   = 4096
	maxItemsPerMsg = 1 << 16
)

var errMalformed = errors.New("repl: malformed message")

// Ack flags.
const (
	ackGap      byte = 1 << iota // the batch did not follow the receiver's position: resend from pos+1
	ackNotReady                  // the receiver is syncing and applies nothing: pause
	// ackClockAhead: the op after pos is stamped more than the receiver's
	// mongo.max_clock_skew ahead of its wall clock and was refused, with
	// everything after it: retry from pos+1 later. (A sender that does not
	// know the flag takes it for a plain ack and resends after ResendAfter.)
	ackClockAhead
)

// Heartbeat flags.
const (
	hbSynced  byte = 1 << iota // the node's database is a complete replica
	hbSyncing                  // an initial sync is in progress
)

type encoder struct{ b []byte }

func (e *encoder) byte(v byte)      { e.b = append(e.b, v) }
func (e *encoder) uvarint(v uint64) { e.b = binary.AppendUvarint(e.b, v) }
func (e *encoder) varint(v int64)   { e.b = binary.AppendVarint(e.b, v) }
func (e *encoder) bytes(v []byte)   { e.uvarint(uint64(len(v))); e.b = append(e.b, v...) }
func (e *encoder) str(v string)     { e.uvarint(uint64(len(v))); e.b = append(e.b, v...) }
func (e *encoder) ts(t crdt.Timestamp) {
	e.varint(t.Wall)
	e.uvarint(uint64(t.Logical))
	e.str(t.Node)
}
func (e *encoder) vector(v map[string]uint64) {
	keys := make([]string, 0, len(v))
	for k := range v {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	e.uvarint(uint64(len(keys)))
	for _, k := range keys {
		e.str(k)
		e.uvarint(v[k])
	}
}

type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail() {
	if d.err == nil {
		d.err = errMalformed
	}
	d.b = nil
}

func (d *decoder) byte() byte {
	if len(d.b) < 1 {
		d.fail()
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

func (d *decoder) uvarint() uint64 {
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail()
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint() int64 {
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail()
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) bytes(limit int) []byte {
	n := d.uvarint()
	if d.err != nil || n > uint64(len(d.b)) || n > uint64(limit) {
		d.fail()
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) str() string { return string(d.bytes(maxString)) }

func (d *decoder) ts() crdt.Timestamp {
	w := d.varint()
	l := d.uvarint()
	if l > 1<<32-1 {
		d.fail()
	}
	return crdt.Timestamp{Wall: w, Logical: uint32(l), Node: d.str()}
}

func (d *decoder) vector() map[string]uint64 {
	n := d.uvarint()
	if n > maxVectorLen {
		d.fail()
		return nil
	}
	v := make(map[string]uint64, n)
	for i := uint64(0); i < n && d.err == nil; i++ {
		k := d.str()
		v[k] = d.uvarint()
	}
	return v
}

func (d *decoder) end() error {
	if d.err == nil && len(d.b) != 0 {
		d.err = errMalformed
	}
	return d.err
}

// opsMsg carries an origin's ops prev+1 ... prev+len(ops) (stable BSON).
type opsMsg struct {
	origin string
	prev   uint64
	ops    [][]byte
}

func (m *opsMsg) encode() []byte {
	n := 16 + len(m.origin)
	for _, o := range m.ops {
		n += len(o) + 4
	}
	e := encoder{b: make([]byte, 0, n)}
	e.byte(msgOps)
	e.str(m.origin)
	e.uvarint(m.prev)
	e.uvarint(uint64(len(m.ops)))
	for _, o := range m.ops {
		e.bytes(o)
	}
	return e.b
}

// decodeOps parses an ops message and decodes its ops, checking that they
// are the origin's, numbered prev+1, prev+2, ...
func decodeOps(b []byte) (origin string, prev uint64, ops []*crdt.Op, err error) {
	d := decoder{b: b}
	if d.byte() != msgOps {
		return "", 0, nil, errMalformed
	}
	origin = d.str()
	prev = d.uvarint()
	n := d.uvarint()
	if n == 0 || n > maxOpsPerMsg {
		return "", 0, nil, errMalformed
	}
	for i := uint64(0); i < n && d.err == nil; i++ {
		raw := d.bytes(len(b))
		if d.err != nil {
			break
		}
		op := &crdt.Op{}
		if err := op.UnmarshalBSON(raw); err != nil {
			return "", 0, nil, fmt.Errorf("repl: op %d: %w", i, err)
		}
		if op.Origin != origin || op.Seq != prev+1+i {
			return "", 0, nil, fmt.Errorf("repl: op %d is %s:%d, want %s:%d", i, op.Origin, op.Seq, origin, prev+1+i)
		}
		ops = append(ops, op)
	}
	if err := d.end(); err != nil {
		return "", 0, nil, err
	}
	return origin, prev, ops, nil
}

type ackMsg struct {
	origin string
	pos    uint64
	flags  byte
}

func (m *ackMsg) encode() []byte {
	e := encoder{b: make([]byte, 0, 16+len(m.origin))}
	e.byte(msgAck)
	e.str(m.origin)
	e.uvarint(m.pos)
	e.byte(m.flags)
	return e.b
}

func decodeAck(b []byte) (ackMsg, error) {
	d := decoder{b: b}
	var m ackMsg
	if d.byte() != msgAck {
		return m, errMalformed
	}
	m.origin = d.str()
	m.pos = d.uvarint()
	m.flags = d.byte()
	return m, d.end()
}

// heartbeat is what every node broadcasts every HeartbeatInterval.
type heartbeat struct {
	origin   string         // the node's current origin (incarnation)
	frontier crdt.Timestamp // every op of origin at or below it is at or below last
	last     uint64         // origin's last seq
	first    uint64         // lowest seq of origin still in its log (0: none stored)
	flags    byte
	applied  map[string]uint64 // the node's applied position per origin
}

func (m *heartbeat) encode() []byte {
	e := encoder{b: make([]byte, 0, 64+32*len(m.applied))}
	e.byte(msgHeartbeat)
	e.str(m.origin)
	e.ts(m.frontier)
	e.uvarint(m.last)
	e.uvarint(m.first)
	e.byte(m.flags)
	e.vector(m.applied)
	return e.b
}

func decodeHeartbeat(b []byte) (heartbeat, error) {
	d := decoder{b: b}
	var m heartbeat
	if d.byte() != msgHeartbeat {
		return m, errMalformed
	}
	m.origin = d.str()
	m.frontier = d.ts()
	m.last = d.uvarint()
	m.first = d.uvarint()
	m.flags = d.byte()
	m.applied = d.vector()
	return m, d.end()
}

// linksMsg says which peers a node hears directly (their heartbeats
// arrive over their link).
type linksMsg struct {
	origin string
	nodes  []string
}

func (m *linksMsg) encode() []byte {
	e := encoder{b: make([]byte, 0, 16+16*len(m.nodes))}
	e.byte(msgLinks)
	e.str(m.origin)
	e.uvarint(uint64(len(m.nodes)))
	for _, n := range m.nodes {
		e.str(n)
	}
	return e.b
}

func decodeLinks(b []byte) (linksMsg, error) {
	d := decoder{b: b}
	var m linksMsg
	if d.byte() != msgLinks {
		return m, errMalformed
	}
	m.origin = d.str()
	n := d.uvarint()
	if n > maxVectorLen {
		d.fail()
	}
	for i := uint64(0); i < n && d.err == nil; i++ {
		m.nodes = append(m.nodes, d.str())
	}
	return m, d.end()
}

// syncMsg is every message of topic repl-sync; which fields are used
// depends on typ.
type syncMsg struct {
	typ     byte
	session uint64
	chunk   uint64                 // syncItems, syncAck; syncEnd: number of chunks sent
	vector  map[string]uint64      // syncBegin
	clock   crdt.Timestamp         // syncBegin
	items   []replica.SnapshotItem // syncItems
	errText string                 // syncEnd
}

func (m *syncMsg) encode() []byte {
	e := encoder{}
	e.byte(m.typ)
	e.uvarint(m.session)
	switch m.typ {
	case msgSyncBegin:
		e.vector(m.vector)
		e.ts(m.clock)
	case msgSyncItems:
		e.uvarint(m.chunk)
		e.uvarint(uint64(len(m.items)))
		for _, it := range m.items {
			e.byte(byte(it.Kind))
			e.str(it.NS)
			e.bytes(it.Doc)
		}
	case msgSyncAck:
		e.uvarint(m.chunk)
	case msgSyncEnd:
		e.uvarint(m.chunk)
		e.str(m.errText)
	}
	return e.b
}

func decodeSync(b []byte) (syncMsg, error) {
	d := decoder{b: b}
	var m syncMsg
	m.typ = d.byte()
	m.session = d.uvarint()
	switch m.typ {
	case msgSyncReq, msgSyncCancel:
	case msgSyncBegin:
		m.vector = d.vector()
		m.clock = d.ts()
	case msgSyncItems:
		m.chunk = d.uvarint()
		n := d.uvarint()
		if n > maxItemsPerMsg {
			return m, errMalformed
		}
		for i := uint64(0); i < n && d.err == nil; i++ {
			kind := replica.SnapshotKind(d.byte())
			ns := d.str()
			doc := d.bytes(len(b))
			if d.err != nil {
				break
			}
			if !validKind(kind) || bson.Raw(doc).Validate() != nil {
				return m, errMalformed
			}
			m.items = append(m.items, replica.SnapshotItem{Kind: kind, NS: ns, Doc: doc})
		}
	case msgSyncAck:
		m.chunk = d.uvarint()
	case msgSyncEnd:
		m.chunk = d.uvarint()
		m.errText = d.str()
	default:
		return m, errMalformed
	}
	return m, d.end()
}

func validKind(k replica.SnapshotKind) bool {
	switch k {
	case replica.SnapCollection, replica.SnapIndex, replica.SnapDoc, replica.SnapTombstone, replica.SnapDDL:
		return true
	}
	return false
}
