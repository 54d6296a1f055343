package mongoproxy

import (
	"testing"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
	"github.com/edgenode/edgenode/internal/mongoproxy/wire"
)

// FuzzCommandParsing feeds arbitrary (valid BSON) documents from clients to
// the proxy's command parsers: update documents, filters, projections and
// insert documents. None may panic, and whatever parseUpdate accepts must
// produce an op the crdt package accepts.
func FuzzCommandParsing(f *testing.F) {
	for _, d := range []bson.D{
		{{Key: "$set", Value: bson.D{{Key: "a.b", Value: 1}}}, {Key: "$inc", Value: bson.D{{Key: "n", Value: int32(2)}}}},
		{{Key: "$setOnInsert", Value: bson.D{{Key: "_id", Value: 5}, {Key: "c", Value: "x"}}}, {Key: "$currentDate", Value: bson.D{{Key: "t", Value: bson.D{{Key: "$type", Value: "timestamp"}}}}}},
		{{Key: "$addToSet", Value: bson.D{{Key: "s", Value: bson.D{{Key: "$each", Value: bson.A{1, 2}}}}}}, {Key: "$unset", Value: bson.D{{Key: "z", Value: ""}}}},
		{{Key: "$push", Value: bson.D{{Key: "a", Value: 1}}}},
		{{Key: "_id", Value: 1}, {Key: "x", Value: bson.D{{Key: "$eq", Value: 3}}}, {Key: "$and", Value: bson.A{bson.D{{Key: "y", Value: 2}}}}},
		{{Key: "a", Value: 1}, {Key: "b.c", Value: 0}, {Key: "_id", Value: false}},
		{{Key: "_id", Value: bson.A{1}}, {Key: "$x", Value: 1}},
	} {
		b, err := bson.Marshal(d)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if wire.ValidateBSON(b) != nil {
			return
		}
		doc := bson.Raw(b)
		u := bson.RawValue{Type: bson.TypeEmbeddedDocument, Value: doc}
		if spec, e := parseUpdate("db.c", u); e == nil {
			ts := crdt.Timestamp{Wall: 1, Node: "n"}
			for _, inserting := range []bool{false, true} {
				seed, _ := upsertSeed(doc)
				raw, _, err := buildUpdate(spec, ts, inserting, seed)
				if err != nil {
					continue
				}
				op := &crdt.Op{Origin: "n", Seq: 1, TS: ts, NS: "db.c", ID: rawValue(1), Kind: crdt.Update, Update: raw}
				if inserting {
					continue // seeds from an arbitrary filter may conflict; Apply reports it as an error
				}
				if err := op.Validate(); err != nil {
					t.Fatalf("parseUpdate accepted %v but the op is invalid: %v", doc, err)
				}
			}
			var d bson.D
			if bson.Unmarshal(doc, &d) == nil {
				_ = checkApplicable(d, spec)
			}
		}
		upsertSeed(doc)
		idOnlyFilter(doc)
		if _, e := project(nil, doc); e == nil {
			var d bson.D
			if bson.Unmarshal(doc, &d) == nil {
				_, _ = project(d, doc)
			}
		}
		if d, _, e := prepareInsert(doc); e == nil {
			if err := wire.ValidateBSON(d); err != nil {
				t.Fatalf("prepareInsert produced invalid BSON: %v", err)
			}
		}
	})
}
