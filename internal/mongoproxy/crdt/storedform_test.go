package crdt_test

import (
	"math/rand/v2"
	"testing"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/x/bsonx/bsoncore"

	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
	"github.com/edgenode/edgenode/internal/mongoproxy/crdt/crdttest"
)

// storedForm is how a test replica stores a document between two ops.
type storedForm int

const (
	formOld   storedForm = iota // every value copied into the metadata (Encode), as nodes did before
	formNew                     // values left in the document (EncodeWith)
	formMixed                   // each write picks one at random: old documents migrating on write
)

// formReplica stores each document the way the replica core does: the document bytes with the
// encoded metadata appended under MetaField, or (deleted) the metadata alone, and reads them back
// before every op.
type formReplica struct {
	form   storedForm
	rng    *rand.Rand
	stored map[crdttest.DocKey]bson.Raw // document with MetaField, or metadata alone (tombstone)
	live   map[crdttest.DocKey]bool
	saved  int // bytes the new form saved over the old one, summed over writes
}

func (r *formReplica) load(t *testing.T, k crdttest.DocKey) crdt.State {
	t.Helper()
	raw, ok := r.stored[k]
	if !ok {
		return crdt.State{}
	}
	if !r.live[k] {
		m, err := crdt.DecodeMeta(bson.RawValue{Type: bson.TypeEmbeddedDocument, Value: raw})
		if err != nil {
			t.Fatalf("DecodeMeta(tombstone): %v", err)
		}
		return crdt.State{Meta: m}
	}
	m, err := crdt.DecodeMetaWith(raw.Lookup(crdt.MetaField), raw)
	if err != nil {
		t.Fatalf("DecodeMetaWith: %v\n%v", err, raw)
	}
	var d bson.D
	if err := bson.Unmarshal(raw, &d); err != nil {
		t.Fatal(err)
	}
	return crdt.State{Doc: d[:len(d)-1], Meta: m}
}

func (r *formReplica) save(t *testing.T, k crdttest.DocKey, st crdt.State) {
	t.Helper()
	if st.Doc == nil {
		r.stored[k], r.live[k] = st.Meta.Encode(), false
		return
	}
	doc := docRaw(t, st.Doc)
	form := r.form
	if form == formMixed {
		form = storedForm(r.rng.IntN(2))
	}
	full, short := st.Meta.Encode(), st.Meta.EncodeWith(doc)
	if len(short) > len(full) {
		t.Fatalf("EncodeWith (%d bytes) is larger than Encode (%d bytes)", len(short), len(full))
	}
	r.saved += len(full) - len(short)
	m := full
	if form == formNew {
		m = short
	}
	b := doc[:len(doc)-1]
	b = bsoncore.AppendDocumentElement(b, crdt.MetaField, m)
	b = append(b, 0)
	bsoncore.UpdateLength(b, 0, int32(len(b)))
	r.stored[k], r.live[k] = b, true
}

// TestStoredFormsAgree: replicas that store every document in the old form (values copied into
// the metadata), in the new form (values left in the document), or switch at random on every
// write (documents written by an older node, migrated by the next write) end with byte-identical
// documents and equal metadata, equal to the sequential reference, for random histories
// delivered in random orders with duplicates.
func TestStoredFormsAgree(t *testing.T) {
	n := *cases / 2
	if testing.Short() {
		n /= 10
	}
	master := rand.New(rand.NewPCG(20260101, 3))
	saved := 0
	for c := 0; c < n; c++ {
		caseSeed := master.Uint64()
		rng := rand.New(rand.NewPCG(caseSeed, 4))
		ops := crdttest.RandomHistory(rng, 3, 5+rng.IntN(60))
		want := crdttest.ReferenceAll(ops)
		deliveries := crdttest.Deliveries(rng, ops, 0.3)
		var reps []*formReplica
		for _, f := range []storedForm{formOld, formNew, formMixed} {
			r := &formReplica{form: f, rng: rand.New(rand.NewPCG(caseSeed, uint64(f))), stored: map[crdttest.DocKey]bson.Raw{}, live: map[crdttest.DocKey]bool{}}
			reps = append(reps, r)
			for _, op := range deliveries {
				k := crdttest.KeyOf(op)
				st := r.load(t, k)
				next, changed, err := crdt.Apply(st, op)
				if err != nil {
					t.Fatalf("case %d (seed %d): Apply: %v", c, caseSeed, err)
				}
				if changed {
					r.save(t, k, next)
				}
			}
			saved += r.saved
		}
		for k, w := range want {
			var meta0 *crdt.Meta
			for i, r := range reps {
				st := r.load(t, k)
				got := docRaw(t, st.Doc)
				if !crdttest.Equal(got, w) {
					t.Fatalf("case %d (seed %d), doc %v: form %d has\n  %v\nreference\n  %v", c, caseSeed, k, i, got, w)
				}
				if i == 0 {
					meta0 = st.Meta
				} else if !st.Meta.Equal(meta0) {
					t.Fatalf("case %d (seed %d), doc %v: form %d metadata differs from the old form's", c, caseSeed, k, i)
				}
			}
		}
	}
	if saved == 0 {
		t.Fatal("the new form never saved a byte")
	}
}

// TestEncodeWithRefusesChangedDocument: metadata that left a value in its document cannot be read
// with a document that no longer holds that path (changed behind the proxy's back), nor without
// one.
func TestEncodeWithRefusesChangedDocument(t *testing.T) {
	id := bson.RawValue{Type: bson.TypeString, Value: bsoncore.AppendString(nil, "x")}
	op := &crdt.Op{Origin: "n1", Seq: 1, TS: crdt.Timestamp{Wall: 1, Node: "n1"}, NS: "db.c", ID: id, Kind: crdt.Insert,
		Doc: docRaw(t, bson.D{{Key: "_id", Value: "x"}, {Key: "a", Value: bson.D{{Key: "b", Value: "a long string value"}}}})}
	st, _, err := crdt.Apply(crdt.State{}, op)
	if err != nil {
		t.Fatal(err)
	}
	doc := docRaw(t, st.Doc)
	short := st.Meta.EncodeWith(doc)
	if len(short) >= len(st.Meta.Encode()) {
		t.Fatalf("EncodeWith did not leave the value in the document: %d >= %d bytes", len(short), len(st.Meta.Encode()))
	}
	rv := bson.RawValue{Type: bson.TypeEmbeddedDocument, Value: short}
	if m, err := crdt.DecodeMetaWith(rv, doc); err != nil || !m.Equal(st.Meta) {
		t.Fatalf("DecodeMetaWith(own document) = %v, %v", m, err)
	}
	if _, err := crdt.DecodeMeta(rv); err == nil {
		t.Fatal("DecodeMeta without the document accepted metadata that keeps values in it")
	}
	changed := docRaw(t, bson.D{{Key: "_id", Value: "x"}, {Key: "b", Value: 1}})
	if _, err := crdt.DecodeMetaWith(rv, changed); err == nil {
		t.Fatal("DecodeMetaWith accepted a document that lost the value")
	}
}
