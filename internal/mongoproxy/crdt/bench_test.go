package crdt_test

import (
	"math/rand/v2"
	"testing"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
)

// BenchmarkApply measures one Apply the way the proxy runs it: decode the stored metadata, apply,
// encode the metadata back, on a document with a few fields and a little history.
func BenchmarkApply(b *testing.B) {
	for _, bc := range []struct {
		name    string
		pending int // commutative ops retained (no Compact yet)
	}{{"fresh", 0}, {"pending10", 10}, {"pending100", 100}} {
		b.Run(bc.name, func(b *testing.B) {
			clock := crdt.NewClock("n1", nil)
			mk := func(u bson.D) *crdt.Op {
				return &crdt.Op{Origin: "n1", TS: clock.Now(), NS: "db.c", ID: testID, Kind: crdt.Update, Update: mustRaw(b, u)}
			}
			st, _, err := crdt.Apply(crdt.State{}, &crdt.Op{Origin: "n1", TS: clock.Now(), NS: "db.c", ID: testID, Kind: crdt.Insert,
				Doc: mustRaw(b, D{{Key: "_id", Value: testID}, {Key: "name", Value: "some name"}, {Key: "email", Value: "a@example.com"},
					{Key: "profile", Value: D{{Key: "age", Value: int32(40)}, {Key: "city", Value: "Paris"}}}, {Key: "visits", Value: int32(0)}})})
			if err != nil {
				b.Fatal(err)
			}
			for range bc.pending {
				st, _, _ = crdt.Apply(st, mk(D{{Key: "$inc", Value: D{{Key: "visits", Value: int32(1)}}}}))
			}
			rng := rand.New(rand.NewPCG(1, 2))
			ops := make([]*crdt.Op, 256)
			for i := range ops {
				ops[i] = mk(D{{Key: "$set", Value: D{{Key: "profile.city", Value: []string{"Paris", "Oslo", "Lima"}[rng.IntN(3)]}}},
					{Key: "$inc", Value: D{{Key: "visits", Value: int32(1)}}}})
			}
			meta := st.Meta.Encode()
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				m, err := crdt.DecodeMeta(bson.RawValue{Type: bson.TypeEmbeddedDocument, Value: meta})
				if err != nil {
					b.Fatal(err)
				}
				// Each iteration applies a fresh op to the same stored state, so the state does not grow.
				next, _, err := crdt.Apply(crdt.State{Meta: m}, ops[i%len(ops)])
				if err != nil {
					b.Fatal(err)
				}
				_ = next.Meta.Encode()
			}
		})
	}
}

func BenchmarkMaterialize(b *testing.B) {
	clock := crdt.NewClock("n1", nil)
	var st crdt.State
	for i := range 20 {
		st, _, _ = crdt.Apply(st, &crdt.Op{Origin: "n1", TS: clock.Now(), NS: "db.c", ID: testID, Kind: crdt.Update,
			Update: mustRaw(b, D{{Key: "$set", Value: D{{Key: "f" + string(rune('a'+i)), Value: "value"}}}})})
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := crdt.MaterializeRaw(testID, st.Meta); err != nil {
			b.Fatal(err)
		}
	}
}
