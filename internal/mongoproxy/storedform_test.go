package mongoproxy

import (
	"bytes"
	"testing"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"

	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
)

// storedMeta reads a document straight from the database and returns it
// with its metadata's bytes (the BinData of the hidden field) and the
// decoded metadata.
func storedMeta(t *testing.T, c *mongo.Collection, id any) (bson.Raw, []byte, *crdt.Meta) {
	t.Helper()
	raw, err := c.FindOne(testCtx, bson.D{{Key: "_id", Value: id}}).Raw()
	if err != nil {
		t.Fatal(err)
	}
	_, data := raw.Lookup(crdt.MetaField, "b").Binary()
	m, err := crdt.DecodeMetaWith(bson.RawValue{Type: bson.TypeEmbeddedDocument, Value: data}, raw)
	if err != nil {
		t.Fatalf("stored metadata does not decode: %v", err)
	}
	return raw, data, m
}

// TestStoredFormMigrates: a document stored the way nodes did before
// (every assigned value copied into the metadata), found in the database
// by a proxy that writes the new form (values only in the document), is
// read correctly and rewritten in the new form by its next write, on a
// real FerretDB.
func TestStoredFormMigrates(t *testing.T) {
	tp := newProxy(t, 1, "n1")
	db := freshDB("form")
	c := tp.client.Database(db).Collection("c")
	direct := tp.direct.Database(db).Collection("c")
	long := "a value long enough to find in the metadata if it were copied there"
	if _, err := c.InsertOne(testCtx, bson.D{{Key: "_id", Value: "a"}, {Key: "name", Value: long},
		{Key: "n", Value: 1}, {Key: "sub", Value: bson.D{{Key: "k", Value: long + " (sub)"}}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.UpdateOne(testCtx, bson.D{{Key: "_id", Value: "a"}}, bson.D{{Key: "$inc", Value: bson.D{{Key: "n", Value: 2}}}}); err != nil {
		t.Fatal(err)
	}
	_, data, m := storedMeta(t, direct, "a")
	if bytes.Contains(data, []byte(long)) {
		t.Fatalf("the new form copies a value into the metadata (%d bytes)", len(data))
	}

	// Rewrite the metadata in the old form, as an older node stored it.
	old := m.Encode()
	if !bytes.Contains(old, []byte(long)) {
		t.Fatal("the old form does not copy values: nothing to migrate")
	}
	if _, err := direct.UpdateOne(testCtx, bson.D{{Key: "_id", Value: "a"}}, bson.D{{Key: "$set", Value: bson.D{{Key: crdt.MetaField,
		Value: bson.D{{Key: "v", Value: m.Version()}, {Key: "b", Value: bson.Binary{Data: old}}}}}}}); err != nil {
		t.Fatal(err)
	}
	tp.restart(t) // no cached state: the next write reads the old form
	c = tp.client.Database(db).Collection("c")
	if _, err := c.UpdateOne(testCtx, bson.D{{Key: "_id", Value: "a"}}, bson.D{{Key: "$inc", Value: bson.D{{Key: "n", Value: 4}}},
		{Key: "$set", Value: bson.D{{Key: "more", Value: true}}}}); err != nil {
		t.Fatal(err)
	}
	got := findOne(t, c, bson.D{{Key: "_id", Value: "a"}})
	if got["name"] != long || got["n"] != int32(7) || got["more"] != true {
		t.Fatalf("after migrating: %v", got)
	}
	raw, data, m2 := storedMeta(t, direct, "a")
	if bytes.Contains(data, []byte(long)) {
		t.Fatalf("the write after reading the old form kept it (%d bytes of metadata)", len(data))
	}
	if m2.Version() != m.Version()+1 {
		t.Fatalf("version %d -> %d", m.Version(), m2.Version())
	}
	// The document is still a function of its metadata, now read from both.
	mat, err := crdt.MaterializeRaw(raw.Lookup("_id"), m2)
	if err != nil {
		t.Fatal(err)
	}
	var want bson.D
	if err := bson.Unmarshal(raw, &want); err != nil {
		t.Fatal(err)
	}
	if wantRaw, _ := bson.Marshal(want[:len(want)-1]); !bytes.Equal(mat, wantRaw) {
		t.Fatalf("stored document %v, materialized from its metadata %v", bson.Raw(wantRaw), mat)
	}
}
