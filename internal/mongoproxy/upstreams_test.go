package mongoproxy

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// TestConcurrentWriters: 8 clients write through the proxy at once, $inc
// on shared documents (the proxy's per-document leases serialize them;
// FerretDB alone loses increments) and insert-then-delete of documents of
// their own (so tombstones are written), over each upstream. Every write
// must be acknowledged and every acknowledged increment stored. Over
// FerretDB on PostgreSQL this once failed every captured write: the
// tombstone keys held a NUL byte, which PostgreSQL's jsonb refuses.
func TestConcurrentWriters(t *testing.T) {
	for _, k := range upstreamKinds {
		t.Run(string(k), func(t *testing.T) {
			tp := newProxyOver(t, k, 0, "cw")
			db := freshDB("cw")
			coll := tp.client.Database(db).Collection("c")
			const writers, rounds, shared = 8, 25, 3
			var acked [shared]atomic.Int64
			var wg sync.WaitGroup
			errs := make(chan error, writers)
			for w := range writers {
				wg.Go(func() {
					for r := range rounds {
						id := fmt.Sprintf("s%d", (w+r)%shared)
						if _, err := coll.UpdateOne(testCtx, bson.D{{Key: "_id", Value: id}}, bson.D{{Key: "$inc", Value: bson.D{{Key: "n", Value: 1}}}}, options.UpdateOne().SetUpsert(true)); err != nil {
							errs <- fmt.Errorf("writer %d: $inc %s: %w", w, id, err)
							return
						}
						acked[(w+r)%shared].Add(1)
						own := fmt.Sprintf("w%d-%d", w, r)
						if _, err := coll.InsertOne(testCtx, bson.D{{Key: "_id", Value: own}, {Key: "x", Value: r}}); err != nil {
							errs <- fmt.Errorf("writer %d: insert %s: %w", w, own, err)
							return
						}
						if _, err := coll.DeleteOne(testCtx, bson.D{{Key: "_id", Value: own}}); err != nil {
							errs <- fmt.Errorf("writer %d: delete %s: %w", w, own, err)
							return
						}
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			for i := range shared {
				id := fmt.Sprintf("s%d", i)
				m := findOne(t, coll, bson.D{{Key: "_id", Value: id}})
				if got, want := toInt64(m["n"]), acked[i].Load(); got != want {
					t.Errorf("%s: n = %d, acknowledged increments %d", id, got, want)
				}
			}
			if n, err := coll.CountDocuments(testCtx, bson.D{}); err != nil || n != shared {
				t.Errorf("%d documents (%v), want the %d shared ones: deletes lost", n, err, shared)
			}
			tombs, err := tp.direct.Database("edgenode_meta").Collection("tombstones").CountDocuments(testCtx, bson.D{{Key: "ns", Value: db + ".c"}})
			if err != nil || tombs != writers*rounds {
				t.Errorf("%d tombstones (%v), want %d", tombs, err, writers*rounds)
			}
		})
	}
}

func toInt64(v any) int64 {
	switch n := v.(type) {
	case int32:
		return int64(n)
	case int64:
		return n
	case float64:
		return int64(n)
	}
	return -1
}
