package repl

import (
	"os"
	"path/filepath"
	"testing"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
	"github.com/edgenode/edgenode/internal/replica"
)

// goldenMessages is one message of every type with every field set, as
// this code encodes them. It uses only the encoders version 1 already had,
// so the same file, copied into a checkout of a version 1 release, writes
// that version's golden files (see TestWriteWireGolden).
func goldenMessages(t testing.TB) map[string][]byte {
	t.Helper()
	_, id, _ := bson.MarshalValue("doc-1")
	upd, _ := bson.Marshal(bson.D{{Key: "$set", Value: bson.D{{Key: "a.b", Value: "x"}}}, {Key: "$inc", Value: bson.D{{Key: "n", Value: int64(2)}}}})
	ops := &opsMsg{origin: "n1~a", prev: 41}
	for i := range 2 {
		op := &crdt.Op{Origin: "n1~a", Seq: 42 + uint64(i), TS: crdt.Timestamp{Wall: 1_767_225_600_000 + int64(i), Logical: 3, Node: "n1~a"},
			NS: "app.docs", ID: bson.RawValue{Type: bson.TypeString, Value: id}, Kind: crdt.Update, Update: upd}
		b, err := op.MarshalBSON()
		if err != nil {
			t.Fatal(err)
		}
		ops.ops = append(ops.ops, b)
	}
	doc, _ := bson.Marshal(bson.D{{Key: "_id", Value: "doc-1"}, {Key: "a", Value: bson.D{{Key: "b", Value: "x"}}}})
	clock := crdt.Timestamp{Wall: 1_767_225_600_500, Logical: 9, Node: "n2~b"}
	return map[string][]byte{
		"ops":         ops.encode(),
		"ack":         (&ackMsg{origin: "n1~a", pos: 1 << 33, flags: ackGap | ackClockAhead}).encode(),
		"heartbeat":   (&heartbeat{origin: "n2~b", frontier: clock, last: 77, first: 5, flags: hbSynced, applied: map[string]uint64{"n1~a": 43, "n2~b": 77, "n3~c": 0}}).encode(),
		"links":       (&linksMsg{origin: "n2~b", nodes: []string{"n1", "n3"}}).encode(),
		"sync-req":    (&syncMsg{typ: msgSyncReq, session: 12345}).encode(),
		"sync-begin":  (&syncMsg{typ: msgSyncBegin, session: 12345, vector: map[string]uint64{"n1~a": 43, "n2~b": 77}, clock: clock}).encode(),
		"sync-items":  (&syncMsg{typ: msgSyncItems, session: 12345, chunk: 2, items: []replica.SnapshotItem{{Kind: replica.SnapDoc, NS: "app.docs", Doc: doc}}}).encode(),
		"sync-ack":    (&syncMsg{typ: msgSyncAck, session: 12345, chunk: 2}).encode(),
		"sync-end":    (&syncMsg{typ: msgSyncEnd, session: 12345, chunk: 3, errText: "source stopping"}).encode(),
		"sync-cancel": (&syncMsg{typ: msgSyncCancel, session: 12345}).encode(),
	}
}

// TestWriteWireGolden writes goldenMessages into $REPL_WIRE_GOLDEN (a
// folder) when it is set; otherwise it does nothing.
func TestWriteWireGolden(t *testing.T) {
	dir := os.Getenv("REPL_WIRE_GOLDEN")
	if dir == "" {
		t.Skip("REPL_WIRE_GOLDEN not set")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, b := range goldenMessages(t) {
		if err := os.WriteFile(filepath.Join(dir, name+".bin"), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
