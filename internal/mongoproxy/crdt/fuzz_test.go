package crdt_test

import (
	"math/rand/v2"
	"testing"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
	"github.com/edgenode/edgenode/internal/mongoproxy/crdt/crdttest"
)

// fuzzBase is a state with some history, for fuzzed ops to land on.
func fuzzBase(f *testing.F) ([]*crdt.Op, crdt.State) {
	ops := crdttest.RandomHistory(rand.New(rand.NewPCG(7, 7)), 3, 40)
	var st crdt.State
	for _, op := range ops {
		if crdttest.KeyOf(op) != crdttest.KeyOf(ops[0]) {
			continue
		}
		var err error
		if st, _, err = crdt.Apply(st, op); err != nil {
			f.Fatal(err)
		}
	}
	return ops, st
}

// FuzzOp feeds arbitrary bytes (peers' wire and the op log are untrusted) through UnmarshalBSON,
// Validate and Apply: errors are fine, panics are not, and whatever is accepted must re-encode.
func FuzzOp(f *testing.F) {
	ops, st := fuzzBase(f)
	for _, op := range ops[:20] {
		b, err := op.MarshalBSON()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{5, 0, 0, 0, 0})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		var op crdt.Op
		if err := op.UnmarshalBSON(b); err != nil {
			return
		}
		if _, err := op.MarshalBSON(); err != nil && op.ID.Type != 0 {
			t.Fatalf("decoded op does not re-encode: %v", err)
		}
		verr := op.Validate()
		s := st
		if op.ID.Type != 0 {
			s = crdt.State{Meta: st.Meta} // land on the base history's metadata whatever the _id
		}
		next, _, err := crdt.Apply(s, &op)
		if (verr == nil) != (err == nil) {
			t.Fatalf("Validate=%v but Apply=%v", verr, err)
		}
		if err == nil {
			if _, err := crdt.DecodeMeta(bson.RawValue{Type: bson.TypeEmbeddedDocument, Value: next.Meta.Encode()}); err != nil {
				t.Fatalf("metadata after Apply does not decode: %v", err)
			}
			if next.Doc != nil {
				doc, err := bson.Marshal(next.Doc)
				if err != nil {
					t.Fatal(err)
				}
				m, err := crdt.DecodeMetaWith(bson.RawValue{Type: bson.TypeEmbeddedDocument, Value: next.Meta.EncodeWith(doc)}, doc)
				if err != nil || !m.Equal(next.Meta) {
					t.Fatalf("metadata stored with its document does not decode to itself: %v", err)
				}
			}
		}
	})
}

// FuzzDecodeMeta: the hidden field is read back from the database, where anything may have been
// written into it.
func FuzzDecodeMeta(f *testing.F) {
	ops, st := fuzzBase(f)
	// Values the metadata leaves in its document are looked up in the base history's document.
	doc, err := bson.Marshal(st.Doc)
	if err != nil {
		f.Fatal(err)
	}
	f.Add([]byte(st.Meta.Encode()))
	f.Add([]byte(st.Meta.EncodeWith(doc)))
	m2, _ := st.Meta.Compact(ops[len(ops)-1].TS)
	f.Add([]byte(m2.Encode()))
	f.Add([]byte{5, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := crdt.DecodeMetaWith(bson.RawValue{Type: bson.TypeEmbeddedDocument, Value: b}, doc)
		if err != nil {
			return
		}
		m2, err := crdt.DecodeMeta(bson.RawValue{Type: bson.TypeEmbeddedDocument, Value: m.Encode()})
		if err != nil || !m2.Equal(m) {
			t.Fatalf("re-encoded metadata: %v", err)
		}
		if _, err := crdt.MaterializeRaw(ops[0].ID, m); err != nil {
			t.Fatalf("Materialize: %v", err)
		}
		m.Compact(ops[len(ops)/2].TS)
		for _, op := range ops[:10] {
			if _, _, err := crdt.Apply(crdt.State{Meta: m}, op); err != nil {
				t.Fatalf("Apply on decoded metadata: %v", err)
			}
		}
	})
}
