package mongoproxy

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"sync"
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
	// Under the limit as a document, over it with the metadata's copy.
	if _, err := c.InsertOne(testCtx, bson.D{{Key: "_id", Value: 2}, {Key: "blob", Value: strings.Repeat("y", limit*2/3)}}); !tooLarge(err) {
		t.Fatalf("insert too large with its metadata: %v", err)
	}
	if got := log.LastSeq(); got != before {
		t.Fatalf("refused writes were logged: last seq %d -> %d", before, got)
	}
	if _, err := c.InsertOne(testCtx, bson.D{{Key: "_id", Value: 3}, {Key: "blob", Value: strings.Repeat("z", limit/4)}}); err != nil {
		t.Fatal(err)
	}
	// Growing it past the limit is refused; it keeps what it had.
	if _, err := c.UpdateOne(testCtx, bson.D{{Key: "_id", Value: 3}}, bson.D{{Key: "$set", Value: bson.D{{Key: "more", Value: strings.Repeat("w", limit/3)}}}}); !tooLarge(err) {
		t.Fatalf("growing update: %v", err)
	}
	m := findOne(t, c, bson.D{{Key: "_id", Value: 3}})
	if m["more"] != nil || len(m["blob"].(string)) != limit/4 {
		t.Fatalf("document changed by a refused update: %d fields", len(m))
	}
	if n, _ := c.CountDocuments(testCtx, bson.D{}); n != 1 {
		t.Fatalf("%d documents, want 1", n)
	}
}
