package mongoproxy

import (
	"slices"
	"testing"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"

	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
)

// peerOps builds ops of a fictitious peer "p" with explicit clocks.
type peerOps struct {
	t   *testing.T
	seq uint64
}

func (p *peerOps) op(ns string, id any, kind crdt.Kind, wall int64, doc bson.D) *crdt.Op {
	p.t.Helper()
	p.seq++
	_, v, err := bson.MarshalValue(id)
	if err != nil {
		p.t.Fatal(err)
	}
	op := &crdt.Op{Origin: "p", Seq: p.seq, TS: crdt.Timestamp{Wall: wall, Node: "p"}, NS: ns, Kind: kind}
	op.ID = bson.RawValue{Type: bsonType(id), Value: v}
	if doc != nil {
		raw, err := bson.Marshal(doc)
		if err != nil {
			p.t.Fatal(err)
		}
		switch kind {
		case crdt.Update:
			op.Update = raw
		default:
			op.Doc = raw
		}
	}
	return op
}

func bsonType(v any) bson.Type {
	t, _, _ := bson.MarshalValue(v)
	return t
}

func indexNames(t *testing.T, c *mongo.Collection) []string {
	t.Helper()
	specs, err := c.Indexes().ListSpecifications(testCtx)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, s := range specs {
		out = append(out, s.Name)
	}
	slices.Sort(out)
	return out
}

// TestDDLLastWriterWins: DDL ops from a peer apply by timestamp per
// namespace and key, whatever the order of arrival, and a drop deletes
// exactly what is older than it, now and later.
func TestDDLLastWriterWins(t *testing.T) {
	tp := newProxy(t, 0, "n1")
	db := freshDB("ddl")
	ns := db + ".c"
	coll := tp.client.Database(db).Collection("c")
	p := &peerOps{t: t}
	apply := func(ops ...*crdt.Op) {
		t.Helper()
		if err := tp.Replica().ApplyRemote(testCtx, ops); err != nil {
			t.Fatal(err)
		}
	}
	const base = 1_700_000_000_000
	idx := bson.D{{Key: "createIndexes", Value: "c"}, {Key: "indexes", Value: bson.A{bson.D{{Key: "key", Value: bson.D{{Key: "a", Value: 1}}}, {Key: "name", Value: "a_1"}}}}}
	drop := bson.D{{Key: "dropIndexes", Value: "c"}, {Key: "index", Value: "a_1"}}
	create := p.op(ns, crdt.DDLKey("a_1"), crdt.DDL, base+20, idx)
	older := p.op(ns, crdt.DDLKey("a_1"), crdt.DDL, base+10, drop)
	// The create (newer) arrives first, the drop (older) after: it stays.
	apply(p.op(ns, "d1", crdt.Insert, base+1, bson.D{{Key: "_id", Value: "d1"}, {Key: "a", Value: 1}}), create, older)
	if got := indexNames(t, coll); !slices.Equal(got, []string{"_id_", "a_1"}) {
		t.Fatalf("after create then older drop: %v", got)
	}
	apply(create, older) // duplicates change nothing
	if got := indexNames(t, coll); !slices.Equal(got, []string{"_id_", "a_1"}) {
		t.Fatalf("after duplicates: %v", got)
	}
	// A newer drop wins.
	apply(p.op(ns, crdt.DDLKey("a_1"), crdt.DDL, base+30, drop))
	if got := indexNames(t, coll); !slices.Equal(got, []string{"_id_"}) {
		t.Fatalf("after newer drop: %v", got)
	}

	// A collection drop at base+100: d1 (older) goes; d2 written after it
	// survives with only what was written after; ops older than the drop
	// arriving later change nothing.
	apply(p.op(ns, "d2", crdt.Insert, base+50, bson.D{{Key: "_id", Value: "d2"}, {Key: "old", Value: true}}),
		p.op(ns, "d2", crdt.Update, base+150, bson.D{{Key: "$set", Value: bson.D{{Key: "new", Value: true}}}}),
		p.op(ns, crdt.DDLKey(""), crdt.DDL, base+100, bson.D{{Key: "drop", Value: "c"}}),
		p.op(ns, "d3", crdt.Insert, base+90, bson.D{{Key: "_id", Value: "d3"}}),
		p.op(ns, "d1", crdt.Update, base+95, bson.D{{Key: "$inc", Value: bson.D{{Key: "n", Value: 1}}}}))
	docs := findAll(t, coll)
	if len(docs) != 1 || docs[0].Lookup("_id").StringValue() != "d2" || docs[0].Lookup("new").Type == 0 || docs[0].Lookup("old").Type != 0 {
		t.Fatalf("after the drop: %v", docs)
	}
	// Read back after a restart (the drop state is read from the
	// records): still dropped.
	tp.restart(t)
	coll = tp.client.Database(db).Collection("c")
	apply(p.op(ns, "d4", crdt.Insert, base+99, bson.D{{Key: "_id", Value: "d4"}}), p.op(ns, "d5", crdt.Insert, base+101, bson.D{{Key: "_id", Value: "d5"}}))
	if docs := findAll(t, coll); len(docs) != 2 {
		t.Fatalf("late ops around the drop: %v", docs)
	}

	// A local drop through the proxy is replicated as an op and answered
	// like MongoDB.
	from := tp.Replica().LastSeq()
	if err := coll.Drop(testCtx); err != nil {
		t.Fatal(err)
	}
	logged := localOpsSince(t, tp, from)
	if len(logged) != 1 || logged[0].Kind != crdt.DDL {
		t.Fatalf("local drop logged %v", logged)
	}
	if n, _ := coll.CountDocuments(testCtx, bson.D{}); n != 0 {
		t.Fatalf("%d documents after a local drop", n)
	}
	// createIndexes through the proxy is logged once the database accepted it.
	from = tp.Replica().LastSeq()
	if _, err := coll.Indexes().CreateOne(testCtx, mongo.IndexModel{Keys: bson.D{{Key: "b", Value: -1}}}); err != nil {
		t.Fatal(err)
	}
	logged = localOpsSince(t, tp, from)
	if len(logged) != 1 || logged[0].ID.StringValue() != crdt.DDLKey("b_-1") {
		t.Fatalf("createIndexes logged %v", logged)
	}
}
