package mongoproxy

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/edgenode/edgenode/internal/testkit"
)

// TestCoalescedReads: many clients (each its own connection) asking for
// the same document at once through a proxy over FerretDB share upstream
// round trips (the metrics say how many), and every client gets the right
// document under its own request id (the driver checks responseTo);
// reads that differ get their own answers.
func TestCoalescedReads(t *testing.T) {
	tp := newProxy(t, 0, "n1")
	db := freshDB("coal")
	coll := tp.client.Database(db).Collection("threads")
	if _, err := coll.InsertMany(testCtx, []any{
		bson.D{{Key: "_id", Value: "hot"}, {Key: "title", Value: "popular"}},
		bson.D{{Key: "_id", Value: "cold"}, {Key: "title", Value: "quiet"}},
	}); err != nil {
		t.Fatal(err)
	}
	const clients = 64
	var cls []*mongo.Collection
	for range clients {
		cl, err := mongo.Connect(options.Client().ApplyURI("mongodb://" + tp.Addr().String() + "/").SetMaxPoolSize(1).SetTimeout(30 * time.Second))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cl.Disconnect(testCtx) })
		c := cl.Database(db).Collection("threads")
		if err := c.FindOne(testCtx, bson.D{{Key: "_id", Value: "cold"}}).Err(); err != nil { // connect and handshake first
			t.Fatal(err)
		}
		cls = append(cls, c)
	}
	testkit.WaitFor(t, 60*time.Second, "identical reads to be coalesced", func() bool {
		var wg sync.WaitGroup
		errs := make(chan error, clients)
		start := make(chan struct{})
		for i, c := range cls {
			wg.Go(func() {
				<-start
				id, want := "hot", "popular"
				if i%8 == 7 {
					id, want = "cold", "quiet" // a different read in the same crowd
				}
				var got bson.M
				if err := c.FindOne(testCtx, bson.D{{Key: "_id", Value: id}}).Decode(&got); err != nil || got["title"] != want {
					errs <- fmt.Errorf("client %d: %v %v, want %s", i, got, err, want)
				}
				n, err := c.CountDocuments(testCtx, bson.D{})
				if err != nil || n != 2 {
					errs <- fmt.Errorf("client %d: count %d %v", i, n, err)
				}
			})
		}
		close(start)
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		return counter(t, tp.reg, "edgenode_mongoproxy_coalesced_reads_total") > 0
	})
	shared := counter(t, tp.reg, "edgenode_mongoproxy_shared_reads_total")
	coalesced := counter(t, tp.reg, "edgenode_mongoproxy_coalesced_reads_total")
	t.Logf("%v reads answered from %v shared upstream round trips", coalesced+shared, shared)
}

// TestCoalescableShapes: which commands may share a reply (the rules of
// coalesce.go), as the official driver and the spec shape them.
func TestCoalescableShapes(t *testing.T) {
	for _, tc := range []struct {
		name string
		cmd  bson.D
		want bool
	}{
		{"findOne", bson.D{{Key: "find", Value: "c"}, {Key: "filter", Value: bson.D{}}, {Key: "limit", Value: int64(1)}, {Key: "singleBatch", Value: true}}, true},
		{"find limit within the first batch", bson.D{{Key: "find", Value: "c"}, {Key: "limit", Value: int64(50)}}, true},
		{"find limit over batchSize", bson.D{{Key: "find", Value: "c"}, {Key: "limit", Value: int64(50)}, {Key: "batchSize", Value: int32(10)}}, false},
		{"find that opens a cursor", bson.D{{Key: "find", Value: "c"}}, false},
		{"count", bson.D{{Key: "count", Value: "c"}, {Key: "query", Value: bson.D{}}}, true},
		{"distinct", bson.D{{Key: "distinct", Value: "c"}, {Key: "key", Value: "a"}}, true},
		{"aggregate", bson.D{{Key: "aggregate", Value: "c"}, {Key: "pipeline", Value: bson.A{}}}, false},
		{"in a transaction", bson.D{{Key: "find", Value: "c"}, {Key: "singleBatch", Value: true}, {Key: "txnNumber", Value: int64(1)}, {Key: "autocommit", Value: false}}, false},
		{"causally consistent", bson.D{{Key: "count", Value: "c"}, {Key: "readConcern", Value: bson.D{{Key: "afterClusterTime", Value: bson.Timestamp{T: 1}}}}}, false},
		{"snapshot", bson.D{{Key: "count", Value: "c"}, {Key: "readConcern", Value: bson.D{{Key: "level", Value: "snapshot"}}}}, false},
		{"majority", bson.D{{Key: "count", Value: "c"}, {Key: "readConcern", Value: bson.D{{Key: "level", Value: "majority"}}}}, true},
		{"on a secondary", bson.D{{Key: "count", Value: "c"}, {Key: "$readPreference", Value: bson.D{{Key: "mode", Value: "secondaryPreferred"}}}}, false},
		{"tailable", bson.D{{Key: "find", Value: "c"}, {Key: "singleBatch", Value: true}, {Key: "tailable", Value: true}}, false},
	} {
		body, _ := bson.Marshal(append(tc.cmd, bson.E{Key: "$db", Value: "app"}))
		cmd := &command{name: tc.cmd[0].Key, db: "app", coll: "c", body: body}
		lower := map[string]string{"find": "find", "count": "count", "distinct": "distinct", "aggregate": "aggregate"}[tc.cmd[0].Key]
		if got := coalescable(cmd, lower); got != tc.want {
			t.Errorf("%s: coalescable %v, want %v", tc.name, got, tc.want)
		}
	}
	// The key leaves out the client's session, nothing else.
	a, _ := bson.Marshal(bson.D{{Key: "find", Value: "c"}, {Key: "lsid", Value: bson.D{{Key: "id", Value: "x"}}}, {Key: "$db", Value: "app"}})
	b, _ := bson.Marshal(bson.D{{Key: "find", Value: "c"}, {Key: "lsid", Value: bson.D{{Key: "id", Value: "y"}}}, {Key: "$db", Value: "app"}})
	if string(sharedBody(a)) != string(sharedBody(b)) || bson.Raw(sharedBody(a)).Validate() != nil {
		t.Errorf("sharedBody: %v vs %v", bson.Raw(sharedBody(a)), bson.Raw(sharedBody(b)))
	}
}
