package mongoproxy

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/event"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"go.mongodb.org/mongo-driver/v2/mongo/readpref"

	"github.com/edgenode/edgenode/internal/testkit"
)

// directTo is a driver client straight to one shim member's FerretDB: what
// it holds is what reached that member.
func directTo(t testing.TB, m *rsShim) *mongo.Client {
	t.Helper()
	c := connect(t, m.backend)
	t.Cleanup(func() { _ = c.Disconnect(testCtx) })
	return c
}

func countDocs(t testing.TB, c *mongo.Client, db, coll string, filter bson.D) int64 {
	t.Helper()
	n, err := c.Database(db).Collection(coll).CountDocuments(testCtx, filter)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestHelloIsTheProxy: a driver on a plain mongodb://proxy/ sees the proxy
// as a one-member replica set of its own name and address, and nothing of
// the upstream replica set's members (the "Done when" check),
// over OP_MSG hello, legacy isMaster and OP_QUERY; with replicaSet= in
// its URI it connects and writes; its topology holds the proxy alone.
func TestHelloIsTheProxy(t *testing.T) {
	set := newRSSet(t, "pop1", 3, 4)
	tp := newProxyAt(t, set.uri(), "n1")
	addr := tp.Addr().String()

	var leaks []string
	for _, m := range set.members {
		leaks = append(leaks, m.addr)
	}
	leaks = append(leaks, set.name)
	check := func(what string, reply bson.Raw, writable string) {
		t.Helper()
		for _, l := range leaks {
			if bytes.Contains(reply, []byte(l)) {
				t.Errorf("%s reply names the upstream's %q: %s", what, l, reply)
			}
		}
		for _, k := range []string{"topologyVersion", "electionId", "setVersion", "passives", "arbiters", "tags", "lastWrite", "compression"} {
			if _, err := reply.LookupErr(k); err == nil {
				t.Errorf("%s reply has %s: %s", what, k, reply)
			}
		}
		if got, _ := reply.Lookup("setName").StringValueOK(); got != DefaultSetName {
			t.Errorf("%s setName = %q, want %q", what, got, DefaultSetName)
		}
		for _, k := range []string{"me", "primary"} {
			if got, _ := reply.Lookup(k).StringValueOK(); got != addr {
				t.Errorf("%s %s = %q, want the proxy's %s", what, k, got, addr)
			}
		}
		hosts, _ := reply.Lookup("hosts").ArrayOK()
		if vals, _ := hosts.Values(); len(vals) != 1 || vals[0].StringValue() != addr {
			t.Errorf("%s hosts = %v, want [%s]", what, reply.Lookup("hosts"), addr)
		}
		if !reply.Lookup(writable).Boolean() || reply.Lookup("secondary").Boolean() {
			t.Errorf("%s: not a writable primary: %s", what, reply)
		}
		for _, k := range []string{"maxBsonObjectSize", "maxMessageSizeBytes", "maxWriteBatchSize", "maxWireVersion"} {
			if _, ok := reply.Lookup(k).AsInt64OK(); !ok {
				t.Errorf("%s reply has no %s: %s", what, k, reply)
			}
		}
	}

	for _, name := range []string{"hello", "isMaster"} {
		reply, err := tp.client.Database("admin").RunCommand(testCtx, bson.D{{Key: name, Value: 1}}).Raw()
		if err != nil {
			t.Fatal(err)
		}
		writable := "isWritablePrimary"
		if name == "isMaster" {
			writable = "ismaster"
		}
		check(name, reply, writable)
	}
	// The driver's own handshake goes over OP_QUERY.
	rc := dialRaw(t, addr)
	id, err := rc.sendQuery("admin", bson.D{{Key: "isMaster", Value: 1}, {Key: "helloOk", Value: true}})
	if err != nil {
		t.Fatal(err)
	}
	h, body, err := rc.read()
	if err != nil || h.ResponseTo != id {
		t.Fatalf("OP_QUERY isMaster: %v (answers %d, want %d)", err, h.ResponseTo, id)
	}
	check("OP_QUERY isMaster", body, "ismaster")

	// A driver told the set's name connects, writes (retryably, in a
	// session) and sees only the proxy.
	var mu sync.Mutex
	seen := map[string]bool{}
	mon := &event.ServerMonitor{TopologyDescriptionChanged: func(e *event.TopologyDescriptionChangedEvent) {
		mu.Lock()
		defer mu.Unlock()
		for _, s := range e.NewDescription.Servers {
			seen[s.Addr.String()] = true
		}
	}}
	c, err := mongo.Connect(options.Client().ApplyURI("mongodb://" + addr + "/?replicaSet=" + DefaultSetName).SetServerMonitor(mon).SetTimeout(60 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Disconnect(testCtx)
	db := freshDB("hello")
	err = c.UseSession(testCtx, func(ctx context.Context) error {
		_, err := c.Database(db).Collection("c").InsertOne(ctx, bson.D{{Key: "_id", Value: 1}})
		return err
	})
	if err != nil {
		t.Fatalf("write through replicaSet=%s: %v", DefaultSetName, err)
	}
	mu.Lock()
	for a := range seen {
		if a != addr {
			t.Errorf("the driver's topology holds %s, not only the proxy %s", a, addr)
		}
	}
	mu.Unlock()
	// The write went to the upstream's primary, member 0.
	if n := countDocs(t, directTo(t, set.members[0]), db, "c", bson.D{}); n != 1 {
		t.Errorf("member 0 (primary) holds %d documents, want 1", n)
	}
}

// TestUpstreamStepdown: the proxy follows an election of its upstream
// replica set. A forwarded write in flight on the old primary gets the
// retryable error MongoDB answers (10107 NotWritablePrimary with the
// RetryableWriteError label) and its connection is closed after it; then
// captured and forwarded writes land on the new primary, and a driver
// with retryable writes (the default) never sees the election. While no
// member is primary, the proxy says so: not ready, and captured writes
// get the retryable error at once.
func TestUpstreamStepdown(t *testing.T) {
	set := newRSSet(t, "pop2", 5, 6)
	db := freshDB("stepdown")
	tp := newProxyAt(t, set.uri(), "n1", func(o *Options) { o.LocalOnly = []string{db + ".local"} })
	a, b := set.members[0], set.members[1]
	da, dbb := directTo(t, a), directTo(t, b)
	waitProxyPrimary(t, tp.Proxy, a.addr)

	noRetry := connect(t, "mongodb://"+tp.Addr().String()+"/?retryWrites=false")
	defer noRetry.Disconnect(testCtx)
	if _, err := noRetry.Database(db).Collection("local").InsertOne(testCtx, bson.D{{Key: "_id", Value: "before"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := tp.client.Database(db).Collection("c").InsertOne(testCtx, bson.D{{Key: "_id", Value: "before"}}); err != nil {
		t.Fatal(err)
	}

	// A forwarded write held at the primary while it steps down.
	held := a.holdWrites()
	errc := make(chan error, 1)
	go func() {
		_, err := noRetry.Database(db).Collection("local").InsertOne(testCtx, bson.D{{Key: "_id", Value: "inflight"}})
		errc <- err
	}()
	select {
	case <-held:
	case <-time.After(30 * time.Second):
		t.Fatal("the write did not reach the primary")
	}
	set.elect(-1)
	a.release()
	err := <-errc
	var se mongo.ServerError
	if !errors.As(err, &se) || !se.HasErrorCode(10107) || !se.HasErrorLabel(labelRetryableWrite) {
		t.Fatalf("in-flight write at stepdown: %v, want 10107 NotWritablePrimary with %s", err, labelRetryableWrite)
	}

	// No primary: not ready, and a captured write is refused at once,
	// retryably, naming the cause.
	testkit.WaitFor(t, 60*time.Second, "the proxy to see no primary", func() bool { return tp.Ready() != nil })
	if !strings.Contains(tp.Ready().Error(), "no primary") {
		t.Errorf("Ready() = %v", tp.Ready())
	}
	_, err = noRetry.Database(db).Collection("c").InsertOne(testCtx, bson.D{{Key: "_id", Value: "nowhere"}})
	if !errors.As(err, &se) || !se.HasErrorCode(10107) || !se.HasErrorLabel(labelRetryableWrite) || !strings.Contains(err.Error(), "no known primary") {
		t.Fatalf("captured write without a primary: %v", err)
	}
	if v := counter(t, tp.reg, "edgenode_mongoproxy_upstream_primary_known"); v != 0 {
		t.Errorf("upstream_primary_known = %v while there is none", v)
	}

	// B is elected: a write through a driver that retries succeeds, even
	// one started before the proxy knows; both kinds land on B.
	retried := make(chan error, 1)
	go func() {
		_, err := tp.client.Database(db).Collection("local").InsertOne(testCtx, bson.D{{Key: "_id", Value: "retried"}})
		retried <- err
	}()
	set.elect(1)
	waitProxyPrimary(t, tp.Proxy, b.addr)
	if err := <-retried; err != nil {
		t.Fatalf("retryable write across the election: %v", err)
	}
	if _, err := tp.client.Database(db).Collection("c").InsertOne(testCtx, bson.D{{Key: "_id", Value: "after"}}); err != nil {
		t.Fatalf("captured write after the election: %v", err)
	}
	if _, err := noRetry.Database(db).Collection("local").InsertOne(testCtx, bson.D{{Key: "_id", Value: "after"}}); err != nil {
		// The first command on a connection to the former primary finds
		// it closed (the driver reconnects); the next one succeeds.
		if _, err := noRetry.Database(db).Collection("local").InsertOne(testCtx, bson.D{{Key: "_id", Value: "after"}}); err != nil {
			t.Fatalf("forwarded write after the election: %v", err)
		}
	}
	for _, coll := range []string{"c", "local"} {
		if n := countDocs(t, dbb, db, coll, bson.D{{Key: "_id", Value: "after"}}); n != 1 {
			t.Errorf("%s: the new primary has %d documents _id after, want 1", coll, n)
		}
		if n := countDocs(t, da, db, coll, bson.D{{Key: "_id", Value: "after"}}); n != 0 {
			t.Errorf("%s: the former primary has %d documents _id after, want 0", coll, n)
		}
	}
	if n := countDocs(t, dbb, db, "local", bson.D{{Key: "_id", Value: "retried"}}); n != 1 {
		t.Errorf("the retried write is not on the new primary")
	}
	if v := counter(t, tp.reg, "edgenode_mongoproxy_upstream_primary_known"); v != 1 {
		t.Errorf("upstream_primary_known = %v with a primary", v)
	}
	if err := tp.Ready(); err != nil {
		t.Errorf("Ready() with a primary: %v", err)
	}
}

// TestSecondaryPreferredRead: a read whose read preference allows a
// secondary is served by the upstream's secondary (the shim refuses it
// there without the $readPreference the proxy must pass on), its cursor's
// getMore follows it there, and a primary read stays on the primary. The
// members share no data, so what a read returns shows where it ran.
func TestSecondaryPreferredRead(t *testing.T) {
	set := newRSSet(t, "pop3", 7, 8)
	tp := newProxyAt(t, set.uri(), "n1")
	a, b := set.members[0], set.members[1]
	db := freshDB("secread")
	var docs []any
	for i := range 5 {
		docs = append(docs, bson.D{{Key: "_id", Value: i}, {Key: "on", Value: "secondary"}})
	}
	if _, err := directTo(t, b).Database(db).Collection("c").InsertMany(testCtx, docs); err != nil {
		t.Fatal(err)
	}
	if _, err := directTo(t, a).Database(db).Collection("c").InsertOne(testCtx, bson.D{{Key: "_id", Value: "p"}, {Key: "on", Value: "primary"}}); err != nil {
		t.Fatal(err)
	}
	// The read pool must have seen the secondary.
	testkit.WaitFor(t, 60*time.Second, "the read pool to see the secondary", func() bool {
		_, ok := pickSecondary(tp.reads.Description(), "secondaryPreferred", nil)
		return ok
	})

	sp := tp.client.Database(db, options.Database().SetReadPreference(readpref.SecondaryPreferred())).Collection("c")
	before := b.reads.Load()
	cur, err := sp.Find(testCtx, bson.D{}, options.Find().SetBatchSize(2).SetSort(bson.D{{Key: "_id", Value: 1}}))
	if err != nil {
		t.Fatal(err)
	}
	var got []bson.Raw
	if err := cur.All(testCtx, &got); err != nil {
		t.Fatalf("secondaryPreferred find and its getMores: %v", err)
	}
	if len(got) != 5 || got[0].Lookup("on").StringValue() != "secondary" {
		t.Fatalf("secondaryPreferred find returned %v, want the secondary's 5 documents", got)
	}
	if n := b.reads.Load() - before; n < 3 {
		t.Errorf("the secondary served %d reads, want the find and its getMores (3)", n)
	}
	if n, err := sp.CountDocuments(testCtx, bson.D{}); err != nil || n != 5 {
		t.Errorf("secondaryPreferred count = %d, %v; want the secondary's 5", n, err)
	}
	if v := counter(t, tp.reg, "edgenode_mongoproxy_secondary_reads_total"); v < 4 {
		t.Errorf("secondary_reads_total = %v", v)
	}
	// A primary read (no $readPreference) stays on the primary.
	if n, err := tp.client.Database(db).Collection("c").CountDocuments(testCtx, bson.D{}); err != nil || n != 1 {
		t.Errorf("primary count = %d, %v; want the primary's 1", n, err)
	}
}
