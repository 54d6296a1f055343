package replica

import (
	"context"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
	"github.com/edgenode/edgenode/internal/mongoproxy/embedded"
)

func rawID(t *testing.T, v any) bson.RawValue {
	t.Helper()
	typ, b, err := bson.MarshalValue(v)
	if err != nil {
		t.Fatal(err)
	}
	return bson.RawValue{Type: typ, Value: b}
}

// TestKeysStorableAndDistinct: every key is valid UTF-8 without NUL (what
// PostgreSQL's jsonb stores), numbers equal by value share a key, and
// namespaces and ids that a separator would confuse get distinct keys.
func TestKeysStorableAndDistinct(t *testing.T) {
	type k struct {
		ns string
		id any
	}
	cases := []k{
		{"a.b", "c"}, {"a.b:s", "c"}, {"a.b", ":sc"}, {"a.b:", "sc"}, {"a.bs", "c"},
		{"a.b", "x\x00y"}, {"a.b", "x\xffy"}, {"a.b", "tx"}, {"a.b", int32(7)}, {"a.b", 7.5},
		{"a.b", bson.D{{Key: "k", Value: 1}}}, {"a.b", bson.NewObjectID()}, {"a.b", ""}, {"a.b\x00", "c"},
	}
	seen := map[string]k{}
	for _, c := range cases {
		key := docKey(c.ns, rawID(t, c.id))
		if !strings.Contains(c.ns, "\x00") && (strings.Contains(key, "\x00") || !utf8.ValidString(key)) {
			t.Errorf("docKey(%q, %v) = %q: not storable", c.ns, c.id, key)
		}
		if o, dup := seen[key]; dup {
			t.Errorf("docKey(%q, %v) = docKey(%q, %v) = %q", c.ns, c.id, o.ns, o.id, key)
		}
		seen[key] = c
	}
	if a, b, c := docKey("a.b", rawID(t, int32(1))), docKey("a.b", rawID(t, int64(1))), docKey("a.b", rawID(t, 1.0)); a != b || b != c {
		t.Errorf("1 as int32, int64, double: %q %q %q, want one key", a, b, c)
	}
	if ddlID("a.b", "index:x") == ddlID("a.b:index", "x") {
		t.Error("ddlID confuses namespace and key")
	}
}

// TestMigrateLegacyKeys: a database whose tombstones and DDL records carry
// keys of format 1 (namespace NUL id, as nodes on SQLite stored them) is
// converted when the core opens it, and the converted tombstone still does
// its work: an op older than the delete leaves the document deleted, a
// newer one re-creates it with only what was written after the delete. A
// snapshot item keyed in the old form (an older peer's) is stored under
// its current key.
func TestMigrateLegacyKeys(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a database")
	}
	ctx := context.Background()
	dir := t.TempDir()
	log := slog.New(slog.DiscardHandler)
	db, err := embedded.Start(ctx, filepath.Join(dir, "db"), log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Stop)
	client, err := mongo.Connect(options.Client().ApplyURI(db.URI()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Disconnect(context.Background()) })
	open := func() *Replica {
		r, err := Open(ctx, Config{Node: "n1", DataDir: dir, Client: client, Replicated: func(db, coll string) bool { return db == "app" },
			Capabilities: Detect(ctx, client), MaxDocumentBytes: 1 << 20, MaxClockSkew: time.Minute}, log)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	now := time.Now().UnixMilli()
	ts := func(ms int64) crdt.Timestamp { return crdt.Timestamp{Wall: now - 10_000 + ms, Node: "p1"} }
	id := rawID(t, "doc:1")
	ins, err := bson.Marshal(bson.D{{Key: "_id", Value: "doc:1"}, {Key: "a", Value: 1}})
	if err != nil {
		t.Fatal(err)
	}
	idx, err := bson.Marshal(bson.D{{Key: "createIndexes", Value: "c"}, {Key: "indexes", Value: bson.A{bson.D{{Key: "key", Value: bson.D{{Key: "a", Value: 1}}}, {Key: "name", Value: "a_1"}}}}})
	if err != nil {
		t.Fatal(err)
	}
	r := open()
	if err := r.ApplyRemote(ctx, []*crdt.Op{
		{Origin: "p1", Seq: 1, TS: ts(1), NS: "app.c", ID: id, Kind: crdt.Insert, Doc: ins},
		{Origin: "p1", Seq: 2, TS: ts(2), NS: "app.c", ID: rawID(t, "index:a_1"), Kind: crdt.DDL, Doc: idx},
		{Origin: "p1", Seq: 3, TS: ts(5), NS: "app.c", ID: id, Kind: crdt.Delete},
	}); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}

	// Rewrite what the core stored as format 1 stored it.
	meta := client.Database(MetaDB)
	legacy := map[string]string{tombstoneColl: legacyDocKey("app.c", id), ddlColl: legacyDDLID("app.c", "index:a_1")}
	current := map[string]string{tombstoneColl: docKey("app.c", id), ddlColl: ddlID("app.c", "index:a_1")}
	for c, old := range legacy {
		raw, err := meta.Collection(c).FindOne(ctx, bson.D{{Key: "_id", Value: current[c]}}).Raw()
		if err != nil {
			t.Fatalf("%s record under %q: %v", c, current[c], err)
		}
		var d bson.D
		if err := bson.Unmarshal(raw, &d); err != nil {
			t.Fatal(err)
		}
		d[0].Value = old
		if _, err := meta.Collection(c).DeleteOne(ctx, bson.D{{Key: "_id", Value: current[c]}}); err != nil {
			t.Fatal(err)
		}
		if _, err := meta.Collection(c).InsertOne(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := meta.Collection(replStateColl).DeleteOne(ctx, bson.D{{Key: "_id", Value: "keys"}}); err != nil {
		t.Fatal(err)
	}

	r = open()
	defer func() { _ = r.Close() }()
	for c, old := range legacy {
		if n, _ := meta.Collection(c).CountDocuments(ctx, bson.D{{Key: "_id", Value: old}}); n != 0 {
			t.Errorf("%s: the old key is still there", c)
		}
		if n, _ := meta.Collection(c).CountDocuments(ctx, bson.D{{Key: "_id", Value: current[c]}}); n != 1 {
			t.Errorf("%s: no record under the current key %q", c, current[c])
		}
	}
	var rec struct {
		Format int `bson:"format"`
	}
	if err := meta.Collection(replStateColl).FindOne(ctx, bson.D{{Key: "_id", Value: "keys"}}).Decode(&rec); err != nil || rec.Format != keyFormat {
		t.Errorf("key format record: %+v, %v", rec, err)
	}

	upd := func(seq uint64, at int64, field string) *crdt.Op {
		u, err := bson.Marshal(bson.D{{Key: "$set", Value: bson.D{{Key: field, Value: 1}}}})
		if err != nil {
			t.Fatal(err)
		}
		return &crdt.Op{Origin: "p1", Seq: seq, TS: ts(at), NS: "app.c", ID: id, Kind: crdt.Update, Update: u}
	}
	coll := client.Database("app").Collection("c")
	if err := r.ApplyRemote(ctx, []*crdt.Op{upd(4, 3, "older")}); err != nil {
		t.Fatal(err)
	}
	if n, _ := coll.CountDocuments(ctx, bson.D{}); n != 0 {
		t.Fatal("an op older than the delete re-created the document: the converted tombstone was not found")
	}
	if err := r.ApplyRemote(ctx, []*crdt.Op{upd(5, 7, "newer")}); err != nil {
		t.Fatal(err)
	}
	var got bson.M
	if err := coll.FindOne(ctx, bson.D{}, options.FindOne().SetProjection(bson.D{{Key: crdt.MetaField, Value: 0}})).Decode(&got); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got["newer"] != int32(1) {
		t.Errorf("re-created document %v, want only _id and newer", got)
	}

	// An older peer's snapshot: the tombstone of another document, keyed
	// in format 1.
	id2 := rawID(t, int32(2))
	tomb, err := bson.Marshal(bson.D{{Key: "_id", Value: legacyDocKey("app.c", id2)}, {Key: "ns", Value: "app.c"}, {Key: "id", Value: int32(2)}, {Key: "m", Value: bson.D{}}})
	if err != nil {
		t.Fatal(err)
	}
	bad, err := bson.Marshal(bson.D{{Key: "_id", Value: legacyDocKey("app.other", id2)}, {Key: "ns", Value: "app.c"}, {Key: "id", Value: int32(2)}, {Key: "m", Value: bson.D{}}})
	if err != nil {
		t.Fatal(err)
	}
	refused, err := r.LoadSnapshot(ctx, []SnapshotItem{{Kind: SnapTombstone, Doc: tomb}, {Kind: SnapTombstone, Doc: bad}})
	if err != nil {
		t.Fatal(err)
	}
	if len(refused) != 1 || refused[0].Why != "tombstone key outside its namespace" {
		t.Errorf("refused %+v, want the tombstone keyed outside its namespace", refused)
	}
	if n, _ := meta.Collection(tombstoneColl).CountDocuments(ctx, bson.D{{Key: "_id", Value: docKey("app.c", id2)}}); n != 1 {
		t.Error("the snapshot's tombstone is not stored under its current key")
	}
}
