package replica

import (
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
)

// TestSettleOneAtATime: Settle called by several goroutines at once (the
// front-end's settle loop and captured writes) stores each unstored op
// once, in the real database, and leaves none. The ops are logged and put
// in the unstored set as a store that gave up leaves them (the give-up
// itself, on a replica-set shim with no primary, is tested in package
// mongoproxy: TestCapturedWriteStepdown, TestRetryAfterStoreGaveUp).
func TestSettleOneAtATime(t *testing.T) {
	r := openTestReplica(t)
	ctx := t.Context()
	var ops []*crdt.Op
	for i := range 5 {
		doc, err := bson.Marshal(bson.D{{Key: "_id", Value: i}, {Key: "n", Value: 1}})
		if err != nil {
			t.Fatal(err)
		}
		typ, v, err := bson.MarshalValue(i)
		if err != nil {
			t.Fatal(err)
		}
		ops = append(ops, &crdt.Op{Kind: crdt.Insert, NS: "app.settle", ID: bson.RawValue{Type: typ, Value: v}, Doc: doc, TS: r.clock.Now()})
	}
	if err := r.olog.AppendLocal(ctx, ops); err != nil {
		t.Fatal(err)
	}
	r.unstored.add(ops, r.met.unstored)
	if n, _ := r.Unstored(); n != len(ops) {
		t.Fatalf("Unstored() = %d, want %d", n, len(ops))
	}

	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			done, err := r.Admit()
			if err != nil {
				t.Error(err)
				return
			}
			defer done()
			if err := r.Settle(ctx); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()

	if n, _ := r.Unstored(); n != 0 {
		t.Errorf("Unstored() = %d after Settle, want 0", n)
	}
	if got := testutil.ToFloat64(r.met.opsApplied.WithLabelValues("settle")); got != float64(len(ops)) {
		t.Errorf("ops applied by Settle: %v, want %d (each once)", got, len(ops))
	}
	if got := testutil.ToFloat64(r.met.unstored); got != 0 {
		t.Errorf("unstored gauge = %v, want 0", got)
	}
	if r.Applied(r.Origin()) != r.LastSeq() {
		t.Errorf("applied up to %d of %d", r.Applied(r.Origin()), r.LastSeq())
	}
	n, err := r.coll("app.settle").CountDocuments(ctx, bson.D{})
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(len(ops)) {
		t.Errorf("%d documents stored, want %d", n, len(ops))
	}
}
