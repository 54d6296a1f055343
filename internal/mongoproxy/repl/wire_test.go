package repl

import (
	"bytes"
	"testing"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
	"github.com/edgenode/edgenode/internal/replica"
)

func testOp(t testing.TB, origin string, seq uint64) *crdt.Op {
	t.Helper()
	_, id, _ := bson.MarshalValue("doc")
	u, _ := bson.Marshal(bson.D{{Key: "$inc", Value: bson.D{{Key: "n", Value: int32(1)}}}})
	return &crdt.Op{Origin: origin, Seq: seq, TS: crdt.Timestamp{Wall: 1700000000000 + int64(seq), Node: origin}, NS: "db.c",
		ID: bson.RawValue{Type: bson.TypeString, Value: id}, Kind: crdt.Update, Update: u}
}

func encodedOps(t testing.TB, origin string, prev uint64, n int) []byte {
	t.Helper()
	m := &opsMsg{origin: origin, prev: prev}
	for i := range n {
		b, err := testOp(t, origin, prev+1+uint64(i)).MarshalBSON()
		if err != nil {
			t.Fatal(err)
		}
		m.ops = append(m.ops, b)
	}
	return m.encode()
}

func TestWireRoundTrips(t *testing.T) {
	origin, prev, ops, err := decodeOps(encodedOps(t, "n1~x", 41, 3))
	if err != nil || origin != "n1~x" || prev != 41 || len(ops) != 3 || ops[2].Seq != 44 {
		t.Fatalf("ops: %q %d %d %v", origin, prev, len(ops), err)
	}
	// Ops must be the origin's and contiguous.
	bad := &opsMsg{origin: "n1~x", prev: 1}
	b1, _ := testOp(t, "n1~x", 2).MarshalBSON()
	b3, _ := testOp(t, "n1~x", 4).MarshalBSON()
	bad.ops = [][]byte{b1, b3}
	if _, _, _, err := decodeOps(bad.encode()); err == nil {
		t.Error("non-contiguous ops accepted")
	}
	other, _ := testOp(t, "n2", 2).MarshalBSON()
	bad.ops = [][]byte{other}
	if _, _, _, err := decodeOps(bad.encode()); err == nil {
		t.Error("another origin's op accepted")
	}

	a, err := decodeAck((&ackMsg{origin: "n1", pos: 1 << 40, flags: ackGap}).encode())
	if err != nil || a.origin != "n1" || a.pos != 1<<40 || a.flags != ackGap {
		t.Fatalf("ack: %+v %v", a, err)
	}
	hb := heartbeat{origin: "n2~y", frontier: crdt.Timestamp{Wall: 5, Logical: 7, Node: "n2~y"}, last: 9, first: 3, flags: hbSynced,
		applied: map[string]uint64{"n1": 4, "n2~y": 9}}
	h, err := decodeHeartbeat(hb.encode())
	if err != nil || h.origin != hb.origin || h.frontier != hb.frontier || h.last != 9 || h.first != 3 || h.flags != hbSynced || len(h.applied) != 2 || h.applied["n1"] != 4 {
		t.Fatalf("heartbeat: %+v %v", h, err)
	}
	doc, _ := bson.Marshal(bson.D{{Key: "_id", Value: 1}})
	for _, m := range []syncMsg{
		{typ: msgSyncReq, session: 7},
		{typ: msgSyncBegin, session: 7, vector: map[string]uint64{"a": 1}, clock: crdt.Timestamp{Wall: 3, Node: "a"}},
		{typ: msgSyncItems, session: 7, chunk: 2, items: []replica.SnapshotItem{{Kind: replica.SnapDoc, NS: "db.c", Doc: doc}}},
		{typ: msgSyncAck, session: 7, chunk: 2},
		{typ: msgSyncEnd, session: 7, chunk: 2, errText: "boom"},
		{typ: msgSyncCancel, session: 7},
	} {
		got, err := decodeSync(m.encode())
		if err != nil || got.typ != m.typ || got.session != 7 || got.chunk != m.chunk || got.errText != m.errText || len(got.items) != len(m.items) {
			t.Errorf("sync %d: %+v %v", m.typ, got, err)
		}
		if len(got.items) == 1 && !bytes.Equal(got.items[0].Doc, doc) {
			t.Errorf("sync item: %v", got.items[0])
		}
	}
	// Truncations of valid messages are refused, never a panic.
	for _, msg := range [][]byte{encodedOps(t, "n1", 0, 2), hb.encode(), (&ackMsg{origin: "n", pos: 3}).encode()} {
		for i := range len(msg) {
			_ = decodeAny(msg[:i])
		}
	}
}

// decodeAny runs the decoder a message's type byte selects.
func decodeAny(b []byte) error {
	if len(b) == 0 {
		return errMalformed
	}
	switch b[0] {
	case msgOps:
		_, _, _, err := decodeOps(b)
		return err
	case msgAck:
		_, err := decodeAck(b)
		return err
	case msgHeartbeat:
		_, err := decodeHeartbeat(b)
		return err
	default:
		_, err := decodeSync(b)
		return err
	}
}

// FuzzDecode feeds arbitrary bytes from a "peer" to every decoder.
func FuzzDecode(f *testing.F) {
	f.Add(encodedOps(f, "n1~x", 0, 2))
	f.Add((&ackMsg{origin: "n1", pos: 9, flags: ackGap}).encode())
	f.Add((&heartbeat{origin: "n2", frontier: crdt.Timestamp{Wall: 1, Node: "n2"}, last: 3, applied: map[string]uint64{"n1": 1}}).encode())
	doc, _ := bson.Marshal(bson.D{{Key: "_id", Value: "x"}, {Key: "a", Value: bson.A{1, "b"}}})
	f.Add((&syncMsg{typ: msgSyncItems, session: 1, chunk: 1, items: []replica.SnapshotItem{{Kind: replica.SnapDoc, NS: "a.b", Doc: doc}}}).encode())
	f.Add((&syncMsg{typ: msgSyncBegin, session: 1, vector: map[string]uint64{"n1": 5}}).encode())
	f.Add([]byte{msgOps, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Fuzz(func(t *testing.T, b []byte) {
		if err := decodeAny(b); err != nil {
			return
		}
		// What decodes must encode back to something that decodes.
		switch b[0] {
		case msgOps:
			origin, prev, ops, _ := decodeOps(b)
			m := &opsMsg{origin: origin, prev: prev}
			for _, op := range ops {
				raw, err := op.MarshalBSON()
				if err != nil {
					t.Fatalf("decoded op does not encode: %v", err)
				}
				m.ops = append(m.ops, raw)
			}
			if _, _, _, err := decodeOps(m.encode()); err != nil {
				t.Fatalf("re-encoded ops do not decode: %v", err)
			}
		case msgHeartbeat:
			h, _ := decodeHeartbeat(b)
			if _, err := decodeHeartbeat(h.encode()); err != nil {
				t.Fatalf("re-encoded heartbeat does not decode: %v", err)
			}
		}
	})
}
