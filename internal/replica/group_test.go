package replica

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
)

// Group commit (group.go) against the embedded FerretDB. Each test holds
// the document's lease itself while its writers arrive, waits until every
// writer is queued (a positive signal: the queue's length), then lets go:
// the leader's group then holds all of them, deterministically.

// updateItem is an update of document id by _id (no filter).
func updateItem(t *testing.T, id string, update bson.D) Item {
	u, err := bson.Marshal(update)
	if err != nil {
		t.Fatal(err)
	}
	return Item{ID: stringID(id), Compute: func(st crdt.State, found bool, ts crdt.Timestamp) (*crdt.Op, error) {
		if !found {
			return nil, nil
		}
		return &crdt.Op{Kind: crdt.Update, Update: u}, nil
	}}
}

func stringID(id string) bson.RawValue {
	_, v, _ := bson.MarshalValue(id)
	return bson.RawValue{Type: bson.TypeString, Value: v}
}

// queued is how many writes wait in key's queue (the leader's among them
// until it takes its group).
func (t *groupTable) queued(key string) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	if q := t.m[key]; q != nil {
		return len(q.waiting)
	}
	return 0
}

// writeAsGroup runs items as concurrent single-document writes of
// document id while the test holds the document's lease, releasing it
// once all are queued, and returns their outcomes.
func writeAsGroup(t *testing.T, r *Replica, ns, id string, items []Item) []Outcome {
	t.Helper()
	return runAsGroup(t, r, ns, id, len(items), func(i int) Outcome {
		return r.Write(context.Background(), ns, []Item{items[i]}, true)[0]
	})
}

// runAsGroup is writeAsGroup for n writers that each run write(i), which
// makes one single-document write of document id.
func runAsGroup(t *testing.T, r *Replica, ns, id string, n int, write func(i int) Outcome) []Outcome {
	t.Helper()
	key := docKey(ns, stringID(id))
	lease := r.docs.acquire(true, key)
	out := make([]Outcome, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i] = write(i)
		}()
	}
	deadline := time.Now().Add(30 * time.Second)
	for r.groups.queued(key) < n {
		if time.Now().After(deadline) {
			lease.release()
			t.Fatalf("only %d of %d writes queued for the document", r.groups.queued(key), n)
		}
		time.Sleep(time.Millisecond)
	}
	lease.release()
	wg.Wait()
	return out
}

func readN(t *testing.T, r *Replica, ns, id string) bson.M {
	t.Helper()
	var m bson.M
	if err := r.coll(ns).FindOne(context.Background(), bson.D{{Key: "_id", Value: id}}).Decode(&m); err != nil {
		t.Fatal(err)
	}
	return m
}

// TestGroupCommitOneWritePerGroup: eight writers of one document, one of
// which the merge refuses, are one group: the refused one fails alone,
// the others each get their own op (one op log entry each) and their own
// before/after, and the eight are one group (one database write).
func TestGroupCommitOneWritePerGroup(t *testing.T) {
	r := openTestReplica(t)
	ns := "app.g"
	if o := r.Write(context.Background(), ns, []Item{insertItem(t, "hot")}, true); o[0].Err != nil {
		t.Fatal(o[0].Err)
	}
	refuse := errors.New("refused by the front-end")
	items := make([]Item, 8)
	for i := range items {
		items[i] = updateItem(t, "hot", bson.D{{Key: "$inc", Value: bson.D{{Key: "n", Value: 1}}}})
	}
	items[3].Compute = func(crdt.State, bool, crdt.Timestamp) (*crdt.Op, error) { return nil, refuse }
	seq, coalesced := r.LastSeq(), testutil.ToFloat64(r.met.coalesced)

	out := writeAsGroup(t, r, ns, "hot", items)

	seen := map[int64]bool{}
	for i, o := range out {
		if i == 3 {
			if !errors.Is(o.Err, refuse) || o.Op != nil {
				t.Fatalf("refused writer: %+v, want its own error", o)
			}
			continue
		}
		if o.Err != nil || !o.Done || o.Op == nil {
			t.Fatalf("writer %d: %+v", i, o)
		}
		after := lookupN(o.After)
		if seen[after] {
			t.Fatalf("two writers saw n = %d after their own op", after)
		}
		seen[after] = true
	}
	if got := r.LastSeq() - seq; got != 7 {
		t.Fatalf("%d ops logged, want one per successful writer (7)", got)
	}
	if n := readN(t, r, ns, "hot")["n"]; num(n) != 8 {
		t.Fatalf("n = %v, want 8 (1 + 7 increments)", n)
	}
	if got := testutil.ToFloat64(r.met.coalesced) - coalesced; got != 7 {
		t.Fatalf("coalesced writes %v, want 7 (8 writes in one group)", got)
	}
}

func lookupN(d bson.D) int64 {
	for _, e := range d {
		if e.Key == "n" {
			return num(e.Value)
		}
	}
	return -1
}

func num(v any) int64 {
	switch n := v.(type) {
	case int32:
		return int64(n)
	case int64:
		return n
	}
	return -1
}

// TestGroupCommitUniqueRefusalFailsAlone: the database refuses a group's
// document (a unique index) as a whole; the group is undone and each
// write runs again alone, so that only the one that collides fails, with
// the database's 11000.
func TestGroupCommitUniqueRefusalFailsAlone(t *testing.T) {
	r := openTestReplica(t)
	ns := "app.u"
	ctx := context.Background()
	if _, err := r.coll(ns).Indexes().CreateOne(ctx, mongo.IndexModel{Keys: bson.D{{Key: "email", Value: 1}}, Options: options.Index().SetUnique(true)}); err != nil {
		t.Fatal(err)
	}
	for _, d := range []struct{ id, email string }{{"u1", "a@x"}, {"u2", "b@x"}} {
		doc, _ := bson.Marshal(bson.D{{Key: "_id", Value: d.id}, {Key: "email", Value: d.email}, {Key: "n", Value: int32(0)}})
		it := Item{ID: stringID(d.id), Compute: func(crdt.State, bool, crdt.Timestamp) (*crdt.Op, error) {
			return &crdt.Op{Kind: crdt.Insert, Doc: doc}, nil
		}}
		if o := r.Write(ctx, ns, []Item{it}, true); o[0].Err != nil {
			t.Fatal(o[0].Err)
		}
	}
	inc := bson.D{{Key: "$inc", Value: bson.D{{Key: "n", Value: 1}}}}
	items := []Item{updateItem(t, "u2", inc), updateItem(t, "u2", bson.D{{Key: "$set", Value: bson.D{{Key: "email", Value: "a@x"}}}}), updateItem(t, "u2", inc)}

	out := writeAsGroup(t, r, ns, "u2", items)

	var e *Error
	if !errors.As(out[1].Err, &e) || e.Code != 11000 {
		t.Fatalf("colliding writer: %+v, want the database's 11000", out[1])
	}
	for _, i := range []int{0, 2} {
		if out[i].Err != nil || out[i].Op == nil {
			t.Fatalf("writer %d: %+v, want success", i, out[i])
		}
	}
	if m := readN(t, r, ns, "u2"); num(m["n"]) != 2 || m["email"] != "b@x" {
		t.Fatalf("u2 = %v, want n 2 and email b@x", m)
	}
}

// TestGroupCommitRetryRecords: each writer of a group is a retryable
// statement of its own session; each gets its own result recorded with
// its op, so that a retry finds it (and the front-end answers it without
// applying the write again).
func TestGroupCommitRetryRecords(t *testing.T) {
	r := openTestReplica(t)
	ns := "app.r"
	ctx := context.Background()
	if o := r.Write(ctx, ns, []Item{insertItem(t, "k")}, true); o[0].Err != nil {
		t.Fatal(o[0].Err)
	}
	const writers = 4
	lsid := func(i int) []byte { return fmt.Appendf(nil, "lsid-%d", i) }
	out := runAsGroup(t, r, ns, "k", writers, func(i int) Outcome {
		// Each writer holds its own session's turn, as the front-end does.
		txn, err := r.BeginTxn(ctx, lsid(i), 7)
		if err != nil {
			return Outcome{Err: err}
		}
		defer txn.End()
		it := updateItem(t, "k", bson.D{{Key: "$inc", Value: bson.D{{Key: "n", Value: 1}}}})
		it.Txn, it.StmtID = txn, 0
		it.Result = func(o Outcome) []byte { return fmt.Appendf(nil, "writer %d saw n=%d", i, lookupN(o.After)) }
		return r.Write(ctx, ns, []Item{it}, true)[0]
	})
	for i, o := range out {
		if o.Err != nil {
			t.Fatalf("writer %d: %v", i, o.Err)
		}
	}
	for i := range writers {
		txn, err := r.BeginTxn(ctx, lsid(i), 7)
		if err != nil {
			t.Fatal(err)
		}
		got, err := txn.Recorded(0)
		txn.End()
		if want := fmt.Sprintf("writer %d saw n=%d", i, lookupN(out[i].After)); err != nil || string(got) != want {
			t.Fatalf("retry of writer %d finds %q, %v; want %q", i, got, err, want)
		}
	}
	if n := readN(t, r, ns, "k")["n"]; num(n) != 1+writers {
		t.Fatalf("n = %v, want %d", n, 1+writers)
	}
}

// TestGroupCommitByteBound: a group stops taking writes once their ops
// reach maxGroupBytes; the rest go back to the front of the queue and the
// next leader runs them.
func TestGroupCommitByteBound(t *testing.T) {
	r := openTestReplica(t)
	ns := "app.b"
	if o := r.Write(context.Background(), ns, []Item{insertItem(t, "big")}, true); o[0].Err != nil {
		t.Fatal(o[0].Err)
	}
	blob := make([]byte, 900<<10) // under the test's 1 MiB document limit
	const writers = 6             // 5 × 900 KiB reach the 4 MiB bound
	items := make([]Item, writers)
	for i := range items {
		blob[0] = byte(i)
		items[i] = updateItem(t, "big", bson.D{{Key: "$set", Value: bson.D{{Key: "blob", Value: bson.Binary{Data: blob}}}}})
	}
	groups, coalesced := histCount(t, r), testutil.ToFloat64(r.met.coalesced)
	out := writeAsGroup(t, r, ns, "big", items)
	for i, o := range out {
		if o.Err != nil || o.Op == nil {
			t.Fatalf("writer %d: %+v", i, o)
		}
	}
	if g, c := histCount(t, r)-groups, testutil.ToFloat64(r.met.coalesced)-coalesced; g != 2 || c != writers-2 {
		t.Fatalf("%d groups, %v coalesced; want 2 groups (5 writes, then 1)", g, c)
	}
}

func histCount(t *testing.T, r *Replica) uint64 {
	t.Helper()
	var m dto.Metric
	if err := r.met.groupOps.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetHistogram().GetSampleCount()
}
