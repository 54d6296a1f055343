package mongoproxy

import (
	"bytes"
	"context"
	"sync"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/event"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
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
	c, err := mongo.Connect(options.Client().ApplyURI("mongodb://"+addr+"/?replicaSet="+DefaultSetName).SetServerMonitor(mon).SetTimeout(60*time.Second))
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
