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
// document; reads that differ get their own answers. (The Go driver does
// not check a reply's responseTo: TestCoalescedReadSeesOwnWrite's raw
// clients do.)
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
	// The warm-up reads above were shared reads of their own: count the
	// crowd's alone. (CountDocuments is an aggregate: never shared.)
	shared0 := counter(t, tp.reg, "edgenode_mongoproxy_shared_reads_total")
	rounds := 0
	testkit.WaitFor(t, 60*time.Second, "identical reads to be coalesced", func() bool {
		rounds++
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
	shared := counter(t, tp.reg, "edgenode_mongoproxy_shared_reads_total") - shared0
	coalesced := counter(t, tp.reg, "edgenode_mongoproxy_coalesced_reads_total")
	t.Logf("%d crowd(s) of %d findOnes: %v answered from %v shared upstream round trips", rounds, clients, coalesced+shared, shared)
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

// TestCoalescedReadSeesOwnWrite: a read sent after the client's own
// acknowledged write must see it, even while an identical read sent before
// the write is still in flight (it must not be answered with that older
// reply). The first shared read is held between its upstream reply and
// sharing it; meanwhile client a writes and reads the same document. Raw
// clients, so each reply's responseTo is checked against its own request.
func TestCoalescedReadSeesOwnWrite(t *testing.T) {
	tp := newProxy(t, 0, "n1")
	db := freshDB("ryw")
	if _, err := tp.client.Database(db).Collection("threads").InsertOne(testCtx, bson.D{{Key: "_id", Value: "hot"}, {Key: "n", Value: 1}}); err != nil {
		t.Fatal(err)
	}
	held, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	hook := func() {
		first := false
		once.Do(func() { first = true })
		if first {
			close(held)
			<-release
		}
	}
	tp.flights.afterRead.Store(&hook)
	var released sync.Once
	unhold := func() { released.Do(func() { close(release) }) }
	t.Cleanup(unhold)

	findHot := bson.D{{Key: "find", Value: "threads"}, {Key: "filter", Value: bson.D{{Key: "_id", Value: "hot"}}},
		{Key: "limit", Value: int64(1)}, {Key: "singleBatch", Value: true}, {Key: "$db", Value: db}}
	type answer struct {
		n   int32
		err error
	}
	// ask sends findHot on r and delivers n of its reply, checking that the
	// reply answers this very request.
	ask := func(r *rawClient) <-chan answer {
		out := make(chan answer, 1)
		id, err := r.send(0, findHot)
		if err != nil {
			out <- answer{err: err}
			return out
		}
		go func() {
			h, reply, err := r.read()
			switch {
			case err != nil:
				out <- answer{err: err}
			case h.ResponseTo != id:
				out <- answer{err: fmt.Errorf("reply answers request %d, not %d", h.ResponseTo, id)}
			default:
				doc, _ := reply.Lookup("cursor", "firstBatch", "0").DocumentOK()
				n, _ := doc.Lookup("n").AsInt64OK()
				out <- answer{n: int32(n)}
			}
		}()
		return out
	}

	a, b := dialRaw(t, tp.Addr().String()), dialRaw(t, tp.Addr().String())
	a.cmd(bson.D{{Key: "ping", Value: 1}, {Key: "$db", Value: "admin"}}) // upstream connections first
	b.cmd(bson.D{{Key: "ping", Value: 1}, {Key: "$db", Value: "admin"}})
	bGot := ask(b)
	select {
	case <-held:
	case <-time.After(30 * time.Second):
		t.Fatal("b's read never became a shared read")
	}
	// b's read has its reply (n: 1) and is held. a writes, acknowledged...
	reply := a.cmd(bson.D{{Key: "update", Value: "threads"}, {Key: "updates", Value: bson.A{
		bson.D{{Key: "q", Value: bson.D{{Key: "_id", Value: "hot"}}}, {Key: "u", Value: bson.D{{Key: "$set", Value: bson.D{{Key: "n", Value: 2}}}}}},
	}}, {Key: "$db", Value: db}})
	if n, _ := reply.Lookup("nModified").AsInt64OK(); n != 1 {
		t.Fatalf("update: %v", reply)
	}
	// ... and reads: it must not wait for b's older read, nor get its reply.
	aGot := ask(a)
	var got answer
	select {
	case got = <-aGot:
	case <-time.After(10 * time.Second):
		unhold()
		got = <-aGot
		t.Logf("a's read waited for b's held read")
	}
	unhold()
	if got.err != nil || got.n != 2 {
		t.Errorf("a read after a's acknowledged write got n=%d (err %v), want 2: it was answered with a read sent before the write", got.n, got.err)
	}
	if bg := <-bGot; bg.err != nil || bg.n != 1 {
		t.Errorf("b's read (sent before the write): n=%d err %v, want 1", bg.n, bg.err)
	}
}
