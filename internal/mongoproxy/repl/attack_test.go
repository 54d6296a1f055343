package repl

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"

	"github.com/edgenode/edgenode/internal/mesh"
	"github.com/edgenode/edgenode/internal/mesh/pki"
	"github.com/edgenode/edgenode/internal/mongoproxy"
	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
	"github.com/edgenode/edgenode/internal/mongoproxy/oplog"
	"github.com/edgenode/edgenode/internal/replica"
	"github.com/edgenode/edgenode/internal/testkit"
)

// Attacks on replication: a member of the mesh (a certificate from the
// cluster's CA, so a misconfigured node or an attacker holding a node
// certificate) that speaks the replication protocol by hand over a real
// mesh (memberlist, mTLS QUIC links) to real nodes (proxy, op log,
// embedded FerretDB).

const year = 365 * 24 * time.Hour

// evilPeer is such a member. It announces itself as a synced replica in
// heartbeats whose clock runs ahead by offset, records the acks it gets
// and answers initial sync requests with serve.
type evilPeer struct {
	t      *testing.T
	id     string
	origin string
	mesh   *mesh.Mesh
	offset atomic.Int64  // its clock's advance over the real one, in ms
	last   atomic.Uint64 // the last seq its heartbeats announce
	mu     sync.Mutex
	acks   []ackMsg
	serve  func(to string, session uint64) // answers a sync request (on its own goroutine); nil: ignored
}

// onSync sets how it answers sync requests.
func (e *evilPeer) onSync(serve func(to string, session uint64)) {
	e.mu.Lock()
	e.serve = serve
	e.mu.Unlock()
}

func (c *tcluster) newEvil(id string) *evilPeer {
	t := c.t
	t.Helper()
	k := ipSeq.Add(1)
	ip := fmt.Sprintf("127.0.%d.%d", 60+k/200, 10+k%200)
	certDir := filepath.Join(c.dir, "certs")
	if _, _, err := pki.IssueNode(c.caDir, id, certDir, []string{ip}); err != nil {
		t.Fatal(err)
	}
	logs := &logBuf{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo})).With("node", id)
	m, err := mesh.New(mesh.Options{NodeID: id, BindAddr: freeAddr(t, ip), LinkAddr: freeAddr(t, ip), GossipKeys: [][]byte{c.key},
		CACertFile: filepath.Join(c.caDir, pki.CACertName), CertFile: filepath.Join(certDir, id+".crt"), KeyFile: filepath.Join(certDir, id+".key"),
		Profile: "local", BinaryVersion: "test", ConfigVersion: "test", Seeds: c.addrs}, log, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	e := &evilPeer{t: t, id: id, origin: id + "~evil", mesh: m}
	m.Handle(Topic, func(from string, msg []byte) {
		if len(msg) == 0 || msg[0] != msgAck {
			return
		}
		if a, err := decodeAck(msg); err == nil && a.origin == e.origin {
			e.mu.Lock()
			e.acks = append(e.acks, a)
			e.mu.Unlock()
		}
	})
	var wg sync.WaitGroup
	m.Handle(SyncTopic, func(from string, msg []byte) {
		e.mu.Lock()
		serve := e.serve
		e.mu.Unlock()
		if sm, err := decodeSync(msg); err == nil && sm.typ == msgSyncReq && serve != nil {
			wg.Add(1)
			go func() { defer wg.Done(); serve(from, sm.session) }()
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			var first uint64
			if e.last.Load() > 0 {
				first = 1
			}
			hb := heartbeat{origin: e.origin, frontier: e.now(), last: e.last.Load(), first: first, flags: hbSynced, applied: map[string]uint64{}}
			m.Broadcast(Topic, hb.encode())
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		lctx, lcancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer lcancel()
		_ = m.Leave(lctx)
		wg.Wait()
		if t.Failed() {
			t.Logf("---- %s log:\n%s", id, logs.String())
		}
	})
	return e
}

// now is its clock.
func (e *evilPeer) now() crdt.Timestamp {
	return crdt.Timestamp{Wall: time.Now().UnixMilli() + e.offset.Load(), Node: e.origin}
}

// send delivers msg to node, retrying while the link comes up. It may run
// on any goroutine: a failure is reported with Errorf.
func (e *evilPeer) send(node, topic string, msg []byte) {
	deadline := time.Now().Add(60 * time.Second)
	for {
		err := e.mesh.Send(node, topic, msg)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			e.t.Errorf("%s: send to %s: %v", e.id, node, err)
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// sendOps sends its ops first..first+len(ops)-1 to node, stamped by its clock.
func (e *evilPeer) sendOps(node string, first uint64, ops ...*crdt.Op) {
	e.t.Helper()
	var raws [][]byte
	for i, op := range ops {
		op.Origin, op.Seq = e.origin, first+uint64(i)
		op.TS = e.now()
		op.TS.Logical = uint32(i)
		raw, err := op.MarshalBSON()
		if err != nil {
			e.t.Fatal(err)
		}
		raws = append(raws, raw)
	}
	if l := first + uint64(len(ops)) - 1; l > e.last.Load() {
		e.last.Store(l)
	}
	e.send(node, Topic, (&opsMsg{origin: e.origin, prev: first - 1, ops: raws}).encode())
}

// lastAck returns the last ack it got (ok false: none yet).
func (e *evilPeer) lastAck() (ackMsg, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.acks) == 0 {
		return ackMsg{}, false
	}
	return e.acks[len(e.acks)-1], true
}

func insertOp(ns string, id any, fields ...bson.E) *crdt.Op {
	t, v, err := bson.MarshalValue(id)
	if err != nil {
		panic(err)
	}
	doc, err := bson.Marshal(append(bson.D{{Key: "_id", Value: id}}, fields...))
	if err != nil {
		panic(err)
	}
	return &crdt.Op{NS: ns, ID: bson.RawValue{Type: t, Value: v}, Kind: crdt.Insert, Doc: doc}
}

func ddlOp(ns, key string, cmd bson.D) *crdt.Op {
	doc, err := bson.Marshal(cmd)
	if err != nil {
		panic(err)
	}
	t, v, _ := bson.MarshalValue(key)
	return &crdt.Op{NS: ns, ID: bson.RawValue{Type: t, Value: v}, Kind: crdt.DDL, Doc: doc}
}

// metricValue sums the samples of metric name whose labels include want.
func metricValue(t *testing.T, reg *prometheus.Registry, name string, want map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for k, v := range want {
				found := false
				for _, l := range m.GetLabel() {
					if l.GetName() == k && l.GetValue() == v {
						found = true
					}
				}
				if !found {
					continue next
				}
			}
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return sum
}

// clockAhead reports how far a clock reading is ahead of the wall clock.
func clockAhead(ts crdt.Timestamp) time.Duration {
	return time.Duration(ts.Wall-time.Now().UnixMilli()) * time.Millisecond
}

func countDocs(t *testing.T, cl *mongo.Client, ns string, filter bson.D) int64 {
	t.Helper()
	db, coll, _ := strings.Cut(ns, ".")
	if filter == nil {
		filter = bson.D{}
	}
	n, err := cl.Database(db).Collection(coll).CountDocuments(context.Background(), filter)
	if err != nil {
		t.Fatalf("count %s: %v", ns, err)
	}
	return n
}

// TestClockSkewPeerRefused: a peer whose clock runs a year ahead sends
// heartbeats and ops. They are refused: not applied, not acknowledged as
// applied, counted by peer, logged naming it; this node's clock and its op
// log's persisted clock stay at the wall clock. Once the peer's clock is
// right, its ops apply.
func TestClockSkewPeerRefused(t *testing.T) {
	c := newTCluster(t, 1, nil)
	n1 := c.nodes[0]
	n1.start()
	c.waitWritable(n1)
	evil := c.newEvil("evil")
	evil.offset.Store(year.Milliseconds())

	evil.sendOps(n1.id, 1, insertOp("app.c", "a", bson.E{Key: "v", Value: "from the future"}),
		insertOp("app.c", "b"), insertOp("app.c", "c"))
	testkit.WaitFor(t, 60*time.Second, "n1 to answer evil's ops", func() bool { _, ok := evil.lastAck(); return ok })
	if a, _ := evil.lastAck(); a.pos != 0 {
		t.Errorf("n1 acknowledged evil's ops stamped a year ahead as applied (position %d)", a.pos)
	}
	if n := countDocs(t, n1.direct, "app.c", nil); n != 0 {
		t.Errorf("n1 wrote %d documents from ops stamped a year ahead", n)
	}
	if d := clockAhead(n1.proxy.Replica().Frontier()); d > time.Minute {
		t.Errorf("n1's clock moved %v ahead of its wall clock", d.Round(time.Second))
	}
	testkit.WaitFor(t, 60*time.Second, "n1 to count evil's refused heartbeats and ops", func() bool {
		return metricValue(t, n1.reg, "edgenode_mongo_repl_clock_skew_refused_total", map[string]string{"peer": "evil", "what": "heartbeat"}) >= 1 &&
			metricValue(t, n1.reg, "edgenode_mongo_repl_clock_skew_refused_total", map[string]string{"peer": "evil", "what": "ops"}) >= 3
	})
	if d := clockAhead(n1.proxy.Replica().Frontier()); d > time.Minute {
		t.Errorf("n1's clock moved %v ahead of its wall clock", d.Round(time.Second))
	}
	// The heartbeat loop fences the clock in the op log once the clock has
	// moved (a local write): wait for a fence made after the refusals.
	since := time.Now().UnixMilli()
	_, err := n1.cl.Database("app").Collection("mine").InsertOne(context.Background(), bson.D{{Key: "_id", Value: 1}})
	must(t, err)
	testkit.WaitFor(t, 60*time.Second, "n1 to fence its clock in the op log", func() bool { return n1.proxy.Replica().MaxTimestamp().Wall >= since })
	if d := clockAhead(n1.proxy.Replica().MaxTimestamp()); d > time.Minute {
		t.Errorf("n1's op log persisted a clock %v ahead of the wall clock", d.Round(time.Second))
	}
	logs := n1.logs.String()
	if !strings.Contains(logs, "peer=evil") || !strings.Contains(logs, "ahead=") {
		t.Errorf("no log line names evil and its clock's advance:\n%s", logs)
	}

	// The peer's clock is right again: what it sends now applies.
	evil.offset.Store(0)
	evil.sendOps(n1.id, 1, insertOp("app.c", "a", bson.E{Key: "v", Value: "on time"}), insertOp("app.c", "b"), insertOp("app.c", "c"))
	testkit.WaitFor(t, 60*time.Second, "evil's ops on time applied on n1", func() bool {
		a, _ := evil.lastAck()
		return a.pos == 3 && countDocs(t, n1.direct, "app.c", nil) == 3
	})
	if d := clockAhead(n1.proxy.Replica().Frontier()); d > time.Minute {
		t.Errorf("n1's clock is %v ahead of its wall clock", d.Round(time.Second))
	}
}

// TestClockSkewPersistedAtStart: a node whose op log remembers a clock a
// year ahead (an earlier version accepted a skewed peer's clock, or the
// wall clock was set back) says so loudly at start and does not resume its
// clock there.
func TestClockSkewPersistedAtStart(t *testing.T) {
	c := newTCluster(t, 1, nil)
	n1 := c.nodes[0]
	n1.start()
	c.waitWritable(n1)
	origin := n1.proxy.Replica().Origin()
	n1.stop()
	olog, err := oplog.Open(oplog.Options{Path: filepath.Join(n1.dir, "oplog.db"), Origin: origin}, nil, nil)
	must(t, err)
	must(t, olog.Fence(context.Background(), crdt.Timestamp{Wall: time.Now().Add(year).UnixMilli(), Node: origin}))
	must(t, olog.Close())
	n1.start()
	c.waitWritable(n1)
	if d := clockAhead(n1.proxy.Replica().Frontier()); d > time.Minute {
		t.Errorf("n1's clock resumed %v ahead of its wall clock", d.Round(time.Second))
	}
	if logs := n1.logs.String(); !strings.Contains(logs, "level=ERROR") || !strings.Contains(logs, "max_clock_skew") {
		t.Errorf("no error line about the persisted clock far ahead:\n%s", logs)
	}
}

// TestClockSkewSyncSourceRefused: a sync source whose clock reading (sent
// before its snapshot) runs a year ahead is refused; the node's clock does
// not move; the next attempt, with the clock right, completes.
func TestClockSkewSyncSourceRefused(t *testing.T) {
	c := newTCluster(t, 1, func(o *Options) { o.BootstrapWait = 5 * time.Minute })
	n1 := c.nodes[0]
	n1.start()
	evil := c.newEvil("evil")
	var attempts atomic.Int32
	evil.onSync(func(to string, session uint64) {
		clock := evil.now()
		if attempts.Add(1) == 1 {
			clock.Wall += year.Milliseconds()
		}
		evil.send(to, SyncTopic, (&syncMsg{typ: msgSyncBegin, session: session, vector: map[string]uint64{}, clock: clock}).encode())
		doc, _ := bson.Marshal(bson.D{{Key: "_id", Value: "x"}})
		items := []replica.SnapshotItem{{Kind: replica.SnapCollection, NS: "app.ok", Doc: bson.Raw{5, 0, 0, 0, 0}}, {Kind: replica.SnapDoc, NS: "app.ok", Doc: doc}}
		evil.send(to, SyncTopic, (&syncMsg{typ: msgSyncItems, session: session, chunk: 1, items: items}).encode())
		evil.send(to, SyncTopic, (&syncMsg{typ: msgSyncEnd, session: session, chunk: 1}).encode())
	})
	testkit.WaitFor(t, 120*time.Second, "an initial sync of n1 from evil", func() bool { return attempts.Load() >= 1 && strings.Contains(n1.logs.String(), "initial sync done") })
	if d := clockAhead(n1.proxy.Replica().Frontier()); d > time.Minute {
		t.Errorf("n1's clock moved %v ahead of its wall clock", d.Round(time.Second))
	}
	if attempts.Load() < 2 {
		t.Errorf("n1 completed a sync from a source whose clock is a year ahead")
	}
	if v := metricValue(t, n1.reg, "edgenode_mongo_repl_clock_skew_refused_total", map[string]string{"peer": "evil", "what": "sync"}); v < 1 {
		t.Errorf("refused sync not counted (%v)", v)
	}
	if n := countDocs(t, n1.direct, "app.ok", nil); n != 1 {
		t.Errorf("app.ok has %d documents after the sync, want 1", n)
	}
}

// TestInitialSyncScope: a sync source's snapshot, and its ops afterwards,
// carry namespaces this node keeps local (mongo.local_only), system
// databases and the proxy's own: nothing of them is written here; the
// replicated namespace arrives.
// Long on purpose: one scenario whose steps build on each other, read top
// to bottom (a table of cases would hide the order).
func TestInitialSyncScope(t *testing.T) {
	c := newTCluster(t, 1, func(o *Options) { o.BootstrapWait = 5 * time.Minute })
	n1 := c.nodes[0]
	n1.popts = func(o *mongoproxy.Options) { o.LocalOnly = []string{"app.private"} }
	n1.start()
	ctx := context.Background()
	// This node's own local-only data, written before the sync.
	_, err := n1.cl.Database("app").Collection("private").InsertOne(ctx, bson.D{{Key: "_id", Value: "mine"}, {Key: "email", Value: "me@example.com"}})
	must(t, err)

	evil := c.newEvil("evil")
	raw := func(d bson.D) bson.Raw {
		b, err := bson.Marshal(d)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	empty := raw(bson.D{})
	ddlRecord := func(ns, key string, op *crdt.Op) bson.Raw {
		op.Origin, op.Seq, op.TS = evil.origin, 1, evil.now()
		enc, err := op.MarshalBSON()
		if err != nil {
			t.Fatal(err)
		}
		return raw(bson.D{{Key: "_id", Value: ns + "\x00" + key}, {Key: "ns", Value: ns}, {Key: "key", Value: key},
			{Key: "ts", Value: op.TS.String()}, {Key: "op", Value: bson.Binary{Data: enc}}})
	}
	bad := []replica.SnapshotItem{
		{Kind: replica.SnapCollection, NS: "app.private", Doc: empty},
		{Kind: replica.SnapIndex, NS: "app.private", Doc: raw(bson.D{{Key: "key", Value: bson.D{{Key: "email", Value: 1}}}, {Key: "name", Value: "email_1"}, {Key: "unique", Value: true}})},
		{Kind: replica.SnapDoc, NS: "app.private", Doc: raw(bson.D{{Key: "_id", Value: "attacker"}})},
		{Kind: replica.SnapCollection, NS: "admin.evil", Doc: empty},
		{Kind: replica.SnapDoc, NS: "admin.evil", Doc: raw(bson.D{{Key: "_id", Value: 1}})},
		{Kind: replica.SnapCollection, NS: "local.evil", Doc: empty},
		{Kind: replica.SnapIndex, NS: "local.evil", Doc: raw(bson.D{{Key: "key", Value: bson.D{{Key: "x", Value: 1}}}, {Key: "name", Value: "x_1"}})},
		{Kind: replica.SnapDoc, NS: "local.evil", Doc: raw(bson.D{{Key: "_id", Value: 1}})},
		{Kind: replica.SnapCollection, NS: "config.evil", Doc: empty},
		{Kind: replica.SnapCollection, NS: "edgenode_meta.evil", Doc: empty},
		{Kind: replica.SnapTombstone, Doc: raw(bson.D{{Key: "_id", Value: "app.private\x00mine"}, {Key: "ns", Value: "app.private"}, {Key: "id", Value: "mine"}})},
		// A tombstone claiming a replicated namespace, keyed in another.
		{Kind: replica.SnapTombstone, Doc: raw(bson.D{{Key: "_id", Value: "app.private\x00x"}, {Key: "ns", Value: "app.ok"}, {Key: "id", Value: "x"}})},
		{Kind: replica.SnapDDL, Doc: ddlRecord("app.private", "drop", ddlOp("app.private", crdt.DDLKey(""), bson.D{{Key: "drop", Value: "private"}}))},
		{Kind: replica.SnapDDL, Doc: ddlRecord("admin.evil", "collection", ddlOp("admin.evil", crdt.DDLKey(""), bson.D{{Key: "create", Value: "evil"}}))},
	}
	good := []replica.SnapshotItem{
		{Kind: replica.SnapCollection, NS: "app.ok", Doc: empty},
		{Kind: replica.SnapDoc, NS: "app.ok", Doc: raw(bson.D{{Key: "_id", Value: "legit"}})},
	}
	evil.onSync(func(to string, session uint64) {
		evil.send(to, SyncTopic, (&syncMsg{typ: msgSyncBegin, session: session, vector: map[string]uint64{}, clock: evil.now()}).encode())
		evil.send(to, SyncTopic, (&syncMsg{typ: msgSyncItems, session: session, chunk: 1, items: append(slices.Clone(good), bad...)}).encode())
		evil.send(to, SyncTopic, (&syncMsg{typ: msgSyncEnd, session: session, chunk: 1}).encode())
	})
	testkit.WaitFor(t, 120*time.Second, "an initial sync of n1 from evil", func() bool { return n1.rep.Status().State == "synced" })
	if n := countDocs(t, n1.direct, "app.ok", nil); n != 1 {
		t.Fatalf("app.ok has %d documents after the sync, want 1", n)
	}
	checkNothingWritten := func(when string) {
		t.Helper()
		for _, db := range []string{"admin", "local", "config", "edgenode_meta"} {
			names, err := n1.direct.Database(db).ListCollectionNames(ctx, bson.D{})
			must(t, err)
			for _, n := range names {
				if strings.HasPrefix(n, "evil") {
					t.Errorf("%s: collection %s.%s created", when, db, n)
				}
			}
		}
		specs, err := n1.direct.Database("app").Collection("private").Indexes().ListSpecifications(ctx)
		must(t, err)
		for _, s := range specs {
			if s.Name != "_id_" {
				t.Errorf("%s: index %s created on the local-only collection app.private", when, s.Name)
			}
		}
		if n := countDocs(t, n1.direct, "app.private", nil); n != 1 {
			t.Errorf("%s: local-only app.private has %d documents, want only its own", when, n)
		}
		if n := countDocs(t, n1.direct, "edgenode_meta.tombstones", nil); n != 0 {
			t.Errorf("%s: %d tombstones stored for namespaces not replicated here", when, n)
		}
		if n := countDocs(t, n1.direct, "edgenode_meta.ddl", nil); n != 0 {
			t.Errorf("%s: %d DDL records stored for namespaces not replicated here", when, n)
		}
	}
	checkNothingWritten("initial sync")
	if v := metricValue(t, n1.reg, "edgenode_mongo_repl_sync_refused_items_total", map[string]string{"peer": "evil"}); v < float64(len(bad)) {
		t.Errorf("refused snapshot items counted %v, want %d", v, len(bad))
	}
	if logs := n1.logs.String(); !strings.Contains(logs, "admin.evil") || !strings.Contains(logs, "peer=evil") {
		t.Errorf("no log line names the refused namespaces and the peer:\n%s", logs)
	}

	// Streamed ops from the same peer.
	evil.sendOps(n1.id, 1,
		ddlOp("app.private", crdt.DDLKey("email_1"), bson.D{{Key: "createIndexes", Value: "private"},
			{Key: "indexes", Value: bson.A{bson.D{{Key: "key", Value: bson.D{{Key: "email", Value: 1}}}, {Key: "name", Value: "email_1"}, {Key: "unique", Value: true}}}}}),
		insertOp("admin.evil", 2),
		insertOp("local.evil", 2),
		insertOp("app.private", "attacker2"),
		ddlOp("edgenode_meta.evil", crdt.DDLKey(""), bson.D{{Key: "create", Value: "evil"}}),
		insertOp("app.ok", "legit2"))
	testkit.WaitFor(t, 60*time.Second, "evil's ops applied on n1", func() bool {
		a, _ := evil.lastAck()
		return a.pos == 6 && countDocs(t, n1.direct, "app.ok", nil) == 2
	})
	checkNothingWritten("streamed ops")
}

// TestClockSkewOpsFlowOnceClocksAgree: a real node whose clock was dragged
// ahead (by a peer within its own bound, beyond n1's) keeps the ops n1
// refuses, and they reach n1 once the clocks agree.
func TestClockSkewOpsFlowOnceClocksAgree(t *testing.T) {
	const skew, drag = 5 * time.Second, 20 * time.Second
	c := newTCluster(t, 2, nil)
	n1, n2 := c.nodes[0], c.nodes[1]
	n1.popts = func(o *mongoproxy.Options) { o.MaxClockSkew = skew }
	n1.start()
	n2.start()
	c.waitWritable(n1, n2)
	ctx := context.Background()

	evil := c.newEvil("evil")
	evil.offset.Store(drag.Milliseconds())
	testkit.WaitFor(t, 60*time.Second, "n2's clock dragged ahead", func() bool { return clockAhead(n2.proxy.Replica().Frontier()) > drag-5*time.Second })
	_, err := n2.cl.Database("app").Collection("c").InsertOne(ctx, bson.D{{Key: "_id", Value: "ahead"}})
	must(t, err)
	evil.offset.Store(0) // n2's clock now stays where it was dragged until the wall clock gets there
	testkit.WaitFor(t, 60*time.Second, "n1 to refuse n2's op", func() bool {
		return metricValue(t, n1.reg, "edgenode_mongo_repl_clock_skew_refused_total", map[string]string{"peer": n2.id, "what": "ops"}) >= 1
	})
	if d := clockAhead(n1.proxy.Replica().Frontier()); d > 2*skew {
		t.Errorf("n1's clock moved %v ahead of its wall clock", d.Round(time.Second))
	}
	testkit.WaitFor(t, 120*time.Second, "n2's op on n1 once the clocks agree", func() bool {
		return countDocs(t, n1.direct, "app.c", bson.D{{Key: "_id", Value: "ahead"}}) == 1
	})
	if d := clockAhead(n1.proxy.Replica().MaxTimestamp()); d > 2*skew {
		t.Errorf("n1's op log persisted a clock %v ahead of the wall clock", d.Round(time.Second))
	}
	waitSame(t, "app", 60*time.Second, n1, n2)
}
