package mongoproxy

import (
	"bytes"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
)

// Tests of what the proxy hands the replica core and gets back: unique
// index conflicts and their compensation, concurrent writes of one
// document, ops exchanged between two proxies, peers' ops the core skips,
// parks or flags, and size limits.

func TestIndexesAndUniqueConflict(t *testing.T) {
	tp := newProxy(t, 0, "n1")
	dbName := freshDB("idx")
	c := tp.client.Database(dbName).Collection("users")
	name, err := c.Indexes().CreateOne(testCtx, mongo.IndexModel{Keys: bson.D{{Key: "email", Value: 1}}, Options: options.Index().SetUnique(true)})
	if err != nil {
		t.Fatal(err)
	}
	specs, err := c.Indexes().ListSpecifications(testCtx)
	if err != nil || len(specs) != 2 {
		t.Fatalf("indexes: %v %v", specs, err)
	}
	if _, err := c.InsertOne(testCtx, bson.D{{Key: "_id", Value: 1}, {Key: "email", Value: "a@x"}}); err != nil {
		t.Fatal(err)
	}
	from := tp.Replica().LastSeq()
	// A local write refused by the unique index: the client gets 11000, the
	// logged op is compensated, nothing stays.
	_, err = c.InsertOne(testCtx, bson.D{{Key: "_id", Value: 2}, {Key: "email", Value: "a@x"}})
	if !mongo.IsDuplicateKeyError(err) {
		t.Fatalf("unique violation: %v", err)
	}
	if n, _ := c.CountDocuments(testCtx, bson.D{}); n != 1 {
		t.Fatalf("documents: %d", n)
	}
	if _, err := c.InsertOne(testCtx, bson.D{{Key: "_id", Value: 3}, {Key: "email", Value: "c@x"}}); err != nil {
		t.Fatal(err)
	}
	_, err = c.UpdateOne(testCtx, bson.D{{Key: "_id", Value: 3}}, bson.D{{Key: "$set", Value: bson.D{{Key: "email", Value: "a@x"}, {Key: "other", Value: 1}}}})
	if !mongo.IsDuplicateKeyError(err) {
		t.Fatalf("unique violation on update: %v", err)
	}
	if m := findOne(t, c, bson.D{{Key: "_id", Value: 3}}); m["email"] != "c@x" || m["other"] != nil {
		t.Fatalf("update not undone: %v", m)
	}
	if got := counter(t, tp.reg, "edgenode_mongoproxy_compensations_total"); got != 2 {
		t.Fatalf("compensations: %v", got)
	}
	ops := localOpsSince(t, tp, from)
	// A second node receiving the same ops ends identical: compensation replicates.
	tp2 := newProxy(t, 1, "n2")
	c2 := tp2.client.Database(dbName).Collection("users")
	if _, err := c2.Indexes().CreateOne(testCtx, mongo.IndexModel{Keys: bson.D{{Key: "email", Value: 1}}, Options: options.Index().SetUnique(true)}); err != nil {
		t.Fatal(err)
	}
	if err := tp2.Replica().ApplyRemote(testCtx, ops); err != nil {
		t.Fatal(err)
	}
	got := findAll(t, c2)
	if len(got) != 1 || got[0].Lookup("email").StringValue() != "c@x" {
		t.Fatalf("replica: %v", got)
	}

	// A peer's op colliding with a local unique index is parked, never stalls.
	remote := &crdt.Op{Origin: "peer", Seq: 1, TS: crdt.Timestamp{Wall: time.Now().UnixMilli(), Node: "peer"}, NS: dbName + ".users",
		ID: rawValue(50), Kind: crdt.Insert, Doc: rawDoc(t, bson.D{{Key: "_id", Value: 50}, {Key: "email", Value: "a@x"}})}
	ok := &crdt.Op{Origin: "peer", Seq: 2, TS: crdt.Timestamp{Wall: time.Now().UnixMilli(), Logical: 1, Node: "peer"}, NS: dbName + ".users",
		ID: rawValue(51), Kind: crdt.Insert, Doc: rawDoc(t, bson.D{{Key: "_id", Value: 51}, {Key: "email", Value: "z@x"}})}
	if err := tp.Replica().ApplyRemote(testCtx, []*crdt.Op{remote, ok}); err != nil {
		t.Fatal(err)
	}
	if got := counter(t, tp.reg, "edgenode_mongoproxy_apply_conflicts_total", "reason", "unique"); got != 1 {
		t.Fatalf("conflict metric: %v", got)
	}
	if n, _ := tp.direct.Database(metaDB).Collection("conflicts").CountDocuments(testCtx, bson.D{{Key: "_id", Value: "peer:1"}}); n != 1 {
		t.Fatal("conflict not recorded")
	}
	if !strings.Contains(tp.logs.String(), "parked") {
		t.Fatal("no log line for the parked op")
	}
	if n, _ := c.CountDocuments(testCtx, bson.D{{Key: "_id", Value: 51}}); n != 1 {
		t.Fatal("the op after the conflict was not applied")
	}
	if err := c.Indexes().DropOne(testCtx, name); err != nil {
		t.Fatal(err)
	}
	if err := c.Drop(testCtx); err != nil {
		t.Fatal(err)
	}
}

// TestConcurrentInc: FerretDB alone loses concurrent $inc on one document;
// through the proxy none is lost.
func TestConcurrentInc(t *testing.T) {
	tp := newProxy(t, 0, "n1")
	// One node, no peers: every applied op is causally stable at once, so
	// metadata is compacted on each write (replication derives the stable
	// clock from peer acknowledgements). Without compaction each of the
	// 1,600 $inc deltas stays in the document's metadata and every write
	// costs more than the previous one.
	stableFollowsClock(t, tp)
	c := tp.client.Database(freshDB("inc")).Collection("c")
	if _, err := c.InsertOne(testCtx, bson.D{{Key: "_id", Value: "counter"}, {Key: "n", Value: 0}}); err != nil {
		t.Fatal(err)
	}
	const clients, each = 8, 200
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i := 0; i < clients; i++ {
		cl := connect(t, "mongodb://"+tp.Addr().String()+"/")
		defer func() { _ = cl.Disconnect(testCtx) }()
		wg.Add(1)
		go func(cc *mongo.Collection) {
			defer wg.Done()
			for j := 0; j < each; j++ {
				if _, err := cc.UpdateOne(testCtx, bson.D{{Key: "_id", Value: "counter"}}, bson.D{{Key: "$inc", Value: bson.D{{Key: "n", Value: 1}}}}); err != nil {
					errs <- err
					return
				}
			}
		}(cl.Database(c.Database().Name()).Collection("c"))
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	m := findOne(t, c, bson.D{{Key: "_id", Value: "counter"}})
	if n, _ := m["n"].(int32); n != clients*each {
		t.Fatalf("n = %v, want %d", m["n"], clients*each)
	}
}

// TestTwoNodesViaHook: ops read from each proxy's op log (the replica
// core's local stream) and given to the other's ApplyRemote, both ways,
// converge.
func TestTwoNodesViaHook(t *testing.T) {
	a := newProxy(t, 0, "na")
	b := newProxy(t, 1, "nb")
	dbName := freshDB("pair")
	fromA, fromB := a.Replica().LastSeq(), b.Replica().LastSeq()
	ca, cb := a.client.Database(dbName).Collection("c"), b.client.Database(dbName).Collection("c")
	must := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(ca.InsertOne(testCtx, bson.D{{Key: "_id", Value: 1}, {Key: "n", Value: 0}, {Key: "s", Value: "a"}}))
	must(cb.UpdateOne(testCtx, bson.D{{Key: "_id", Value: 1}}, bson.D{{Key: "$inc", Value: bson.D{{Key: "n", Value: 5}}}}, options.UpdateOne().SetUpsert(true)))
	must(ca.UpdateOne(testCtx, bson.D{{Key: "_id", Value: 1}}, bson.D{{Key: "$inc", Value: bson.D{{Key: "n", Value: 2}}}}))
	time.Sleep(2 * time.Millisecond)
	must(cb.UpdateOne(testCtx, bson.D{{Key: "_id", Value: 1}}, bson.D{{Key: "$set", Value: bson.D{{Key: "s", Value: "b"}}}}))
	must(ca.InsertOne(testCtx, bson.D{{Key: "_id", Value: 2}}))
	must(cb.InsertOne(testCtx, bson.D{{Key: "_id", Value: 3}}))
	must(ca.DeleteOne(testCtx, bson.D{{Key: "_id", Value: 2}}))
	ta, tb := localOpsSince(t, b, fromB), localOpsSince(t, a, fromA)
	if err := a.Replica().ApplyRemote(testCtx, ta); err != nil {
		t.Fatal(err)
	}
	if err := b.Replica().ApplyRemote(testCtx, tb); err != nil {
		t.Fatal(err)
	}
	da, db := findAll(t, ca), findAll(t, cb)
	if len(da) != 2 || len(da) != len(db) {
		t.Fatalf("a=%v b=%v", da, db)
	}
	for i := range da {
		if !bytes.Equal(da[i], db[i]) {
			t.Fatalf("differ: %v vs %v", da[i], db[i])
		}
	}
	if got := da[0].Lookup("n").AsInt64(); got != 7 || da[0].Lookup("s").StringValue() != "b" {
		t.Fatalf("merged doc: %v", da[0])
	}
}

// TestDropThenReuse: a collection dropped through the proxy can be reused
// at once (the proxy's document cache does not outlive it).
func TestDropThenReuse(t *testing.T) {
	tp := newProxy(t, 0, "n1")
	c := tp.client.Database(freshDB("drop")).Collection("c")
	for round := 0; round < 2; round++ {
		if _, err := c.InsertOne(testCtx, bson.D{{Key: "_id", Value: "x"}, {Key: "round", Value: round}}); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if _, err := c.UpdateOne(testCtx, bson.D{{Key: "_id", Value: "x"}}, bson.D{{Key: "$inc", Value: bson.D{{Key: "n", Value: 1}}}}); err != nil {
			t.Fatal(err)
		}
		if m := findOne(t, c, bson.D{{Key: "_id", Value: "x"}}); m["round"] != int32(round) || m["n"] != int32(1) {
			t.Fatalf("round %d: %v", round, m)
		}
		if err := c.Drop(testCtx); err != nil {
			t.Fatal(err)
		}
	}
}

// TestRemoteOpsOutsideReplication: a peer's op for a namespace this node
// keeps local (or a system one) is skipped and counted, never written.
func TestRemoteOpsOutsideReplication(t *testing.T) {
	tp := newProxy(t, 0, "n1", func(o *Options) { o.LocalOnly = []string{"*.mine"} })
	db := freshDB("skip")
	mk := func(seq uint64, ns string) *crdt.Op {
		return &crdt.Op{Origin: "peer", Seq: seq, TS: crdt.Timestamp{Wall: time.Now().UnixMilli(), Logical: uint32(seq), Node: "peer"}, NS: ns,
			ID: rawValue(1), Kind: crdt.Insert, Doc: rawDoc(t, bson.D{{Key: "_id", Value: 1}, {Key: "x", Value: 1}})}
	}
	if err := tp.Replica().ApplyRemote(testCtx, []*crdt.Op{mk(1, db+".mine"), mk(2, "admin.users"), mk(3, db+".shared")}); err != nil {
		t.Fatal(err)
	}
	if n, _ := tp.direct.Database(db).Collection("mine").CountDocuments(testCtx, bson.D{}); n != 0 {
		t.Fatal("local-only collection written by a peer")
	}
	if n, _ := tp.direct.Database("admin").Collection("users").CountDocuments(testCtx, bson.D{}); n != 0 {
		t.Fatal("admin written by a peer")
	}
	if n, _ := tp.direct.Database(db).Collection("shared").CountDocuments(testCtx, bson.D{}); n != 1 {
		t.Fatal("replicated op not applied")
	}
	if got := counter(t, tp.reg, "edgenode_mongoproxy_apply_conflicts_total", "reason", "not_replicated"); got != 2 {
		t.Fatalf("metric %v", got)
	}
}

// TestLateApplyIsFlagged: an op that changes a document after a later op of
// its origin already had (a double application, or a retried one) is
// counted and logged; duplicates recognized as such are not.
func TestLateApplyIsFlagged(t *testing.T) {
	tp := newProxy(t, 1, "n1")
	ns := "late.counters"
	inc := func(seq uint64, logical uint32) *crdt.Op {
		return &crdt.Op{Origin: "peer", Seq: seq, TS: crdt.Timestamp{Wall: 1_700_000_000_000, Logical: logical, Node: "peer"}, NS: ns,
			ID: rawValue("c"), Kind: crdt.Update, Update: rawDoc(t, bson.D{{Key: "$inc", Value: bson.D{{Key: "n", Value: 1}}}})}
	}
	one, two := inc(1, 1), inc(2, 2)
	// In order, then both again (recognized duplicates): nothing flagged.
	for _, ops := range [][]*crdt.Op{{one}, {two}, {one, two}} {
		if err := tp.Replica().ApplyRemote(testCtx, ops); err != nil {
			t.Fatal(err)
		}
	}
	if got := counter(t, tp.reg, "edgenode_mongoproxy_late_applies_total"); got != 0 {
		t.Fatalf("duplicates flagged: %v", got)
	}
	// A distinct op numbered below the one that last changed the document
	// (here it stands for a retried apply): flagged.
	if err := tp.Replica().ApplyRemote(testCtx, []*crdt.Op{inc(1, 0)}); err != nil {
		t.Fatal(err)
	}
	if got := counter(t, tp.reg, "edgenode_mongoproxy_late_applies_total"); got != 1 {
		t.Fatalf("late apply counted %v times", got)
	}
	if !strings.Contains(tp.logs.String(), "a retried apply, or a double application") {
		t.Fatal("no log line for the late apply")
	}
}

// TestOversizedWritesAreRefused: a write whose op, or whose document with
// its replication metadata, would not fit in a replication message gets
// BSONObjectTooLarge before anything is logged; the document keeps its
// state and smaller writes go on.
func TestOversizedWritesAreRefused(t *testing.T) {
	const limit = 256 << 10
	tp := newProxy(t, 1, "n1", func(o *Options) { o.MaxDocumentBytes = limit })
	c := tp.client.Database(freshDB("big")).Collection("docs")
	log := tp.Replica()
	tooLarge := func(err error) bool {
		var se mongo.ServerError
		return errors.As(err, &se) && se.HasErrorCode(int(codeBSONObjectTooLarge)) && strings.Contains(err.Error(), "mongo.max_document_bytes")
	}
	before := log.LastSeq()
	if _, err := c.InsertOne(testCtx, bson.D{{Key: "_id", Value: 1}, {Key: "blob", Value: strings.Repeat("x", limit)}}); !tooLarge(err) {
		t.Fatalf("oversized insert: %v", err)
	}
	if got := log.LastSeq(); got != before {
		t.Fatalf("a refused insert was logged: last seq %d -> %d", before, got)
	}
	// Under the limit as a document, and with its metadata: an assigned
	// value is stored once.
	if _, err := c.InsertOne(testCtx, bson.D{{Key: "_id", Value: 2}, {Key: "blob", Value: strings.Repeat("y", limit*2/3)}}); err != nil {
		t.Fatalf("insert of 2/3 of the limit: %v", err)
	}
	before = log.LastSeq()
	// Under the limit as a document, over it with the metadata's copy of a
	// pending commutative op's operand.
	if _, err := c.UpdateOne(testCtx, bson.D{{Key: "_id", Value: 2}}, bson.D{{Key: "$addToSet", Value: bson.D{{Key: "set", Value: strings.Repeat("v", limit/4)}}}}); !tooLarge(err) {
		t.Fatalf("update too large with its metadata: %v", err)
	}
	if got := log.LastSeq(); got != before {
		t.Fatalf("refused writes were logged: last seq %d -> %d", before, got)
	}
	if _, err := c.InsertOne(testCtx, bson.D{{Key: "_id", Value: 3}, {Key: "blob", Value: strings.Repeat("z", limit/4)}}); err != nil {
		t.Fatal(err)
	}
	// Growing it past the limit is refused; it keeps what it had.
	if _, err := c.UpdateOne(testCtx, bson.D{{Key: "_id", Value: 3}}, bson.D{{Key: "$set", Value: bson.D{{Key: "more", Value: strings.Repeat("w", limit*4/5)}}}}); !tooLarge(err) {
		t.Fatalf("growing update: %v", err)
	}
	m := findOne(t, c, bson.D{{Key: "_id", Value: 3}})
	if m["more"] != nil || len(m["blob"].(string)) != limit/4 {
		t.Fatalf("document changed by a refused update: %d fields", len(m))
	}
	if n, _ := c.CountDocuments(testCtx, bson.D{}); n != 2 {
		t.Fatalf("%d documents, want 2", n)
	}
}
