package repl

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/edgenode/edgenode/internal/testkit"
)

// TestReplicationDDLAndCompaction: three nodes write concurrently while DDL
// runs on all of them, including a drop racing with inserts elsewhere; all
// end with identical documents and indexes. Hot counters are compacted
// everywhere once the frontier passes their ops.
func TestReplicationDDLAndCompaction(t *testing.T) {
	c := newTCluster(t, 3, nil)
	for _, nd := range c.nodes {
		nd.start()
	}
	n1, n2, n3 := c.nodes[0], c.nodes[1], c.nodes[2]
	c.waitWritable(n1, n2, n3)
	ctx := context.Background()

	_, err := n1.cl.Database("app").Collection("users").Indexes().CreateOne(ctx, mongo.IndexModel{Keys: bson.D{{Key: "email", Value: 1}}})
	must(t, err)
	must(t, n2.cl.Database("app").CreateCollection(ctx, "empty"))
	_, err = n3.cl.Database("app").Collection("users").Indexes().CreateOne(ctx, mongo.IndexModel{Keys: bson.D{{Key: "name", Value: 1}}, Options: options.Index().SetName("by_name")})
	must(t, err)

	var wg sync.WaitGroup
	var incs atomic.Int64
	stop := make(chan struct{})
	for i, nd := range c.nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			users := nd.cl.Database("app").Collection("users")
			tmp := nd.cl.Database("app").Collection("tmp")
			hot := nd.cl.Database("app").Collection("hot")
			for k := 0; ; k++ {
				select {
				case <-stop:
					return
				default:
				}
				_, err := hot.UpdateOne(ctx, bson.D{{Key: "_id", Value: "h"}}, bson.D{{Key: "$inc", Value: bson.D{{Key: "n", Value: 1}}}}, options.UpdateOne().SetUpsert(true))
				if err == nil {
					incs.Add(1)
				}
				_, _ = users.UpdateOne(ctx, bson.D{{Key: "_id", Value: fmt.Sprintf("u%d", k%10)}},
					bson.D{{Key: "$set", Value: bson.D{{Key: "name", Value: fmt.Sprintf("n%d-%d", i, k)}}}}, options.UpdateOne().SetUpsert(true))
				_, _ = tmp.InsertOne(ctx, bson.D{{Key: "_id", Value: fmt.Sprintf("t%d-%d", i, k)}})
			}
		}()
	}
	time.Sleep(1500 * time.Millisecond)
	// DDL while the others write: drop a collection others insert into,
	// drop an index created elsewhere.
	must(t, n3.cl.Database("app").Collection("tmp").Drop(ctx))
	must(t, n2.cl.Database("app").Collection("users").Indexes().DropOne(ctx, "email_1"))
	time.Sleep(1500 * time.Millisecond)
	close(stop)
	wg.Wait()
	final := waitSame(t, "app", 60*time.Second, n1, n2, n3)
	if !strings.Contains(final, "== users indexes [_id_ by_name]") || !strings.Contains(final, "== empty indexes [_id_], 0 docs") {
		t.Errorf("unexpected converged state:\n%.2000s", final)
	}
	var h bson.M
	must(t, n2.cl.Database("app").Collection("hot").FindOne(ctx, bson.D{{Key: "_id", Value: "h"}}).Decode(&h))
	if got := toInt(h["n"]); got != incs.Load() {
		t.Errorf("hot counter = %d, acknowledged increments = %d", got, incs.Load())
	}
	// Compaction: once the frontier has passed every op (StableMargin, 1s),
	// the next write folds them in on every node.
	time.Sleep(2 * time.Second)
	for _, nd := range c.nodes {
		_, err := nd.cl.Database("app").Collection("hot").UpdateOne(ctx, bson.D{{Key: "_id", Value: "h"}}, bson.D{{Key: "$inc", Value: bson.D{{Key: "n", Value: 1}}}})
		must(t, err)
	}
	waitSame(t, "app", 30*time.Second, n1, n2, n3)
	for _, nd := range c.nodes {
		if p := pendingOps(t, nd, "app.hot", "h"); p > 10 {
			t.Errorf("%s: hot counter keeps %d pending ops after %d increments: not compacted", nd.id, p, incs.Load()+3)
		}
	}
	t.Logf("%d increments; stable frontier on n1: %s", incs.Load(), n1.rep.Status().Stable)
}

// TestInitialSyncAndTrimmedResync: a node joining a node with data copies
// documents, tombstones, indexes and DDL records; later, out of the cluster
// long enough to be forgotten while its peer trims its log, it comes back,
// finds itself behind the trimmed log and resyncs.
func TestInitialSyncAndTrimmedResync(t *testing.T) {
	c := newTCluster(t, 2, func(o *Options) {
		o.LogRetention = time.Millisecond
		o.ForgetPeerAfter = time.Second
		o.TrimInterval = 500 * time.Millisecond
	})
	n1, n2 := c.nodes[0], c.nodes[1]
	n1.start()
	c.waitWritable(n1)
	ctx := context.Background()
	coll := n1.cl.Database("app").Collection("s")
	var docs []any
	nDocs := 3000
	if raceEnabled {
		nDocs = 300
	}
	for i := range nDocs {
		docs = append(docs, bson.D{{Key: "_id", Value: fmt.Sprintf("d%05d", i)}, {Key: "n", Value: i}, {Key: "pad", Value: strings.Repeat("p", 100)}})
	}
	_, err := coll.InsertMany(ctx, docs)
	must(t, err)
	_, err = coll.DeleteMany(ctx, bson.D{{Key: "n", Value: bson.D{{Key: "$lt", Value: 50}}}})
	must(t, err)
	_, err = coll.Indexes().CreateOne(ctx, mongo.IndexModel{Keys: bson.D{{Key: "n", Value: -1}}})
	must(t, err)
	_, err = n1.cl.Database("app").Collection("gone").InsertOne(ctx, bson.D{{Key: "_id", Value: 1}})
	must(t, err)
	must(t, n1.cl.Database("app").Collection("gone").Drop(ctx))

	start := time.Now()
	n2.start()
	c.waitWritable(n2)
	t.Logf("initial sync of %d documents: %v", len(docs)-50, time.Since(start).Round(time.Millisecond))
	waitSame(t, "app", 30*time.Second, n1, n2)
	for _, nd := range c.nodes {
		if n, err := nd.direct.Database("edgenode_meta").Collection("tombstones").CountDocuments(ctx, bson.D{}); err != nil || n != 50 {
			t.Errorf("%s: %d tombstones (%v), want 50", nd.id, n, err)
		}
	}
	// A late op older than the drop (replayed from n1's log) must not
	// bring "gone" back on n2: the drop record came with the snapshot.
	if n, _ := n2.cl.Database("app").Collection("gone").CountDocuments(ctx, bson.D{}); n != 0 {
		t.Errorf("dropped collection has %d documents on n2", n)
	}

	// n2 leaves; n1 forgets it and trims its log while writing on.
	n2.stop()
	core := n1.proxy.Replica()
	had := core.LastSeq()
	testkit.WaitFor(t, 30*time.Second, "n1 to forget n2 and trim its log", func() bool {
		_, err := coll.UpdateOne(ctx, bson.D{{Key: "_id", Value: "d00100"}}, bson.D{{Key: "$inc", Value: bson.D{{Key: "n", Value: 1}}}})
		must(t, err)
		_, known := core.PeerAcks()["n2"]
		return !known && core.FirstSeq() > had+1
	})
	n2.start()
	testkit.WaitFor(t, 60*time.Second, "n2 to resync", func() bool {
		return strings.Contains(n2.logs.String(), "resync needed") && n2.rep.Status().State == "synced"
	})
	c.waitWritable(n2)
	waitSame(t, "app", 30*time.Second, n1, n2)
}

// TestDatabaseWipedUnderIntactLog: a node whose database is lost but whose
// op log survives resyncs from a peer, then applies again its own ops the
// peer never got (they are still in its log), and those reach the peer.
func TestDatabaseWipedUnderIntactLog(t *testing.T) {
	c := newTCluster(t, 2, nil)
	n1, n2 := c.nodes[0], c.nodes[1]
	n1.start()
	n2.start()
	c.waitWritable(n1, n2)
	ctx := context.Background()
	for i, nd := range c.nodes {
		for k := range 20 {
			_, err := nd.cl.Database("app").Collection("c").InsertOne(ctx, bson.D{{Key: "_id", Value: fmt.Sprintf("early-%d-%d", i, k)}, {Key: "k", Value: k}})
			must(t, err)
		}
	}
	waitSame(t, "app", 30*time.Second, n1, n2)
	n1.stop()
	for k := range 20 {
		_, err := n2.cl.Database("app").Collection("c").UpdateOne(ctx, bson.D{{Key: "_id", Value: fmt.Sprintf("late-%d", k)}},
			bson.D{{Key: "$inc", Value: bson.D{{Key: "n", Value: k}}}}, options.UpdateOne().SetUpsert(true))
		must(t, err)
	}
	// n2 loses its database (not its op log) while n1 is away.
	n2.stop()
	n2.db.Stop()
	_ = n2.direct.Disconnect(ctx)
	n2.db, n2.direct = nil, nil
	must(t, os.RemoveAll(filepath.Join(n2.dir, "mongo")))
	n1.start()
	n2.start()
	c.waitWritable(n1, n2)
	final := waitSame(t, "app", 60*time.Second, n1, n2)
	if !strings.Contains(final, "c indexes [_id_], 60 docs") || !strings.Contains(final, `"_id": "late-19","n": {"$numberInt":"19"}`) {
		t.Errorf("converged state lacks n2's late writes:\n%.3000s", final)
	}
	if !strings.Contains(n2.logs.String(), "initial sync done") {
		t.Error("n2 did not resync")
	}
}

// TestRepeatedWipesKeepCounters: concurrent increments on every node while
// nodes are wiped one after another (each after its own ops reached its
// peers); every counter ends at the sum of acknowledged increments.
func TestRepeatedWipesKeepCounters(t *testing.T) {
	c := newTCluster(t, 3, nil)
	for _, nd := range c.nodes {
		nd.start()
	}
	c.waitWritable(c.nodes...)
	ctx := context.Background()
	var acked [4]atomic.Int64
	var mu sync.RWMutex // writers hold it shared; a wipe swaps a node's client
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range c.nodes {
		for w := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for k := 0; ; k++ {
					select {
					case <-stop:
						return
					default:
					}
					mu.RLock()
					cl := c.nodes[i].cl
					if cl == nil {
						mu.RUnlock()
						time.Sleep(20 * time.Millisecond)
						continue
					}
					ctr := (k + w) % len(acked)
					_, err := cl.Database("app").Collection("ctr").UpdateOne(ctx, bson.D{{Key: "_id", Value: fmt.Sprintf("c%d", ctr)}},
						bson.D{{Key: "$inc", Value: bson.D{{Key: "n", Value: 1}}}}, options.UpdateOne().SetUpsert(true))
					mu.RUnlock()
					if err == nil {
						acked[ctr].Add(1)
					} else {
						time.Sleep(20 * time.Millisecond)
					}
				}
			}()
		}
	}
	rounds := 4
	if raceEnabled {
		rounds = 2
	}
	for r := range rounds {
		time.Sleep(2 * time.Second)
		nd := c.nodes[r%len(c.nodes)]
		// Writers leave the node, and its ops reach its peers first.
		mu.Lock()
		cl := nd.cl
		nd.cl = nil
		mu.Unlock()
		_ = cl
		testkit.WaitFor(t, 30*time.Second, nd.id+"'s ops acknowledged", func() bool {
			for _, p := range nd.rep.Status().Peers {
				if p.LagOps != 0 {
					return false
				}
			}
			return true
		})
		mu.Lock()
		nd.wipe()
		mu.Unlock()
		c.waitWritable(nd)
	}
	time.Sleep(time.Second)
	close(stop)
	wg.Wait()
	waitSame(t, "app", 60*time.Second, c.nodes...)
	for k := range acked {
		var doc bson.M
		must(t, c.nodes[0].cl.Database("app").Collection("ctr").FindOne(ctx, bson.D{{Key: "_id", Value: fmt.Sprintf("c%d", k)}}).Decode(&doc))
		if got := toInt(doc["n"]); got != acked[k].Load() {
			t.Errorf("counter c%d = %d, acknowledged increments %d", k, got, acked[k].Load())
		}
	}
}
