package crdt_test

import (
	"errors"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
	"github.com/edgenode/edgenode/internal/mongoproxy/crdt/crdttest"
)

var testID = rv(int32(7))

func rv(v any) bson.RawValue {
	t, b, err := bson.MarshalValue(v)
	if err != nil {
		panic(err)
	}
	return bson.RawValue{Type: t, Value: b}
}

func mustRaw(t testing.TB, d bson.D) bson.Raw {
	t.Helper()
	b, err := bson.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// ts makes a timestamp from node at wall ms.
func ts(node string, wall int64) crdt.Timestamp { return crdt.Timestamp{Wall: wall, Node: node} }

var seqs = map[string]uint64{}

func upd(t testing.TB, node string, wall int64, u bson.D) *crdt.Op {
	seqs[node]++
	return &crdt.Op{Origin: node, Seq: seqs[node], TS: ts(node, wall), NS: "db.c", ID: testID, Kind: crdt.Update, Update: mustRaw(t, u)}
}

func ins(t testing.TB, node string, wall int64, d bson.D) *crdt.Op {
	seqs[node]++
	d = append(bson.D{{Key: "_id", Value: testID}}, d...)
	return &crdt.Op{Origin: node, Seq: seqs[node], TS: ts(node, wall), NS: "db.c", ID: testID, Kind: crdt.Insert, Doc: mustRaw(t, d)}
}

func del(node string, wall int64) *crdt.Op {
	seqs[node]++
	return &crdt.Op{Origin: node, Seq: seqs[node], TS: ts(node, wall), NS: "db.c", ID: testID, Kind: crdt.Delete}
}

// applyAll applies ops in order and returns the final document (nil if absent).
func applyAll(t testing.TB, ops ...*crdt.Op) crdt.State {
	t.Helper()
	var st crdt.State
	for _, op := range ops {
		var err error
		if st, _, err = crdt.Apply(st, op); err != nil {
			t.Fatalf("Apply: %v", err)
		}
	}
	return st
}

// check applies ops in the given order and in reverse, and compares both and the reference with want.
func check(t *testing.T, want bson.D, ops ...*crdt.Op) {
	t.Helper()
	var wantRaw bson.Raw
	if want != nil {
		wantRaw = mustRaw(t, append(bson.D{{Key: "_id", Value: testID}}, want...))
	}
	rev := make([]*crdt.Op, len(ops))
	for i, op := range ops {
		rev[len(ops)-1-i] = op
	}
	for name, order := range map[string][]*crdt.Op{"forward": ops, "reverse": rev} {
		st := applyAll(t, order...)
		got := docRaw(t, st.Doc)
		if !crdttest.Equal(got, wantRaw) {
			t.Errorf("%s: got %v, want %v", name, got, wantRaw)
		}
	}
	if ref := crdttest.ReferenceRaw(ops); !crdttest.Equal(ref, wantRaw) {
		t.Errorf("reference: got %v, want %v", ref, wantRaw)
	}
}

type D = bson.D
type E = bson.E

func TestSetUnsetLastWriterWins(t *testing.T) {
	check(t, D{{Key: "a", Value: int32(2)}},
		upd(t, "x", 10, D{{Key: "$set", Value: D{{Key: "a", Value: int32(1)}}}}),
		upd(t, "y", 20, D{{Key: "$set", Value: D{{Key: "a", Value: int32(2)}}}}))
	// Same wall time: the node id breaks the tie.
	check(t, D{{Key: "a", Value: "from y"}},
		upd(t, "y", 10, D{{Key: "$set", Value: D{{Key: "a", Value: "from y"}}}}),
		upd(t, "x", 10, D{{Key: "$set", Value: D{{Key: "a", Value: "from x"}}}}))
	check(t, D{{Key: "b", Value: true}},
		upd(t, "x", 10, D{{Key: "$set", Value: D{{Key: "a", Value: int32(1)}, {Key: "b", Value: true}}}}),
		upd(t, "y", 20, D{{Key: "$unset", Value: D{{Key: "a", Value: ""}}}}))
	// An unset older than the set loses.
	check(t, D{{Key: "a", Value: int32(1)}},
		upd(t, "y", 5, D{{Key: "$unset", Value: D{{Key: "a", Value: ""}}}}),
		upd(t, "x", 10, D{{Key: "$set", Value: D{{Key: "a", Value: int32(1)}}}}))
}

func TestDottedPaths(t *testing.T) {
	// a.b and a.c merge; a newer $set of a overrides older writes below it.
	check(t, D{{Key: "a", Value: D{{Key: "b", Value: int32(1)}, {Key: "c", Value: int32(2)}}}},
		upd(t, "x", 10, D{{Key: "$set", Value: D{{Key: "a.b", Value: int32(1)}}}}),
		upd(t, "y", 11, D{{Key: "$set", Value: D{{Key: "a.c", Value: int32(2)}}}}))
	check(t, D{{Key: "a", Value: D{{Key: "z", Value: int32(9)}}}},
		upd(t, "x", 10, D{{Key: "$set", Value: D{{Key: "a.b", Value: int32(1)}}}}),
		upd(t, "x", 11, D{{Key: "$inc", Value: D{{Key: "a.n", Value: int32(1)}}}}),
		upd(t, "y", 12, D{{Key: "$set", Value: D{{Key: "a", Value: D{{Key: "z", Value: int32(9)}}}}}}))
	// A newer write below a newer $set still applies.
	check(t, D{{Key: "a", Value: D{{Key: "z", Value: int32(9)}, {Key: "b", Value: int32(3)}}}},
		upd(t, "y", 12, D{{Key: "$set", Value: D{{Key: "a", Value: D{{Key: "z", Value: int32(9)}}}}}}),
		upd(t, "x", 13, D{{Key: "$set", Value: D{{Key: "a.b", Value: int32(3)}}}}))
	// A path through a scalar cannot apply: no-op for that field, the rest applies.
	check(t, D{{Key: "a", Value: int32(5)}, {Key: "b", Value: int32(1)}},
		upd(t, "x", 10, D{{Key: "$set", Value: D{{Key: "a", Value: int32(5)}}}}),
		upd(t, "y", 11, D{{Key: "$set", Value: D{{Key: "a.b", Value: int32(1)}, {Key: "b", Value: int32(1)}}}}))
	// Arrays are not indexed by numeric components.
	check(t, D{{Key: "a", Value: bson.A{int32(1)}}},
		upd(t, "x", 10, D{{Key: "$set", Value: D{{Key: "a", Value: bson.A{int32(1)}}}}}),
		upd(t, "y", 11, D{{Key: "$set", Value: D{{Key: "a.0", Value: int32(2)}}}}))
}

func TestInc(t *testing.T) {
	i := func(k string, v any) *crdt.Op {
		return upd(t, k, int64(10+len(seqs)+int(seqs[k])), D{{Key: "$inc", Value: D{{Key: "n", Value: v}}}})
	}
	check(t, D{{Key: "n", Value: int32(6)}}, i("x", int32(1)), i("y", int32(2)), i("z", int32(3)))
	check(t, D{{Key: "n", Value: int64(math.MaxInt32) + 1}}, i("x", int32(math.MaxInt32)), i("y", int32(1)))
	check(t, D{{Key: "n", Value: int64(3)}}, i("x", int32(1)), i("y", int64(2)))
	check(t, D{{Key: "n", Value: 3.5}}, i("x", int32(1)), i("y", 2.5))
	// int64 overflow: that delta cannot apply (MongoDB refuses it too).
	check(t, D{{Key: "n", Value: int64(math.MaxInt64)}},
		upd(t, "x", 10, D{{Key: "$set", Value: D{{Key: "n", Value: int64(math.MaxInt64)}}}}),
		upd(t, "y", 11, D{{Key: "$inc", Value: D{{Key: "n", Value: int32(1)}}}}))
	// $inc of a string (a concurrent $set made it one): no-op for that field.
	check(t, D{{Key: "n", Value: "str"}, {Key: "m", Value: int32(1)}},
		upd(t, "x", 10, D{{Key: "$set", Value: D{{Key: "n", Value: "str"}}}}),
		upd(t, "y", 11, D{{Key: "$inc", Value: D{{Key: "n", Value: int32(1)}, {Key: "m", Value: int32(1)}}}}))
}

func TestSetVersusInc(t *testing.T) {
	// Deltas older than the $set are overwritten; newer ones add to it.
	check(t, D{{Key: "n", Value: int32(104)}},
		upd(t, "x", 10, D{{Key: "$inc", Value: D{{Key: "n", Value: int32(1)}}}}),
		upd(t, "y", 11, D{{Key: "$inc", Value: D{{Key: "n", Value: int32(2)}}}}),
		upd(t, "z", 20, D{{Key: "$set", Value: D{{Key: "n", Value: int32(100)}}}}),
		upd(t, "x", 30, D{{Key: "$inc", Value: D{{Key: "n", Value: int32(3)}}}}),
		upd(t, "y", 31, D{{Key: "$inc", Value: D{{Key: "n", Value: int32(1)}}}}))
}

func TestMinMax(t *testing.T) {
	mm := func(k string, wall int64, op string, v any) *crdt.Op {
		return upd(t, k, wall, D{{Key: op, Value: D{{Key: "v", Value: v}}}})
	}
	check(t, D{{Key: "v", Value: int32(3)}}, mm("x", 10, "$min", int32(5)), mm("y", 11, "$min", int32(3)), mm("z", 12, "$min", int32(4)))
	check(t, D{{Key: "v", Value: 5.5}}, mm("x", 10, "$max", int32(5)), mm("y", 11, "$max", 5.5), mm("z", 12, "$max", int64(2)))
	// Equal across types: the first one stays.
	check(t, D{{Key: "v", Value: int32(2)}}, mm("x", 10, "$max", int32(2)), mm("y", 11, "$max", 2.0))
	// Mixed types: BSON order, numbers < strings < documents.
	check(t, D{{Key: "v", Value: "a"}}, mm("x", 10, "$max", int32(99)), mm("y", 11, "$max", "a"))
	check(t, D{{Key: "v", Value: nil}}, mm("x", 10, "$min", int32(99)), mm("y", 11, "$min", nil))
	// Relative to a $set in clock order.
	check(t, D{{Key: "v", Value: int32(1)}},
		mm("x", 10, "$min", int32(1)),
		upd(t, "y", 5, D{{Key: "$set", Value: D{{Key: "v", Value: int32(50)}}}}))
	check(t, D{{Key: "v", Value: int32(50)}},
		mm("x", 5, "$min", int32(1)),
		upd(t, "y", 10, D{{Key: "$set", Value: D{{Key: "v", Value: int32(50)}}}}))
	// Large int64 against double: exact comparison.
	check(t, D{{Key: "v", Value: int64(1<<53 + 1)}}, mm("x", 10, "$max", float64(1<<53)), mm("y", 11, "$max", int64(1<<53+1)))
}

func TestAddToSet(t *testing.T) {
	each := func(vs ...any) D { return D{{Key: "$each", Value: bson.A(vs)}} }
	check(t, D{{Key: "s", Value: bson.A{int32(1), int32(2), int32(3)}}},
		upd(t, "x", 10, D{{Key: "$addToSet", Value: D{{Key: "s", Value: int32(1)}}}}),
		upd(t, "y", 11, D{{Key: "$addToSet", Value: D{{Key: "s", Value: each(int32(2), int32(1), 2.0, int32(3))}}}}),
		upd(t, "z", 12, D{{Key: "$addToSet", Value: D{{Key: "s", Value: int32(3)}}}}))
	// To a non-array: no-op.
	check(t, D{{Key: "s", Value: "str"}},
		upd(t, "x", 10, D{{Key: "$set", Value: D{{Key: "s", Value: "str"}}}}),
		upd(t, "y", 11, D{{Key: "$addToSet", Value: D{{Key: "s", Value: int32(1)}}}}))
	// A document without $each is a value.
	check(t, D{{Key: "s", Value: bson.A{D{{Key: "k", Value: int32(1)}}}}},
		upd(t, "x", 10, D{{Key: "$addToSet", Value: D{{Key: "s", Value: D{{Key: "k", Value: int32(1)}}}}}}))
}

func TestTombstones(t *testing.T) {
	// Delete beats older writes, in any order.
	check(t, nil,
		ins(t, "x", 10, D{{Key: "a", Value: int32(1)}}),
		upd(t, "y", 15, D{{Key: "$inc", Value: D{{Key: "n", Value: int32(1)}}}}),
		del("z", 20))
	// Re-created after the delete: only what was written after it.
	check(t, D{{Key: "n", Value: int32(5)}},
		ins(t, "x", 10, D{{Key: "a", Value: int32(1)}, {Key: "n", Value: int32(1)}}),
		del("z", 20),
		upd(t, "y", 30, D{{Key: "$inc", Value: D{{Key: "n", Value: int32(5)}}}}))
	check(t, D{{Key: "b", Value: "again"}},
		ins(t, "x", 10, D{{Key: "a", Value: int32(1)}}),
		del("z", 20),
		ins(t, "y", 30, D{{Key: "b", Value: "again"}}),
		del("x", 25))
	// An update on an absent document creates it (upsert).
	check(t, D{{Key: "a", Value: int32(1)}}, upd(t, "x", 10, D{{Key: "$set", Value: D{{Key: "a", Value: int32(1)}}}}))
	// An empty update still creates {_id}.
	check(t, D{}, upd(t, "x", 10, D{}))
}

func TestInsertMerges(t *testing.T) {
	// A second insert of the same _id merges as $set; it never replaces. ("a" was replaced, so it
	// moves after "b": see the field order rule.)
	check(t, D{{Key: "b", Value: int32(1)}, {Key: "a", Value: int32(2)}, {Key: "c", Value: int32(3)}},
		ins(t, "x", 10, D{{Key: "a", Value: int32(1)}, {Key: "b", Value: int32(1)}}),
		ins(t, "y", 11, D{{Key: "a", Value: int32(2)}, {Key: "c", Value: int32(3)}}))
}

func TestFieldOrder(t *testing.T) {
	// Untouched and incremented fields keep their place; a field whose value is replaced moves last.
	check(t, D{{Key: "b", Value: int32(2)}, {Key: "c", Value: int32(4)}, {Key: "a", Value: int32(9)}},
		ins(t, "x", 10, D{{Key: "a", Value: int32(1)}, {Key: "b", Value: int32(2)}, {Key: "c", Value: int32(3)}}),
		upd(t, "y", 11, D{{Key: "$set", Value: D{{Key: "a", Value: int32(9)}}}}),
		upd(t, "z", 12, D{{Key: "$inc", Value: D{{Key: "c", Value: int32(1)}}}}))
	// Within one update, new fields are appended in path order whatever the operator order.
	check(t, D{{Key: "a", Value: int32(1)}, {Key: "b", Value: int32(1)}, {Key: "c", Value: int32(1)}},
		upd(t, "x", 10, D{{Key: "$inc", Value: D{{Key: "c", Value: int32(1)}}}, {Key: "$set", Value: D{{Key: "b", Value: int32(1)}, {Key: "a", Value: int32(1)}}}}))
}

func TestApplyIsPureAndIdempotent(t *testing.T) {
	op1 := ins(t, "x", 10, D{{Key: "a", Value: int32(1)}})
	op2 := upd(t, "y", 11, D{{Key: "$inc", Value: D{{Key: "n", Value: int32(1)}}}})
	st1 := applyAll(t, op1)
	before := st1.Meta.Encode()
	st2, changed, err := crdt.Apply(st1, op2)
	if err != nil || !changed {
		t.Fatalf("Apply: changed=%v err=%v", changed, err)
	}
	if string(st1.Meta.Encode()) != string(before) {
		t.Fatal("Apply modified its input metadata")
	}
	if st2.Meta.Version() != st1.Meta.Version()+1 {
		t.Fatalf("version %d -> %d", st1.Meta.Version(), st2.Meta.Version())
	}
	for _, op := range []*crdt.Op{op1, op2} {
		st3, changed, err := crdt.Apply(st2, op)
		if err != nil || changed || st3.Meta != st2.Meta {
			t.Fatalf("duplicate: changed=%v err=%v", changed, err)
		}
	}
	// Dominated: older than the tombstone.
	st4, _, _ := crdt.Apply(st2, del("z", 50))
	if _, changed, _ := crdt.Apply(st4, upd(t, "x", 40, D{{Key: "$set", Value: D{{Key: "q", Value: int32(1)}}}})); changed {
		t.Fatal("an update older than the tombstone changed the state")
	}
	if got := st4.Meta.Seen(); got["z"] == 0 || got["x"] == 0 {
		t.Fatalf("seen watermark %v", got)
	}
}

func TestLegacyDocument(t *testing.T) {
	st := crdt.State{Doc: D{{Key: "_id", Value: testID}, {Key: "a", Value: int32(1)}, {Key: "b", Value: "old"}}}
	next, changed, err := crdt.Apply(st, upd(t, "x", 10, D{{Key: "$inc", Value: D{{Key: "a", Value: int32(2)}}}}))
	if err != nil || !changed {
		t.Fatal(changed, err)
	}
	want := mustRaw(t, D{{Key: "_id", Value: testID}, {Key: "a", Value: int32(3)}, {Key: "b", Value: "old"}})
	if got := docRaw(t, next.Doc); !crdttest.Equal(got, want) {
		t.Fatalf("got %v want %v", got, want)
	}
	// A delete older than the $inc removes the adopted fields but not the newer delta.
	older, _, _ := crdt.Apply(next, del("y", 5))
	want = mustRaw(t, D{{Key: "_id", Value: testID}, {Key: "a", Value: int32(2)}})
	if got := docRaw(t, older.Doc); !crdttest.Equal(got, want) {
		t.Fatalf("after an older delete: got %v want %v", got, want)
	}
	next, _, _ = crdt.Apply(next, del("y", 50))
	if next.Doc != nil {
		t.Fatalf("a delete did not remove the adopted document: %v", next.Doc)
	}
}

func TestCompact(t *testing.T) {
	var ops []*crdt.Op
	ops = append(ops, ins(t, "x", 10, D{{Key: "a", Value: int32(1)}, {Key: "cnt", Value: int32(0)}}))
	for i := range 50 {
		ops = append(ops, upd(t, []string{"x", "y"}[i%2], int64(11+i), D{
			{Key: "$inc", Value: D{{Key: "cnt", Value: int32(1)}}},
			{Key: "$addToSet", Value: D{{Key: "tags", Value: int32(i % 5)}}},
		}))
	}
	ops = append(ops, upd(t, "y", 100, D{{Key: "$unset", Value: D{{Key: "a", Value: ""}}}}))
	st := applyAll(t, ops...)
	if st.Meta.PendingOps() != 100 {
		t.Fatalf("pending ops before compaction: %d", st.Meta.PendingOps())
	}
	before := docRaw(t, st.Doc)
	m, changed := st.Meta.Compact(ts("y", 100))
	if !changed || m.PendingOps() != 0 {
		t.Fatalf("Compact: changed=%v pending=%d", changed, m.PendingOps())
	}
	if len(m.Encode()) >= len(st.Meta.Encode())/4 {
		t.Fatalf("metadata did not shrink: %d -> %d bytes", len(st.Meta.Encode()), len(m.Encode()))
	}
	if d, _ := crdt.MaterializeRaw(testID, m); !crdttest.Equal(d, before) {
		t.Fatalf("Compact changed the document:\n%v\n%v", d, before)
	}
	// Duplicates of folded ops change nothing; newer ops still apply on top.
	st = crdt.State{Doc: st.Doc, Meta: m}
	for _, op := range ops {
		if _, changed, err := crdt.Apply(st, op); changed || err != nil {
			t.Fatalf("duplicate after Compact: changed=%v err=%v", changed, err)
		}
	}
	st = applyAll(t, append([]*crdt.Op{}, ops...)...)
	m, _ = st.Meta.Compact(ts("y", 100))
	st, _, _ = crdt.Apply(crdt.State{Meta: m}, upd(t, "x", 200, D{{Key: "$inc", Value: D{{Key: "cnt", Value: int32(10)}}}}))
	want := mustRaw(t, D{{Key: "_id", Value: testID}, {Key: "cnt", Value: int32(60)},
		{Key: "tags", Value: bson.A{int32(0), int32(1), int32(2), int32(3), int32(4)}}})
	if got := docRaw(t, st.Doc); !crdttest.Equal(got, want) {
		t.Fatalf("after Compact and a newer $inc: %v, want %v", got, want)
	}
	if _, changed := m.Compact(ts("y", 100)); changed {
		t.Fatal("second Compact at the same point changed something")
	}
}

func TestClockMonotonic(t *testing.T) {
	var mu sync.Mutex
	wall := time.UnixMilli(1_000_000)
	c := crdt.NewClock("n1", func() time.Time { mu.Lock(); defer mu.Unlock(); return wall })
	step := func(d time.Duration) { mu.Lock(); wall = wall.Add(d); mu.Unlock() }
	last := c.Now()
	for i := range 1000 {
		switch i % 4 {
		case 0:
			step(3 * time.Millisecond)
		case 1:
			step(-50 * time.Millisecond) // the wall clock jumps back
		}
		now := c.Now()
		if now.Compare(last) <= 0 {
			t.Fatalf("Now went backwards: %v after %v", now, last)
		}
		if now.Node != "n1" {
			t.Fatalf("node %q", now.Node)
		}
		last = now
	}
	remote := crdt.Timestamp{Wall: last.Wall + 10_000, Logical: 7, Node: "a"}
	c.Observe(remote)
	if n := c.Now(); n.Compare(remote) <= 0 || n.Wall != remote.Wall || n.Logical != 8 {
		t.Fatalf("after Observe(%v): %v", remote, n)
	}
	// Equal wall and logical as a remote with a larger node id: still strictly after.
	r2 := c.Last()
	r2.Node = "zzz"
	c.Observe(r2)
	if n := c.Now(); n.Compare(r2) <= 0 {
		t.Fatalf("Now %v not after %v", n, r2)
	}
	if got := (crdt.Timestamp{Wall: 1_700_000_000_123}).Time(); !got.Equal(time.UnixMilli(1_700_000_000_123)) {
		t.Fatalf("Time() = %v", got)
	}
	// Concurrent use: all readings distinct.
	seen := sync.Map{}
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 1000 {
				if _, dup := seen.LoadOrStore(c.Now(), true); dup {
					t.Error("duplicate reading")
				}
			}
		})
	}
	wg.Wait()
}

func TestValidate(t *testing.T) {
	good := upd(t, "x", 10, D{{Key: "$set", Value: D{{Key: "a", Value: int32(1)}}}})
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	bad := map[string]*crdt.Op{
		"$push":           upd(t, "x", 10, D{{Key: "$push", Value: D{{Key: "a", Value: int32(1)}}}}),
		"replacement":     upd(t, "x", 10, D{{Key: "a", Value: int32(1)}}),
		"_id":             upd(t, "x", 10, D{{Key: "$set", Value: D{{Key: "_id", Value: int32(1)}}}}),
		"_edgenode":       upd(t, "x", 10, D{{Key: "$set", Value: D{{Key: "_edgenode.v", Value: int32(1)}}}}),
		"conflict at":     upd(t, "x", 10, D{{Key: "$set", Value: D{{Key: "a", Value: int32(1)}}}, {Key: "$inc", Value: D{{Key: "a.b", Value: int32(1)}}}}),
		"twice":           upd(t, "x", 10, D{{Key: "$set", Value: D{{Key: "a", Value: int32(1)}}}, {Key: "$unset", Value: D{{Key: "a", Value: ""}}}}),
		"positional":      upd(t, "x", 10, D{{Key: "$set", Value: D{{Key: "a.$", Value: int32(1)}}}}),
		"int32, int64":    upd(t, "x", 10, D{{Key: "$inc", Value: D{{Key: "a", Value: "1"}}}}),
		"$each must":      upd(t, "x", 10, D{{Key: "$addToSet", Value: D{{Key: "a", Value: D{{Key: "$each", Value: bson.A{}}, {Key: "$slice", Value: int32(1)}}}}}}),
		"$setOnInsert":    upd(t, "x", 10, D{{Key: "$setOnInsert", Value: D{{Key: "a", Value: int32(1)}}}}),
		"empty component": upd(t, "x", 10, D{{Key: "$set", Value: D{{Key: "a..b", Value: int32(1)}}}}),
		"differs from origin": func() *crdt.Op {
			op := upd(t, "x", 10, D{{Key: "$set", Value: D{{Key: "a", Value: int32(1)}}}})
			op.Origin = "y"
			return op
		}(),
		"_id differs": func() *crdt.Op {
			op := ins(t, "x", 10, nil)
			op.ID = rv(int32(8))
			return op
		}(),
		"dotted": ins(t, "x", 10, D{{Key: "a.b", Value: int32(1)}}),
		"unknown kind": func() *crdt.Op {
			op := del("x", 10)
			op.Kind = 9
			return op
		}(),
		"namespace": func() *crdt.Op {
			op := del("x", 10)
			op.NS = "nodot"
			return op
		}(),
	}
	for want, op := range bad {
		err := op.Validate()
		if err == nil || !errors.Is(err, crdt.ErrInvalidOp) || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: Validate() = %v", want, err)
		}
		if _, _, err := crdt.Apply(crdt.State{}, op); err == nil {
			t.Errorf("%s: Apply accepted it", want)
		}
	}
}

func TestOpEncoding(t *testing.T) {
	ops := []*crdt.Op{
		ins(t, "x", 10, D{{Key: "a", Value: int32(1)}}),
		upd(t, "x", 11, D{{Key: "$set", Value: D{{Key: "a.b", Value: bson.A{1.5, "s"}}}}}),
		del("x", 12),
	}
	ops[1].TS.Logical = math.MaxUint32
	for _, op := range ops {
		b, err := op.MarshalBSON()
		if err != nil {
			t.Fatal(err)
		}
		var got crdt.Op
		if err := got.UnmarshalBSON(b); err != nil {
			t.Fatal(err)
		}
		b2, _ := got.MarshalBSON()
		if string(b) != string(b2) || got.TS != op.TS || got.Seq != op.Seq || got.Kind != op.Kind {
			t.Fatalf("round trip: %+v vs %+v", got, op)
		}
		// Through the driver, as a field of a larger document.
		wrapped, err := bson.Marshal(D{{Key: "op", Value: op}})
		if err != nil {
			t.Fatal(err)
		}
		var back struct{ Op *crdt.Op }
		if err := bson.Unmarshal(wrapped, &back); err != nil || back.Op.TS != op.TS {
			t.Fatalf("driver round trip: %v", err)
		}
	}
	var o crdt.Op
	b, _ := bson.Marshal(D{{Key: "o", Value: "x"}, {Key: "zz", Value: int32(1)}})
	if err := o.UnmarshalBSON(b); err == nil || !strings.Contains(err.Error(), "unknown field") {
		t.Fatalf("unknown field: %v", err)
	}
}

// ObserveWithin refuses readings more than the bound ahead of the wall
// clock, whatever their Wall (a peer may send any), and folds in the rest.
func TestClockObserveWithin(t *testing.T) {
	wall := time.UnixMilli(1_700_000_000_000)
	c := crdt.NewClock("n1", func() time.Time { return wall })
	before := c.Now()
	for _, w := range []int64{wall.UnixMilli() + 60_001, wall.UnixMilli() + int64(365*24*time.Hour/time.Millisecond), math.MaxInt64} {
		ahead, ok := c.ObserveWithin(crdt.Timestamp{Wall: w, Node: "p"}, time.Minute)
		if ok || ahead <= time.Minute {
			t.Errorf("Wall %d: ok %v, ahead %v", w, ok, ahead)
		}
		if n := c.Last(); n != before {
			t.Errorf("Wall %d refused but the clock moved to %v", w, n)
		}
	}
	if ahead, ok := c.ObserveWithin(crdt.Timestamp{Wall: math.MinInt64, Node: "p"}, time.Minute); !ok || ahead >= 0 {
		t.Errorf("MinInt64: ok %v, ahead %v", ok, ahead)
	}
	at := crdt.Timestamp{Wall: wall.UnixMilli() + 60_000, Logical: 3, Node: "p"}
	if ahead, ok := c.ObserveWithin(at, time.Minute); !ok || ahead != time.Minute {
		t.Fatalf("at the bound: ok %v, ahead %v", ok, ahead)
	}
	if n := c.Now(); n.Compare(at) <= 0 {
		t.Fatalf("Now %v not after the observed %v", n, at)
	}
}
