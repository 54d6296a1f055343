package mongoproxy

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
)

func mustNoMeta(t *testing.T, docs ...bson.Raw) {
	t.Helper()
	for _, d := range docs {
		if bytes.Contains(d, []byte(crdt.MetaField)) {
			t.Fatalf("hidden field visible: %v", d)
		}
	}
}

func findOne(t *testing.T, c *mongo.Collection, filter any) bson.M {
	t.Helper()
	var m bson.M
	raw, err := c.FindOne(testCtx, filter).Raw()
	if err != nil {
		t.Fatalf("findOne %v: %v", filter, err)
	}
	mustNoMeta(t, raw)
	if err := bson.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestCRUD(t *testing.T) {
	for _, mongoPaths := range []bool{false, true} {
		t.Run(fmt.Sprintf("mongodb-paths=%v", mongoPaths), func(t *testing.T) {
			testCRUD(t, newProxy(t, 0, "n1", mongoPathsIf(mongoPaths)))
		})
	}
}

// testCRUD writes and reads through the proxy, as an application does.
// Long on purpose: one scenario whose steps build on each other, read top
// to bottom (a table of cases would hide the order).
func testCRUD(t *testing.T, tp *testProxy) {
	db := freshDB("crud")
	c := tp.client.Database(db).Collection("things")

	res, err := c.InsertOne(testCtx, bson.D{{Key: "name", Value: "a"}, {Key: "n", Value: int32(1)}})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := res.InsertedID.(bson.ObjectID); !ok {
		t.Fatalf("inserted id %T", res.InsertedID)
	}
	many, err := c.InsertMany(testCtx, []any{
		bson.D{{Key: "_id", Value: 1}, {Key: "name", Value: "b"}, {Key: "n", Value: int32(2)}},
		bson.D{{Key: "_id", Value: 2}, {Key: "name", Value: "c"}, {Key: "n", Value: int32(3)}},
		bson.D{{Key: "_id", Value: 3}, {Key: "name", Value: "c"}, {Key: "n", Value: int32(4)}},
	})
	if err != nil || len(many.InsertedIDs) != 3 {
		t.Fatalf("insertMany: %v %v", many, err)
	}

	// updateOne by _id with $set + $inc.
	ur, err := c.UpdateOne(testCtx, bson.D{{Key: "_id", Value: 1}}, bson.D{{Key: "$set", Value: bson.D{{Key: "name", Value: "B"}}}, {Key: "$inc", Value: bson.D{{Key: "n", Value: 10}}}})
	if err != nil || ur.MatchedCount != 1 || ur.ModifiedCount != 1 {
		t.Fatalf("updateOne: %+v %v", ur, err)
	}
	if m := findOne(t, c, bson.D{{Key: "_id", Value: 1}}); m["name"] != "B" || m["n"] != int64(12) && m["n"] != int32(12) {
		t.Fatalf("after update: %v", m)
	}
	// No-op update: matched, not modified.
	ur, err = c.UpdateOne(testCtx, bson.D{{Key: "_id", Value: 1}}, bson.D{{Key: "$set", Value: bson.D{{Key: "name", Value: "B"}}}})
	if err != nil || ur.MatchedCount != 1 || ur.ModifiedCount != 0 {
		t.Fatalf("no-op updateOne: %+v %v", ur, err)
	}
	// Update of a missing document.
	ur, err = c.UpdateOne(testCtx, bson.D{{Key: "_id", Value: 99}}, bson.D{{Key: "$set", Value: bson.D{{Key: "x", Value: 1}}}})
	if err != nil || ur.MatchedCount != 0 || ur.ModifiedCount != 0 || ur.UpsertedID != nil {
		t.Fatalf("missing updateOne: %+v %v", ur, err)
	}
	// Multi-document filter.
	ur, err = c.UpdateMany(testCtx, bson.D{{Key: "name", Value: "c"}}, bson.D{{Key: "$inc", Value: bson.D{{Key: "n", Value: 100}}}})
	if err != nil || ur.MatchedCount != 2 || ur.ModifiedCount != 2 {
		t.Fatalf("updateMany: %+v %v", ur, err)
	}
	ur, err = c.UpdateMany(testCtx, bson.D{{Key: "n", Value: bson.D{{Key: "$gte", Value: 100}}}}, bson.D{{Key: "$set", Value: bson.D{{Key: "big", Value: true}}}})
	if err != nil || ur.MatchedCount != 2 {
		t.Fatalf("updateMany range: %+v %v", ur, err)
	}
	n, err := c.CountDocuments(testCtx, bson.D{{Key: "big", Value: true}})
	if err != nil || n != 2 {
		t.Fatalf("count big: %d %v", n, err)
	}
	// updateOne with a non-_id filter touches exactly one document.
	ur, err = c.UpdateOne(testCtx, bson.D{{Key: "name", Value: "c"}}, bson.D{{Key: "$set", Value: bson.D{{Key: "first", Value: true}}}})
	if err != nil || ur.MatchedCount != 1 {
		t.Fatalf("updateOne by name: %+v %v", ur, err)
	}
	if n, _ := c.CountDocuments(testCtx, bson.D{{Key: "first", Value: true}}); n != 1 {
		t.Fatalf("updateOne touched %d documents", n)
	}

	// Reads through the proxy never show the hidden field, which is there.
	all := findAll(t, c)
	if len(all) != 4 {
		t.Fatalf("find: %d docs", len(all))
	}
	mustNoMeta(t, all...)
	var direct bson.Raw
	if direct, err = tp.direct.Database(db).Collection("things").FindOne(testCtx, bson.D{{Key: "_id", Value: 1}}).Raw(); err != nil {
		t.Fatal(err)
	}
	if _, err := direct.LookupErr(crdt.MetaField); err != nil {
		t.Fatalf("the stored document has no metadata: %v", direct)
	}

	// Deletes.
	dr, err := c.DeleteOne(testCtx, bson.D{{Key: "_id", Value: 1}})
	if err != nil || dr.DeletedCount != 1 {
		t.Fatalf("deleteOne: %+v %v", dr, err)
	}
	dr, err = c.DeleteOne(testCtx, bson.D{{Key: "_id", Value: 1}})
	if err != nil || dr.DeletedCount != 0 {
		t.Fatalf("deleteOne again: %+v %v", dr, err)
	}
	dr, err = c.DeleteMany(testCtx, bson.D{{Key: "name", Value: "c"}})
	if err != nil || dr.DeletedCount != 2 {
		t.Fatalf("deleteMany: %+v %v", dr, err)
	}
	if n, _ := c.CountDocuments(testCtx, bson.D{}); n != 1 {
		t.Fatalf("left: %d", n)
	}
	// The tombstone is where the proxy reads it, not in the collection.
	tn, err := tp.direct.Database(metaDB).Collection("tombstones").CountDocuments(testCtx, bson.D{{Key: "ns", Value: db + ".things"}})
	if err != nil || tn != 3 {
		t.Fatalf("tombstones: %d %v", tn, err)
	}
	// Re-insert after delete comes back.
	if _, err := c.InsertOne(testCtx, bson.D{{Key: "_id", Value: 1}, {Key: "again", Value: true}}); err != nil {
		t.Fatal(err)
	}
	if m := findOne(t, c, bson.D{{Key: "_id", Value: 1}}); m["again"] != true || m["name"] != nil {
		t.Fatalf("re-created: %v", m)
	}

	// Duplicate _id on insert: E11000, like MongoDB.
	_, err = c.InsertOne(testCtx, bson.D{{Key: "_id", Value: 1}})
	if !mongo.IsDuplicateKeyError(err) {
		t.Fatalf("duplicate insert: %v", err)
	}
	// Numeric _ids compare by value.
	_, err = c.InsertOne(testCtx, bson.D{{Key: "_id", Value: int64(1)}})
	if !mongo.IsDuplicateKeyError(err) {
		t.Fatalf("duplicate insert int64: %v", err)
	}
}

func TestInsertOrderedUnordered(t *testing.T) {
	for _, prefetch := range []bool{false, true} {
		t.Run(fmt.Sprintf("prefetch=%v", prefetch), func(t *testing.T) {
			// FerretDB disables the one-query prefetch of multi-document
			// chunks and the version condition of writes (see
			// replica.Capabilities); force the MongoDB paths to test them too.
			tp := newProxy(t, 0, "n1", mongoPathsIf(prefetch))
			testInsertOrderedUnordered(t, tp)
		})
	}
}

func testInsertOrderedUnordered(t *testing.T, tp *testProxy) {
	c := tp.client.Database(freshDB("ins")).Collection("c")
	if _, err := c.InsertOne(testCtx, bson.D{{Key: "_id", Value: 2}}); err != nil {
		t.Fatal(err)
	}
	docs := []any{bson.D{{Key: "_id", Value: 1}}, bson.D{{Key: "_id", Value: 2}}, bson.D{{Key: "_id", Value: 3}}, bson.D{{Key: "_id", Value: 3}}, bson.D{{Key: "_id", Value: 4}}}
	_, err := c.InsertMany(testCtx, docs)
	var bwe mongo.BulkWriteException
	if !errors.As(err, &bwe) || len(bwe.WriteErrors) != 1 || bwe.WriteErrors[0].Index != 1 || bwe.WriteErrors[0].Code != 11000 {
		t.Fatalf("ordered: %v", err)
	}
	if n, _ := c.CountDocuments(testCtx, bson.D{}); n != 2 {
		t.Fatalf("ordered inserted %d, want 2 (1 and the existing 2)", n)
	}
	c2 := tp.client.Database(freshDB("ins")).Collection("c")
	_, _ = c2.InsertOne(testCtx, bson.D{{Key: "_id", Value: 2}})
	_, err = c2.InsertMany(testCtx, docs, options.InsertMany().SetOrdered(false))
	if !errors.As(err, &bwe) || len(bwe.WriteErrors) != 2 || bwe.WriteErrors[0].Index != 1 || bwe.WriteErrors[1].Index != 3 {
		t.Fatalf("unordered: %v", err)
	}
	if n, _ := c2.CountDocuments(testCtx, bson.D{}); n != 4 {
		t.Fatalf("unordered: %d documents, want 4", n)
	}
	// Documents without _id get an ObjectId, first.
	c3 := tp.client.Database(freshDB("ins")).Collection("c")
	if _, err := c3.Database().RunCommand(testCtx, bson.D{{Key: "insert", Value: "c"}, {Key: "documents", Value: bson.A{bson.D{{Key: "a", Value: 1}}}}}).Raw(); err != nil {
		t.Fatal(err)
	}
	raw, err := c3.FindOne(testCtx, bson.D{}).Raw()
	if err != nil || raw.Index(0).Key() != "_id" || raw.Index(0).Value().Type != bson.TypeObjectID {
		t.Fatalf("generated _id: %v %v", raw, err)
	}
}

func TestOperators(t *testing.T) {
	tp := newProxy(t, 0, "n1")
	c := tp.client.Database(freshDB("ops")).Collection("c")
	if _, err := c.InsertOne(testCtx, bson.D{{Key: "_id", Value: "d"}, {Key: "i", Value: int32(2147483647)}, {Key: "f", Value: 1.5},
		{Key: "lo", Value: 5}, {Key: "hi", Value: 5}, {Key: "tags", Value: bson.A{"a"}}, {Key: "gone", Value: 1}, {Key: "sub", Value: bson.D{{Key: "x", Value: 1}}}}); err != nil {
		t.Fatal(err)
	}
	upd := func(u bson.D) {
		t.Helper()
		if _, err := c.UpdateOne(testCtx, bson.D{{Key: "_id", Value: "d"}}, u); err != nil {
			t.Fatalf("%v: %v", u, err)
		}
	}
	upd(bson.D{{Key: "$inc", Value: bson.D{{Key: "i", Value: int32(1)}, {Key: "f", Value: 1}}}})
	upd(bson.D{{Key: "$min", Value: bson.D{{Key: "lo", Value: 3}}}, {Key: "$max", Value: bson.D{{Key: "hi", Value: 9}}}})
	upd(bson.D{{Key: "$min", Value: bson.D{{Key: "lo", Value: 4}}}, {Key: "$max", Value: bson.D{{Key: "hi", Value: 8}}}})
	upd(bson.D{{Key: "$addToSet", Value: bson.D{{Key: "tags", Value: "b"}}}})
	upd(bson.D{{Key: "$addToSet", Value: bson.D{{Key: "tags", Value: bson.D{{Key: "$each", Value: bson.A{"a", "c", "c"}}}}}}})
	upd(bson.D{{Key: "$unset", Value: bson.D{{Key: "gone", Value: ""}}}})
	upd(bson.D{{Key: "$set", Value: bson.D{{Key: "sub.y", Value: 2}, {Key: "new.deep", Value: "v"}}}})
	upd(bson.D{{Key: "$currentDate", Value: bson.D{{Key: "when", Value: true}, {Key: "ts", Value: bson.D{{Key: "$type", Value: "timestamp"}}}}}})
	upd(bson.D{{Key: "$setOnInsert", Value: bson.D{{Key: "never", Value: 1}}}, {Key: "$set", Value: bson.D{{Key: "seen", Value: 1}}}})

	raw, err := c.FindOne(testCtx, bson.D{{Key: "_id", Value: "d"}}).Raw()
	if err != nil {
		t.Fatal(err)
	}
	mustNoMeta(t, raw)
	if v := raw.Lookup("i"); v.Type != bson.TypeInt64 || v.Int64() != 2147483648 {
		t.Errorf("$inc int32 overflow: %v", v)
	}
	if v := raw.Lookup("f"); v.Type != bson.TypeDouble || v.Double() != 2.5 {
		t.Errorf("$inc double: %v", v)
	}
	if raw.Lookup("lo").AsInt64() != 3 || raw.Lookup("hi").AsInt64() != 9 {
		t.Errorf("$min/$max: %v %v", raw.Lookup("lo"), raw.Lookup("hi"))
	}
	if got := raw.Lookup("tags").String(); got != `["a","b","c"]` {
		t.Errorf("$addToSet: %s", got)
	}
	if raw.Lookup("gone").Type != 0 || raw.Lookup("never").Type != 0 || raw.Lookup("seen").AsInt64() != 1 {
		t.Errorf("$unset/$setOnInsert: %v", raw)
	}
	if raw.Lookup("sub", "y").AsInt64() != 2 || raw.Lookup("sub", "x").AsInt64() != 1 || raw.Lookup("new", "deep").StringValue() != "v" {
		t.Errorf("dotted $set: %v", raw)
	}
	if w := raw.Lookup("when"); w.Type != bson.TypeDateTime || time.Since(w.Time()) > time.Minute {
		t.Errorf("$currentDate: %v", w)
	}
	if ts := raw.Lookup("ts"); ts.Type != bson.TypeTimestamp {
		t.Errorf("$currentDate timestamp: %v", ts)
	}

	// Errors MongoDB would give, from the document on this node.
	var we mongo.WriteException
	_, err = c.UpdateOne(testCtx, bson.D{{Key: "_id", Value: "d"}}, bson.D{{Key: "$inc", Value: bson.D{{Key: "tags", Value: 1}}}})
	if !errors.As(err, &we) || we.WriteErrors[0].Code != 14 {
		t.Errorf("$inc on array: %v", err)
	}
	_, err = c.UpdateOne(testCtx, bson.D{{Key: "_id", Value: "d"}}, bson.D{{Key: "$set", Value: bson.D{{Key: "lo.x", Value: 1}}}})
	if !errors.As(err, &we) || we.WriteErrors[0].Code != 28 {
		t.Errorf("$set through a scalar: %v", err)
	}
	_, err = c.UpdateOne(testCtx, bson.D{{Key: "_id", Value: "d"}}, bson.D{{Key: "$set", Value: bson.D{{Key: "a", Value: 1}}}, {Key: "$inc", Value: bson.D{{Key: "a", Value: 1}}}})
	if !errors.As(err, &we) || we.WriteErrors[0].Code != 40 {
		t.Errorf("conflicting paths: %v", err)
	}
	_, err = c.UpdateOne(testCtx, bson.D{{Key: "_id", Value: "d"}}, bson.D{{Key: "$set", Value: bson.D{{Key: "_id", Value: 1}}}})
	if !errors.As(err, &we) || we.WriteErrors[0].Code != 66 {
		t.Errorf("$set _id: %v", err)
	}
	_, err = c.UpdateOne(testCtx, bson.D{{Key: "_id", Value: "d"}}, bson.D{{Key: "$addToSet", Value: bson.D{{Key: "lo", Value: 1}}}})
	if !errors.As(err, &we) || we.WriteErrors[0].Code != 2 {
		t.Errorf("$addToSet on a number: %v", err)
	}
}

func TestUpserts(t *testing.T) {
	tp := newProxy(t, 0, "n1")
	c := tp.client.Database(freshDB("ups")).Collection("c")
	// Upsert by _id creates the document with $set and $setOnInsert.
	ur, err := c.UpdateOne(testCtx, bson.D{{Key: "_id", Value: 7}},
		bson.D{{Key: "$set", Value: bson.D{{Key: "a", Value: 1}}}, {Key: "$setOnInsert", Value: bson.D{{Key: "created", Value: true}}}, {Key: "$inc", Value: bson.D{{Key: "n", Value: 2}}}},
		options.UpdateOne().SetUpsert(true))
	if err != nil || ur.UpsertedCount != 1 || ur.UpsertedID != int32(7) && ur.UpsertedID != int64(7) {
		t.Fatalf("upsert by id: %+v %v", ur, err)
	}
	if m := findOne(t, c, bson.D{{Key: "_id", Value: 7}}); m["a"] != int32(1) || m["created"] != true || m["n"] != int32(2) {
		t.Fatalf("upserted: %v", m)
	}
	// Second time: matches; $setOnInsert ignored.
	ur, err = c.UpdateOne(testCtx, bson.D{{Key: "_id", Value: 7}},
		bson.D{{Key: "$set", Value: bson.D{{Key: "a", Value: 2}}}, {Key: "$setOnInsert", Value: bson.D{{Key: "created", Value: false}}}},
		options.UpdateOne().SetUpsert(true))
	if err != nil || ur.UpsertedCount != 0 || ur.MatchedCount != 1 || ur.ModifiedCount != 1 {
		t.Fatalf("upsert match: %+v %v", ur, err)
	}
	if m := findOne(t, c, bson.D{{Key: "_id", Value: 7}}); m["created"] != true {
		t.Fatalf("$setOnInsert applied on match: %v", m)
	}
	// Upsert by another filter copies the equality fields.
	ur, err = c.UpdateOne(testCtx, bson.D{{Key: "email", Value: "x@y"}, {Key: "age", Value: bson.D{{Key: "$gt", Value: 3}}}, {Key: "kind", Value: bson.D{{Key: "$eq", Value: "user"}}}},
		bson.D{{Key: "$set", Value: bson.D{{Key: "name", Value: "X"}}}}, options.UpdateOne().SetUpsert(true))
	if err != nil || ur.UpsertedCount != 1 {
		t.Fatalf("upsert by filter: %+v %v", ur, err)
	}
	oid, ok := ur.UpsertedID.(bson.ObjectID)
	if !ok {
		t.Fatalf("upserted id %T", ur.UpsertedID)
	}
	m := findOne(t, c, bson.D{{Key: "_id", Value: oid}})
	if m["email"] != "x@y" || m["kind"] != "user" || m["name"] != "X" || m["age"] != nil {
		t.Fatalf("seeded upsert: %v", m)
	}
	// updateMany with upsert and several statements in one command.
	r, err := c.Database().RunCommand(testCtx, bson.D{{Key: "update", Value: "c"}, {Key: "updates", Value: bson.A{
		bson.D{{Key: "q", Value: bson.D{{Key: "_id", Value: 100}}}, {Key: "u", Value: bson.D{{Key: "$set", Value: bson.D{{Key: "v", Value: 1}}}}}, {Key: "upsert", Value: true}},
		bson.D{{Key: "q", Value: bson.D{{Key: "_id", Value: 7}}}, {Key: "u", Value: bson.D{{Key: "$set", Value: bson.D{{Key: "v", Value: 1}}}}}},
		bson.D{{Key: "q", Value: bson.D{{Key: "_id", Value: 101}}}, {Key: "u", Value: bson.D{{Key: "$set", Value: bson.D{{Key: "v", Value: 1}}}}}, {Key: "upsert", Value: true}},
	}}}).Raw()
	if err != nil {
		t.Fatal(err)
	}
	if r.Lookup("n").AsInt64() != 3 || r.Lookup("nModified").AsInt64() != 1 {
		t.Fatalf("multi-statement update reply: %v", r)
	}
	ups, _ := r.Lookup("upserted").Array().Values()
	if len(ups) != 2 || bson.Raw(ups[0].Value).Lookup("index").AsInt64() != 0 || bson.Raw(ups[1].Value).Lookup("index").AsInt64() != 2 {
		t.Fatalf("upserted: %v", r)
	}
}

func TestFindAndModify(t *testing.T) {
	tp := newProxy(t, 0, "n1")
	c := tp.client.Database(freshDB("fam")).Collection("c")
	for i := 1; i <= 3; i++ {
		if _, err := c.InsertOne(testCtx, bson.D{{Key: "_id", Value: i}, {Key: "rank", Value: i}, {Key: "q", Value: "x"}, {Key: "n", Value: 0}}); err != nil {
			t.Fatal(err)
		}
	}
	var got bson.M
	// Sorted, returning the new document, projected.
	err := c.FindOneAndUpdate(testCtx, bson.D{{Key: "q", Value: "x"}}, bson.D{{Key: "$inc", Value: bson.D{{Key: "n", Value: 1}}}},
		options.FindOneAndUpdate().SetSort(bson.D{{Key: "rank", Value: -1}}).SetReturnDocument(options.After).SetProjection(bson.D{{Key: "n", Value: 1}})).Decode(&got)
	if err != nil || got["_id"] != int32(3) || got["n"] != int32(1) || len(got) != 2 {
		t.Fatalf("findOneAndUpdate after: %v %v", got, err)
	}
	// Returning the old document.
	got = nil
	err = c.FindOneAndUpdate(testCtx, bson.D{{Key: "_id", Value: 1}}, bson.D{{Key: "$set", Value: bson.D{{Key: "q", Value: "y"}}}}).Decode(&got)
	if err != nil || got["q"] != "x" {
		t.Fatalf("findOneAndUpdate before: %v %v", got, err)
	}
	// Upsert, new.
	got = nil
	err = c.FindOneAndUpdate(testCtx, bson.D{{Key: "_id", Value: 9}}, bson.D{{Key: "$set", Value: bson.D{{Key: "a", Value: 1}}}},
		options.FindOneAndUpdate().SetUpsert(true).SetReturnDocument(options.After)).Decode(&got)
	if err != nil || got["a"] != int32(1) {
		t.Fatalf("findOneAndUpdate upsert: %v %v", got, err)
	}
	// Upsert, old: no document.
	err = c.FindOneAndUpdate(testCtx, bson.D{{Key: "_id", Value: 10}}, bson.D{{Key: "$set", Value: bson.D{{Key: "a", Value: 1}}}},
		options.FindOneAndUpdate().SetUpsert(true)).Err()
	if !errors.Is(err, mongo.ErrNoDocuments) {
		t.Fatalf("findOneAndUpdate upsert old: %v", err)
	}
	// Raw reply fields, as MongoDB has them.
	r, err := c.Database().RunCommand(testCtx, bson.D{{Key: "findAndModify", Value: "c"}, {Key: "query", Value: bson.D{{Key: "_id", Value: 11}}},
		{Key: "update", Value: bson.D{{Key: "$set", Value: bson.D{{Key: "a", Value: 1}}}}}, {Key: "upsert", Value: true}, {Key: "new", Value: true}}).Raw()
	if err != nil {
		t.Fatal(err)
	}
	leo := r.Lookup("lastErrorObject").Document()
	if leo.Lookup("n").AsInt64() != 1 || leo.Lookup("updatedExisting").Boolean() || leo.Lookup("upserted").AsInt64() != 11 {
		t.Fatalf("lastErrorObject: %v", r)
	}
	mustNoMeta(t, r)
	// Remove.
	got = nil
	err = c.FindOneAndDelete(testCtx, bson.D{{Key: "q", Value: "x"}}, options.FindOneAndDelete().SetSort(bson.D{{Key: "rank", Value: 1}})).Decode(&got)
	if err != nil || got["_id"] != int32(2) {
		t.Fatalf("findOneAndDelete: %v %v", got, err)
	}
	if n, _ := c.CountDocuments(testCtx, bson.D{{Key: "_id", Value: 2}}); n != 0 {
		t.Fatal("not deleted")
	}
	err = c.FindOneAndDelete(testCtx, bson.D{{Key: "_id", Value: 2}}).Err()
	if !errors.Is(err, mongo.ErrNoDocuments) {
		t.Fatalf("findOneAndDelete missing: %v", err)
	}
	// Replacement is refused.
	err = c.FindOneAndReplace(testCtx, bson.D{{Key: "_id", Value: 1}}, bson.D{{Key: "z", Value: 1}}).Err()
	if err == nil || !strings.Contains(err.Error(), "replacement") {
		t.Fatalf("findOneAndReplace: %v", err)
	}
}

// TestRefused: what does not converge is refused on replicated
// collections with MongoDB's errors, and allowed on local-only ones. Long
// on purpose: one table of refusals.
func TestRefused(t *testing.T) {
	tp := newProxy(t, 0, "n1", func(o *Options) { o.LocalOnly = []string{"*.local"} })
	dbName := freshDB("ref")
	c := tp.client.Database(dbName).Collection("c")
	if _, err := c.InsertOne(testCtx, bson.D{{Key: "_id", Value: 1}, {Key: "arr", Value: bson.A{1, 2}}, {Key: "n", Value: 1}}); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		u    any
		want string
	}{
		{"$push", bson.D{{Key: "$push", Value: bson.D{{Key: "arr", Value: 3}}}}, "$push"},
		{"$pull", bson.D{{Key: "$pull", Value: bson.D{{Key: "arr", Value: 1}}}}, "$pull"},
		{"$pop", bson.D{{Key: "$pop", Value: bson.D{{Key: "arr", Value: 1}}}}, "$pop"},
		{"$pullAll", bson.D{{Key: "$pullAll", Value: bson.D{{Key: "arr", Value: bson.A{1}}}}}, "$pullAll"},
		{"$rename", bson.D{{Key: "$rename", Value: bson.D{{Key: "n", Value: "m"}}}}, "$rename"},
		{"$bit", bson.D{{Key: "$bit", Value: bson.D{{Key: "n", Value: bson.D{{Key: "and", Value: 1}}}}}}, "$bit"},
		{"$mul", bson.D{{Key: "$mul", Value: bson.D{{Key: "n", Value: 2}}}}, "$mul"},
		{"pipeline", bson.A{bson.D{{Key: "$set", Value: bson.D{{Key: "n", Value: 2}}}}}, "pipeline"},
		{"positional", bson.D{{Key: "$set", Value: bson.D{{Key: "arr.$", Value: 2}}}}, "positional"},
		{"all positional", bson.D{{Key: "$inc", Value: bson.D{{Key: "arr.$[]", Value: 2}}}}, "positional"},
		{"array path", bson.D{{Key: "$set", Value: bson.D{{Key: "arr.0", Value: 2}}}}, "array"},
		{"hidden field", bson.D{{Key: "$set", Value: bson.D{{Key: crdt.MetaField + ".v", Value: 2}}}}, "reserved"},
	}
	for _, tc := range cases {
		_, err := c.UpdateOne(testCtx, bson.D{{Key: "_id", Value: 1}}, tc.u)
		var we mongo.WriteException
		if !errors.As(err, &we) || !strings.Contains(we.Error(), tc.want) {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if tc.name != "hidden field" && !strings.Contains(we.Error(), "mongo.local_only") {
			t.Errorf("%s: message does not name the escape hatch: %v", tc.name, err)
		}
		if code := we.WriteErrors[0].Code; code != 2 {
			t.Errorf("%s: code %d", tc.name, code)
		}
	}
	_, err := c.ReplaceOne(testCtx, bson.D{{Key: "_id", Value: 1}}, bson.D{{Key: "x", Value: 1}})
	if err == nil || !strings.Contains(err.Error(), "replacement") {
		t.Errorf("replaceOne: %v", err)
	}
	_, err = c.UpdateOne(testCtx, bson.D{{Key: "_id", Value: 1}}, bson.D{{Key: "$set", Value: bson.D{{Key: "arr.$[e]", Value: 1}}}},
		options.UpdateOne().SetArrayFilters([]any{bson.D{{Key: "e", Value: 1}}}))
	if err == nil || !strings.Contains(err.Error(), "arrayFilters") && !strings.Contains(err.Error(), "positional") {
		t.Errorf("arrayFilters: %v", err)
	}
	_, err = c.InsertOne(testCtx, bson.D{{Key: "a", Value: bson.D{{Key: crdt.MetaField, Value: 1}}}})
	if err == nil || !strings.Contains(err.Error(), "reserved") {
		t.Errorf("insert naming the hidden field: %v", err)
	}
	// Transactions.
	err = c.Database().RunCommand(testCtx, bson.D{{Key: "insert", Value: "c"}, {Key: "documents", Value: bson.A{bson.D{{Key: "x", Value: 1}}}},
		{Key: "lsid", Value: bson.D{{Key: "id", Value: bson.Binary{Subtype: 4, Data: make([]byte, 16)}}}}, {Key: "txnNumber", Value: int64(1)},
		{Key: "startTransaction", Value: true}, {Key: "autocommit", Value: false}}).Err()
	if err == nil || !strings.Contains(err.Error(), "transaction") {
		t.Errorf("transaction: %v", err)
	}
	// $out into a replicated collection.
	_, err = c.Aggregate(testCtx, bson.A{bson.D{{Key: "$out", Value: "other"}}})
	if err == nil || !strings.Contains(err.Error(), "$out") {
		t.Errorf("$out: %v", err)
	}
	// The proxy's own database is not writable by clients.
	_, err = tp.client.Database(metaDB).Collection("tombstones").InsertOne(testCtx, bson.D{{Key: "x", Value: 1}})
	if err == nil {
		t.Error("write to edgenode_meta accepted")
	}
	// A local-only collection accepts everything (forwarded untouched).
	lc := tp.client.Database(dbName).Collection("local")
	if _, err := lc.InsertOne(testCtx, bson.D{{Key: "_id", Value: 1}, {Key: "arr", Value: bson.A{1}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := lc.UpdateOne(testCtx, bson.D{{Key: "_id", Value: 1}}, bson.D{{Key: "$push", Value: bson.D{{Key: "arr", Value: 2}}}}); err != nil {
		t.Fatalf("$push on local-only: %v", err)
	}
	raw, _ := tp.direct.Database(dbName).Collection("local").FindOne(testCtx, bson.D{}).Raw()
	if _, err := raw.LookupErr(crdt.MetaField); err == nil {
		t.Fatal("local-only document got metadata")
	}
	// And nothing above changed the replicated document.
	if m := findOne(t, c, bson.D{{Key: "_id", Value: 1}}); m["n"] != int32(1) {
		t.Fatalf("document changed by a refused write: %v", m)
	}
}

func TestCursorsAndHiddenField(t *testing.T) {
	tp := newProxy(t, 0, "n1")
	c := tp.client.Database(freshDB("cur")).Collection("c")
	var docs []any
	for i := 0; i < 57; i++ {
		docs = append(docs, bson.D{{Key: "_id", Value: i}, {Key: "i", Value: i}, {Key: "sub", Value: bson.D{{Key: "k", Value: i % 3}}}})
	}
	if _, err := c.InsertMany(testCtx, docs); err != nil {
		t.Fatal(err)
	}
	if _, err := c.UpdateMany(testCtx, bson.D{{Key: "i", Value: bson.D{{Key: "$lt", Value: 10}}}}, bson.D{{Key: "$inc", Value: bson.D{{Key: "i", Value: 1000}}}}); err != nil {
		t.Fatal(err)
	}
	cur, err := c.Find(testCtx, bson.D{}, options.Find().SetBatchSize(4).SetSort(bson.D{{Key: "_id", Value: 1}}))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for cur.Next(testCtx) {
		mustNoMeta(t, cur.Current)
		n++
	}
	if cur.Err() != nil || n != 57 {
		t.Fatalf("find+getMore: %d %v", n, cur.Err())
	}
	// Aggregate, including $$ROOT copies and a getMore.
	agg, err := c.Aggregate(testCtx, bson.A{bson.D{{Key: "$project", Value: bson.D{{Key: "copy", Value: "$$ROOT"}}}}}, options.Aggregate().SetBatchSize(5))
	if err != nil {
		t.Fatal(err)
	}
	n = 0
	for agg.Next(testCtx) {
		mustNoMeta(t, agg.Current)
		n++
	}
	if agg.Err() != nil || n != 57 {
		t.Fatalf("aggregate: %d %v", n, agg.Err())
	}
	// Projection excluding another field still hides it; a filter on it finds nothing visible.
	raw, err := c.FindOne(testCtx, bson.D{{Key: "_id", Value: 3}}, options.FindOne().SetProjection(bson.D{{Key: "sub", Value: 0}})).Raw()
	if err != nil {
		t.Fatal(err)
	}
	mustNoMeta(t, raw)
	// listDatabases does not show the proxy's database.
	names, err := tp.client.ListDatabaseNames(testCtx, bson.D{})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if n == metaDB {
			t.Fatalf("listDatabases shows %s", metaDB)
		}
	}
	directNames, _ := tp.direct.ListDatabaseNames(testCtx, bson.D{})
	found := false
	for _, n := range directNames {
		found = found || n == metaDB
	}
	if !found {
		t.Log("note: the metadata database is not listed directly either")
	}
}

func TestAuthGate(t *testing.T) {
	for _, tc := range []struct {
		cmd   string
		reply bson.D
		want  bool
	}{
		{"saslcontinue", bson.D{{Key: "done", Value: true}, {Key: "ok", Value: 1.0}}, true},
		{"saslstart", bson.D{{Key: "done", Value: false}, {Key: "ok", Value: 1.0}}, false},
		{"saslcontinue", bson.D{{Key: "done", Value: true}, {Key: "ok", Value: 0.0}}, false},
		{"authenticate", bson.D{{Key: "ok", Value: 1.0}}, true},
		{"hello", bson.D{{Key: "ok", Value: 1.0}}, false},
		{"hello", bson.D{{Key: "speculativeAuthenticate", Value: bson.D{{Key: "done", Value: true}}}, {Key: "ok", Value: 1.0}}, true},
		{"ismaster", bson.D{{Key: "speculativeAuthenticate", Value: bson.D{{Key: "done", Value: false}}}, {Key: "ok", Value: 1.0}}, false},
		{"hello", bson.D{{Key: "speculativeAuthenticate", Value: bson.D{{Key: "dbname", Value: "$external"}, {Key: "user", Value: "CN=x"}}}, {Key: "ok", Value: 1.0}}, true},
	} {
		if got := authSucceeded(tc.cmd, rawDoc(t, tc.reply)); got != tc.want {
			t.Errorf("%s %v: %v", tc.cmd, tc.reply, got)
		}
	}
	// The gate itself is played against a database that enforces
	// authentication in auth_test.go (TestFakedAuthenticationIsRefused,
	// TestRealAuthentication).
}
