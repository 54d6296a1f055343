// Package crdttest holds the sequential reference model of crdt's semantics and a generator of
// random operation histories, for crdt's property test and the proxy's end-to-end convergence test.
package crdttest

import (
	"bytes"
	"cmp"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/x/bsonx/bsoncore"

	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
)

// DocKey identifies a document: namespace and the _id's BSON type and bytes.
type DocKey struct {
	NS string
	ID string // string(type byte) + value bytes
}

// KeyOf returns the document an op targets.
func KeyOf(op *crdt.Op) DocKey {
	return DocKey{NS: op.NS, ID: string(append([]byte{byte(op.ID.Type)}, op.ID.Value...))}
}

// IDValue returns the _id of k.
func (k DocKey) IDValue() bson.RawValue {
	return bson.RawValue{Type: bson.Type(k.ID[0]), Value: []byte(k.ID[1:])}
}

// Group splits ops by document, keeping their order.
func Group(ops []*crdt.Op) map[DocKey][]*crdt.Op {
	out := map[DocKey][]*crdt.Op{}
	for _, op := range ops {
		k := KeyOf(op)
		out[k] = append(out[k], op)
	}
	return out
}

// Reference is the semantics, stated sequentially, for ops that all target one document:
//
//  1. keep one copy of each distinct op (by Origin and Seq);
//  2. drop every field operation that is overwritten: some op with a larger TS deletes the document,
//     or $sets/$unsets (or inserts, for a top-level field) the same path or a prefix of it;
//  3. replay what is left in ascending TS order (crdt.Replay): within one op, an insert's fields in
//     document order, an update's in path order.
//
// It panics on invalid ops (it is a test helper). Meta is nil: the reference model has none.
func Reference(ops []*crdt.Op) crdt.State {
	raw := ReferenceRaw(ops)
	if raw == nil {
		return crdt.State{}
	}
	var d bson.D
	if err := bson.Unmarshal(raw, &d); err != nil {
		panic(err)
	}
	return crdt.State{Doc: d}
}

// ReferenceRaw is Reference returning the encoded document (nil if it does not exist). As the
// reference the property tests compare the merge against, it is written as one straight
// replay of the rules, deliberately unlike crdt.Apply's structure; splitting it would make it
// read like the code it checks.
func ReferenceRaw(ops []*crdt.Op) bson.Raw {
	if len(ops) == 0 {
		return nil
	}
	type key struct {
		origin string
		seq    uint64
	}
	seen := map[key]bool{}
	var distinct []*crdt.Op
	for _, op := range ops {
		if KeyOf(op) != KeyOf(ops[0]) {
			panic("crdttest.Reference: ops target more than one document")
		}
		k := key{op.Origin, op.Seq}
		if seen[k] {
			continue
		}
		seen[k] = true
		distinct = append(distinct, op)
	}
	slices.SortFunc(distinct, func(a, b *crdt.Op) int { return a.TS.Compare(b.TS) })

	type assignment struct {
		path string
		ts   crdt.Timestamp
	}
	var assigns []assignment
	var lastDelete crdt.Timestamp
	for _, op := range distinct {
		switch op.Kind {
		case crdt.Delete:
			lastDelete = op.TS
		case crdt.Insert:
			forEach(op.Doc, func(k string, _ bsoncore.Value) {
				if k != "_id" {
					assigns = append(assigns, assignment{k, op.TS})
				}
			})
		case crdt.Update:
			forEach(op.Update, func(name string, operand bsoncore.Value) {
				if name == "$set" || name == "$unset" {
					forEach(operand.Data, func(p string, _ bsoncore.Value) { assigns = append(assigns, assignment{p, op.TS}) })
				}
			})
		}
	}
	overwritten := func(path string, ts crdt.Timestamp) bool {
		if ts.Compare(lastDelete) < 0 {
			return true
		}
		for _, a := range assigns {
			if a.ts.Compare(ts) > 0 && (a.path == path || strings.HasPrefix(path, a.path+".")) {
				return true
			}
		}
		return false
	}

	var kept []*crdt.Op
	for _, op := range distinct {
		f := *op
		switch op.Kind {
		case crdt.Insert:
			idx, b := bsoncore.AppendDocumentStart(nil)
			forEach(op.Doc, func(k string, v bsoncore.Value) {
				if k == "_id" || !overwritten(k, op.TS) {
					b = bsoncore.AppendValueElement(b, k, v)
				}
			})
			b, _ = bsoncore.AppendDocumentEnd(b, idx)
			f.Doc = b
		case crdt.Update:
			idx, b := bsoncore.AppendDocumentStart(nil)
			forEach(op.Update, func(name string, operand bsoncore.Value) {
				oi, ob := bsoncore.AppendDocumentStart(nil)
				n := 0
				forEach(operand.Data, func(p string, v bsoncore.Value) {
					if !overwritten(p, op.TS) {
						ob = bsoncore.AppendValueElement(ob, p, v)
						n++
					}
				})
				ob, _ = bsoncore.AppendDocumentEnd(ob, oi)
				if n > 0 {
					b = bsoncore.AppendDocumentElement(b, name, ob)
				}
			})
			b, _ = bsoncore.AppendDocumentEnd(b, idx)
			f.Update = b
		}
		kept = append(kept, &f)
	}
	out, err := crdt.Replay(ops[0].ID, kept)
	if err != nil {
		panic(fmt.Sprintf("crdttest.Reference: %v", err))
	}
	return out
}

func forEach(doc []byte, fn func(string, bsoncore.Value)) {
	elems, err := bsoncore.Document(doc).Elements()
	if err != nil {
		panic(err)
	}
	for _, e := range elems {
		fn(e.Key(), e.Value())
	}
}

// ReferenceAll applies Reference per document: the encoded documents that exist, by DocKey.
func ReferenceAll(ops []*crdt.Op) map[DocKey]bson.Raw {
	out := map[DocKey]bson.Raw{}
	for k, g := range Group(ops) {
		if r := ReferenceRaw(g); r != nil {
			out[k] = r
		}
	}
	return out
}

// Deliveries returns ops in a random order with random duplicates (each op appears once, and
// again with probability dupProb), as a replica might receive them.
func Deliveries(rng *rand.Rand, ops []*crdt.Op, dupProb float64) []*crdt.Op {
	out := slices.Clone(ops)
	for _, op := range ops {
		if rng.Float64() < dupProb {
			out = append(out, op)
		}
	}
	rng.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	return out
}

// Fixed vocabulary: few documents and fields, so that histories collide a lot.
var (
	namespaces = []string{"app.things", "app.other"}
	topFields  = []string{"a", "b", "n", "s", "t", "d"}
	allPaths   = []string{"a", "b", "n", "s", "t", "d", "d.x", "d.y", "d.z", "d.z.w", "n.q"}
)

func rawValue(v any) bson.RawValue {
	t, b, err := bson.MarshalValue(v)
	if err != nil {
		panic(err)
	}
	return bson.RawValue{Type: t, Value: b}
}

// IDs are the _ids RandomHistory uses.
var IDs = []bson.RawValue{
	rawValue(int32(1)),
	rawValue("doc-two"),
	rawValue(bson.ObjectID{0x65, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}),
}

func randScalar(rng *rand.Rand) any {
	switch rng.IntN(12) {
	case 0:
		return int32(rng.IntN(7) - 2)
	case 1:
		return int64(rng.IntN(7) - 2)
	case 2:
		return float64(rng.IntN(7)) / 2
	case 3:
		return []string{"x", "y", "z"}[rng.IntN(3)]
	case 4:
		return nil
	case 5:
		return rng.IntN(2) == 0
	case 6:
		return bson.D{{Key: "x", Value: int32(rng.IntN(3))}, {Key: "w", Value: "v"}}
	case 7:
		return bson.A{int32(rng.IntN(3)), "x"}
	case 8:
		return int32(2147483600 + rng.IntN(47)) // near int32 max: $inc overflows into int64
	case 9:
		return bson.DateTime(1700000000000 + int64(rng.IntN(3)))
	default:
		return int32(rng.IntN(5))
	}
}

func randNumber(rng *rand.Rand) any {
	switch rng.IntN(6) {
	case 0:
		return int64(rng.IntN(9) - 4)
	case 1:
		return float64(rng.IntN(9)-4) / 2
	case 2:
		return int32(2147483000)
	default:
		return int32(rng.IntN(9) - 4)
	}
}

// RandomHistory generates nOps ops from replicas origins ("r0", "r1", ...) on a handful of
// documents and fields: inserts, updates using every supported operator (dotted paths, $addToSet
// with and without $each, values of mixed types so some field operations cannot apply), deletes and
// re-creates. Each origin has its own HLC fed by a simulated wall clock that drifts and sometimes
// goes backwards, and observes some of the other origins' ops (as replication would), so timestamps
// look like real ones; Seq counts per origin from 1.
func RandomHistory(rng *rand.Rand, replicas, nOps int) []*crdt.Op {
	type origin struct {
		name  string
		wall  int64
		clock *crdt.Clock
		seq   uint64
	}
	origins := make([]*origin, replicas)
	for i := range origins {
		o := &origin{name: fmt.Sprintf("r%d", i), wall: 1_700_000_000_000 + int64(rng.IntN(50))}
		o.clock = crdt.NewClock(o.name, func() time.Time { return time.UnixMilli(o.wall) })
		origins[i] = o
	}
	ids := IDs[:1+rng.IntN(len(IDs))]
	var ops []*crdt.Op
	for len(ops) < nOps {
		o := origins[rng.IntN(len(origins))]
		switch r := rng.IntN(10); {
		case r < 6:
			o.wall += int64(rng.IntN(4))
		case r < 9:
			o.wall += int64(rng.IntN(40))
		default:
			o.wall -= int64(rng.IntN(30)) // the wall clock steps back
		}
		if len(ops) > 0 && rng.IntN(3) == 0 {
			o.clock.Observe(ops[rng.IntN(len(ops))].TS)
		}
		o.seq++
		op := &crdt.Op{
			Origin: o.name, Seq: o.seq, TS: o.clock.Now(),
			NS: namespaces[rng.IntN(len(namespaces))], ID: ids[rng.IntN(len(ids))],
		}
		switch r := rng.IntN(100); {
		case r < 12:
			op.Kind = crdt.Insert
			d := bson.D{{Key: "_id", Value: op.ID}}
			for _, f := range rng.Perm(len(topFields))[:rng.IntN(4)] {
				d = append(d, bson.E{Key: topFields[f], Value: randScalar(rng)})
			}
			op.Doc = mustMarshal(d)
		case r < 20:
			op.Kind = crdt.Delete
		default:
			op.Kind = crdt.Update
			op.Update = mustMarshal(randUpdate(rng))
		}
		if err := op.Validate(); err != nil {
			panic(fmt.Sprintf("crdttest: generated an invalid op: %v", err))
		}
		ops = append(ops, op)
	}
	return ops
}

func randUpdate(rng *rand.Rand) bson.D {
	byOp := map[string]bson.D{}
	var chosen []string
	for range 1 + rng.IntN(3) {
		p := allPaths[rng.IntN(len(allPaths))]
		if slices.ContainsFunc(chosen, func(c string) bool {
			return c == p || strings.HasPrefix(p, c+".") || strings.HasPrefix(c, p+".")
		}) {
			continue
		}
		chosen = append(chosen, p)
		var name string
		var v any
		switch rng.IntN(7) {
		case 0, 1:
			name, v = "$set", randScalar(rng)
		case 2:
			name, v = "$unset", ""
		case 3:
			name, v = "$inc", randNumber(rng)
		case 4:
			name = "$min"
			v = randNumber(rng)
			if rng.IntN(5) == 0 {
				v = randScalar(rng)
			}
		case 5:
			name = "$max"
			v = randNumber(rng)
			if rng.IntN(5) == 0 {
				v = randScalar(rng)
			}
		default:
			name = "$addToSet"
			if rng.IntN(2) == 0 {
				v = int32(rng.IntN(4))
			} else {
				each := bson.A{}
				for range rng.IntN(4) {
					if rng.IntN(4) == 0 {
						each = append(each, float64(rng.IntN(4))) // 2.0 equals 2
					} else {
						each = append(each, int32(rng.IntN(4)))
					}
				}
				v = bson.D{{Key: "$each", Value: each}}
			}
		}
		byOp[name] = append(byOp[name], bson.E{Key: p, Value: v})
	}
	var u bson.D
	for _, name := range []string{"$set", "$unset", "$inc", "$min", "$max", "$addToSet"} {
		if fields, ok := byOp[name]; ok {
			u = append(u, bson.E{Key: name, Value: fields})
		}
	}
	return u
}

func mustMarshal(d bson.D) bson.Raw {
	b, err := bson.Marshal(d)
	if err != nil {
		panic(err)
	}
	return b
}

// Equal compares two encoded documents byte for byte (nil means absent).
func Equal(a, b bson.Raw) bool { return (a == nil) == (b == nil) && bytes.Equal(a, b) }

// SortedKeys returns m's keys in a fixed order, for deterministic test iteration.
func SortedKeys[V any](m map[DocKey]V) []DocKey {
	keys := make([]DocKey, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b DocKey) int {
		if c := cmp.Compare(a.NS, b.NS); c != 0 {
			return c
		}
		return cmp.Compare(a.ID, b.ID)
	})
	return keys
}
