package crdt_test

import (
	"flag"
	"math/rand/v2"
	"testing"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
	"github.com/edgenode/edgenode/internal/mongoproxy/crdt/crdttest"
)

var (
	cases = flag.Int("crdt.cases", 2000, "random histories for the convergence property test")
	seed  = flag.Uint64("crdt.seed", 0, "seed for the convergence property test (0: fixed default)")
)

// replica is one replica's store: states by document.
type replica struct {
	docs map[crdttest.DocKey]crdt.State
}

// deliver applies op the way the proxy does: decode the stored metadata, Apply, encode it again.
func (r *replica) deliver(t *testing.T, op *crdt.Op) {
	t.Helper()
	k := crdttest.KeyOf(op)
	st := r.docs[k]
	// Round trip through the stored encodings, as the proxy would read them back from MongoDB.
	m, err := crdt.DecodeMeta(bson.RawValue{Type: bson.TypeEmbeddedDocument, Value: st.Meta.Encode()})
	if err != nil {
		t.Fatalf("DecodeMeta: %v\n%x", err, []byte(st.Meta.Encode()))
	}
	if !m.Equal(st.Meta) || m.Version() != st.Meta.Version() {
		t.Fatalf("meta does not survive Encode/DecodeMeta")
	}
	st.Meta = m
	next, changed, err := crdt.Apply(st, op)
	if err != nil {
		t.Fatalf("Apply(%s %d/%d): %v", op.Kind, op.Seq, op.TS.Wall, err)
	}
	if !changed {
		if next.Meta.Version() != st.Meta.Version() || !next.Meta.Equal(st.Meta) {
			t.Fatalf("changed=false but the metadata changed")
		}
	} else if next.Meta.Version() != st.Meta.Version()+1 {
		t.Fatalf("version %d -> %d", st.Meta.Version(), next.Meta.Version())
	}
	r.docs[k] = next
}

func docRaw(t *testing.T, d bson.D) bson.Raw {
	t.Helper()
	if d == nil {
		return nil
	}
	b, err := bson.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestConvergence is the promise of the whole product: random histories on 3-5 replicas, every
// replica receives every op in its own random order with duplicates; all replicas end with
// byte-identical documents and equal data-bearing metadata, equal to the sequential reference.
// Half the cases also Compact at causally stable points while ops are still arriving (then only
// the documents are compared: compaction legitimately changes the metadata's shape).
func TestConvergence(t *testing.T) {
	n := *cases
	if testing.Short() {
		n /= 10
	}
	s := *seed
	if s == 0 {
		s = 20240611
	}
	master := rand.New(rand.NewPCG(s, 1))
	for c := 0; c < n; c++ {
		caseSeed := master.Uint64()
		rng := rand.New(rand.NewPCG(caseSeed, 2))
		nRep := 3 + rng.IntN(3)
		ops := crdttest.RandomHistory(rng, nRep, 5+rng.IntN(60))
		compact := c%2 == 1
		want := crdttest.ReferenceAll(ops)
		reps := make([]*replica, nRep)
		for i := range reps {
			r := &replica{docs: map[crdttest.DocKey]crdt.State{}}
			reps[i] = r
			deliveries := crdttest.Deliveries(rng, ops, 0.3)
			delivered := map[*crdt.Op]bool{}
			for j, op := range deliveries {
				r.deliver(t, op)
				delivered[op] = true
				if compact && rng.IntN(4) == 0 {
					r.compact(t, ops, delivered)
				}
				if t.Failed() {
					t.Fatalf("case %d (seed %d): replica %d delivery %d", c, caseSeed, i, j)
				}
			}
		}
		for _, k := range crdttest.SortedKeys(reps[0].docs) {
			for i, r := range reps {
				got := docRaw(t, r.docs[k].Doc)
				if !crdttest.Equal(got, want[k]) {
					t.Fatalf("case %d (seed %d), doc %v: replica %d has\n  %v\nreference\n  %v\nops:\n%s",
						c, caseSeed, k, i, got, want[k], dump(crdttest.Group(ops)[k]))
				}
				if !compact && !r.docs[k].Meta.Equal(reps[0].docs[k].Meta) {
					t.Fatalf("case %d (seed %d), doc %v: replica %d metadata differs from replica 0:\n%v\n%v",
						c, caseSeed, k, i, r.docs[k].Meta.Encode(), reps[0].docs[k].Meta.Encode())
				}
				// The document is a function of the metadata alone.
				mat, err := crdt.MaterializeRaw(k.IDValue(), r.docs[k].Meta)
				if err != nil || !crdttest.Equal(mat, got) {
					t.Fatalf("case %d: Materialize(meta) = %v, %v; document %v", c, mat, err, got)
				}
			}
		}
		// Idempotence: every op once more changes nothing.
		for _, op := range ops {
			k := crdttest.KeyOf(op)
			_, changed, err := crdt.Apply(reps[0].docs[k], op)
			if err != nil || changed {
				t.Fatalf("case %d (seed %d): re-applying %s %s/%d: changed=%v err=%v", c, caseSeed, op.Kind, op.Origin, op.Seq, changed, err)
			}
		}
	}
}

// compact folds at the newest clock below which this replica has every op: the causally stable
// point replication computes from the peers' positions.
func (r *replica) compact(t *testing.T, ops []*crdt.Op, delivered map[*crdt.Op]bool) {
	var minMissing, stable crdt.Timestamp
	missing := false
	for _, op := range ops {
		if !delivered[op] && (!missing || op.TS.Compare(minMissing) < 0) {
			minMissing, missing = op.TS, true
		}
	}
	for _, op := range ops {
		if delivered[op] && (!missing || op.TS.Compare(minMissing) < 0) && op.TS.Compare(stable) > 0 {
			stable = op.TS
		}
	}
	if stable.IsZero() {
		return
	}
	for k, st := range r.docs {
		m, changed := st.Meta.Compact(stable)
		if !changed {
			continue
		}
		if m.Version() != st.Meta.Version()+1 {
			t.Fatalf("Compact did not bump the version")
		}
		d, err := crdt.MaterializeRaw(k.IDValue(), m)
		if err != nil || !crdttest.Equal(d, docRaw(t, st.Doc)) {
			t.Fatalf("Compact(%v) changed the document:\n%v\n%v", stable, d, docRaw(t, st.Doc))
		}
		r.docs[k] = crdt.State{Doc: st.Doc, Meta: m}
	}
}

func dump(ops []*crdt.Op) string {
	s := ""
	for _, op := range ops {
		s += "  " + op.TS.String() + " " + op.Kind.String() + " "
		switch op.Kind {
		case crdt.Insert:
			s += op.Doc.String()
		case crdt.Update:
			s += op.Update.String()
		}
		s += "\n"
	}
	return s
}
