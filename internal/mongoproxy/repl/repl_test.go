package repl

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
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
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/edgenode/edgenode/internal/mesh"
	"github.com/edgenode/edgenode/internal/mesh/pki"
	"github.com/edgenode/edgenode/internal/mongoproxy"
	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
	"github.com/edgenode/edgenode/internal/mongoproxy/embedded"
)

// In-process clusters: each node is a real embedded FerretDB, a real proxy
// on a loopback port, a real mesh (QUIC links, memberlist) on its own
// 127.0.x.y address, and a Replicator. The multi-process fault tests are in
// cmd/edgenode/repl_test.go.

type tcluster struct {
	t       *testing.T
	dir     string
	caDir   string
	key     []byte
	addrs   []string // gossip addresses of every node that may start (seeds)
	nodes   []*tnode
	verbose bool
}

type tnode struct {
	c      *tcluster
	id     string
	dir    string
	ip     string
	mopts  mesh.Options
	ropts  Options
	popts  func(*mongoproxy.Options) // adjusts the proxy's options (nil: none)
	db     *embedded.Server
	proxy  *mongoproxy.Proxy
	mesh   *mesh.Mesh
	rep    *Replicator
	reg    *prometheus.Registry
	crash  context.CancelFunc // stops the mesh without a goodbye
	cl     *mongo.Client      // through the proxy
	direct *mongo.Client      // straight to the database
	logs   *logBuf
}

type logBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

var ipSeq atomic.Uint32

func freeAddr(t testing.TB, ip string) string {
	t.Helper()
	for range 50 {
		tl, err := net.Listen("tcp", ip+":0")
		if err != nil {
			t.Fatal(err)
		}
		port := tl.Addr().(*net.TCPAddr).Port
		ul, err := net.ListenPacket("udp", fmt.Sprintf("%s:%d", ip, port))
		tl.Close()
		if err != nil {
			continue
		}
		ul.Close()
		return fmt.Sprintf("%s:%d", ip, port)
	}
	t.Fatal("no free port")
	return ""
}

// newTCluster prepares n nodes (none started) with fast timings.
func newTCluster(t *testing.T, n int, tune func(*Options)) *tcluster {
	t.Helper()
	if testing.Short() {
		t.Skip("starts several databases and meshes")
	}
	dir := t.TempDir()
	c := &tcluster{t: t, dir: dir, caDir: filepath.Join(dir, "ca"), key: make([]byte, 32), verbose: os.Getenv("REPL_TEST_LOG") != ""}
	_, _ = rand.Read(c.key)
	if err := pki.InitCA(c.caDir); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		// 127.0.60-69.x: clear of the mesh tests' and scripts/cluster's addresses.
		k := ipSeq.Add(1)
		ip := fmt.Sprintf("127.0.%d.%d", 60+k/200, 10+k%200)
		id := fmt.Sprintf("n%d", i+1)
		certDir := filepath.Join(dir, "certs")
		if _, _, err := pki.IssueNode(c.caDir, id, certDir, []string{ip}); err != nil {
			t.Fatal(err)
		}
		bind := freeAddr(t, ip)
		c.addrs = append(c.addrs, bind)
		ro := Options{HeartbeatInterval: 100 * time.Millisecond, BootstrapWait: time.Second, ResendAfter: time.Second, SyncTimeout: 10 * time.Second}
		if tune != nil {
			tune(&ro)
		}
		nd := &tnode{c: c, id: id, dir: filepath.Join(dir, id), ip: ip, ropts: ro, logs: &logBuf{},
			mopts: mesh.Options{NodeID: id, BindAddr: bind, LinkAddr: freeAddr(t, ip), GossipKeys: [][]byte{c.key},
				CACertFile: filepath.Join(c.caDir, pki.CACertName), CertFile: filepath.Join(certDir, id+".crt"), KeyFile: filepath.Join(certDir, id+".key"),
				Profile: "local", BinaryVersion: "test", ConfigVersion: "test"}}
		c.nodes = append(c.nodes, nd)
	}
	for _, nd := range c.nodes {
		nd.mopts.Seeds = c.addrs
	}
	t.Cleanup(func() {
		for _, nd := range c.nodes {
			nd.stop()
			if nd.db != nil {
				nd.db.Stop()
			}
		}
		if t.Failed() || c.verbose {
			for _, nd := range c.nodes {
				t.Logf("---- %s log:\n%s", nd.id, nd.logs.String())
			}
		}
	})
	return c
}

// meshTransport is the mesh as replication's transport (as the node wires
// it): the mesh's send errors become the ones Transport documents.
type meshTransport struct{ *mesh.Mesh }

func (t meshTransport) Send(node, topic string, msg []byte) error {
	err := t.Mesh.Send(node, topic, msg)
	switch {
	case errors.Is(err, mesh.ErrQueueFull):
		return fmt.Errorf("%w: %w", ErrQueueFull, err)
	case errors.Is(err, mesh.ErrTooLarge):
		return fmt.Errorf("%w: %w", ErrTooLarge, err)
	}
	return err
}

// start starts the node's database (once), proxy, mesh and replicator.
func (nd *tnode) start() {
	t := nd.c.t
	t.Helper()
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(nd.logs, &slog.HandlerOptions{Level: slog.LevelInfo})).With("node", nd.id)
	if nd.db == nil {
		db, err := embedded.Start(ctx, filepath.Join(nd.dir, "mongo"), log)
		if err != nil {
			t.Fatal(err)
		}
		nd.db = db
		if nd.direct, err = mongo.Connect(options.Client().ApplyURI(db.URI())); err != nil {
			t.Fatal(err)
		}
	}
	origin, err := Incarnation(nd.dir, nd.id)
	if err != nil {
		t.Fatal(err)
	}
	nd.reg = prometheus.NewRegistry()
	popts := mongoproxy.Options{Listen: nd.ip + ":0", Upstream: nd.db.URI(), NodeID: origin, DataDir: nd.dir,
		HoldWrites: "replication is starting", SyncDatabase: nd.db.Sync}
	if nd.popts != nil {
		nd.popts(&popts)
	}
	nd.proxy, err = mongoproxy.New(popts, log, nd.reg)
	if err != nil {
		t.Fatal(err)
	}
	if err := nd.proxy.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if nd.mesh, err = mesh.New(nd.mopts, log, nd.reg); err != nil {
		t.Fatal(err)
	}
	mctx, crash := context.WithCancel(ctx)
	nd.crash = crash
	if err := nd.mesh.Start(mctx); err != nil {
		t.Fatal(err)
	}
	ro := nd.ropts
	ro.NodeID, ro.Transport = nd.id, meshTransport{nd.mesh}
	if nd.rep, err = New(ro, nd.proxy.Replica(), log, nd.reg); err != nil {
		t.Fatal(err)
	}
	if err := nd.rep.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if nd.cl, err = mongo.Connect(options.Client().ApplyURI("mongodb://" + nd.proxy.Addr().String() + "/?directConnection=true").SetRetryWrites(false)); err != nil {
		t.Fatal(err)
	}
}

// stop stops replication, the proxy and the mesh (the database stays).
func (nd *tnode) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if nd.cl != nil {
		_ = nd.cl.Disconnect(ctx)
		nd.cl = nil
	}
	if nd.rep != nil {
		if err := nd.rep.Stop(ctx); err != nil {
			nd.c.t.Errorf("%s: stop replication: %v", nd.id, err)
		}
		nd.rep = nil
	}
	if nd.proxy != nil {
		_ = nd.proxy.Shutdown(ctx)
		nd.proxy = nil
	}
	if nd.mesh != nil {
		_ = nd.mesh.Leave(ctx)
		nd.mesh = nil
	}
}

func (c *tcluster) waitWritable(nodes ...*tnode) {
	c.t.Helper()
	waitUntil(c.t, 60*time.Second, "nodes synced and writable", func() bool {
		for _, nd := range nodes {
			st := nd.rep.Status()
			if st.State != "synced" || st.Writes != "accepted" {
				return false
			}
		}
		return true
	})
}

func waitUntil(t testing.TB, d time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// state reads, through the proxy, every document of every collection of
// database db, and the index names of each collection.
func state(ctx context.Context, cl *mongo.Client, db string) (string, error) {
	var b strings.Builder
	names, err := cl.Database(db).ListCollectionNames(ctx, bson.D{})
	if err != nil {
		return "", err
	}
	slices.Sort(names)
	for _, n := range names {
		c := cl.Database(db).Collection(n)
		specs, err := c.Indexes().ListSpecifications(ctx)
		if err != nil {
			return "", err
		}
		var idx []string
		for _, s := range specs {
			idx = append(idx, s.Name)
		}
		slices.Sort(idx)
		cur, err := c.Find(ctx, bson.D{}, options.Find().SetSort(bson.D{{Key: "_id", Value: 1}}))
		if err != nil {
			return "", err
		}
		var docs []string
		for cur.Next(ctx) {
			docs = append(docs, cur.Current.String())
		}
		_ = cur.Close(ctx)
		fmt.Fprintf(&b, "== %s indexes %v, %d docs\n%s\n", n, idx, len(docs), strings.Join(docs, "\n"))
	}
	return b.String(), nil
}

// waitSame waits until every node shows the same state of db.
func waitSame(t *testing.T, db string, d time.Duration, nodes ...*tnode) string {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		var first, diff string
		for i, nd := range nodes {
			s, err := state(ctx, nd.cl, db)
			if err != nil {
				diff = err.Error()
				break
			}
			if i == 0 {
				first = s
			} else if s != first {
				diff = fmt.Sprintf("%s:\n%s\n%s:\n%s", nodes[0].id, first, nd.id, s)
			}
		}
		cancel()
		if diff == "" {
			return first
		}
		if time.Now().After(deadline) {
			t.Fatalf("not converged after %v:\n%s", d, diff)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// pendingOps reads a document's metadata straight from the database and
// returns how many commutative ops it retains (what compaction folds).
func pendingOps(t *testing.T, nd *tnode, ns string, id any) int {
	t.Helper()
	db, coll, _ := strings.Cut(ns, ".")
	raw, err := nd.direct.Database(db).Collection(coll).FindOne(context.Background(), bson.D{{Key: "_id", Value: id}}).Raw()
	if err != nil {
		t.Fatal(err)
	}
	_, data := raw.Lookup(crdt.MetaField, "b").Binary()
	m, err := crdt.DecodeMeta(bson.RawValue{Type: bson.TypeEmbeddedDocument, Value: data})
	if err != nil {
		t.Fatal(err)
	}
	return m.PendingOps()
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

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

func toInt(v any) int64 {
	switch x := v.(type) {
	case int32:
		return int64(x)
	case int64:
		return x
	case float64:
		return int64(x)
	}
	return -1
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
	waitUntil(t, 30*time.Second, "n1 to forget n2 and trim its log", func() bool {
		_, err := coll.UpdateOne(ctx, bson.D{{Key: "_id", Value: "d00100"}}, bson.D{{Key: "$inc", Value: bson.D{{Key: "n", Value: 1}}}})
		must(t, err)
		_, known := core.PeerAcks()["n2"]
		return !known && core.FirstSeq() > had+1
	})
	n2.start()
	waitUntil(t, 60*time.Second, "n2 to resync", func() bool {
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

// wipe stops the node, removes its whole data folder (op log, origin,
// database) and starts it again: a new incarnation that must resync.
func (nd *tnode) wipe() {
	t := nd.c.t
	// As after kill -9: the mesh vanishes without a goodbye (peers keep the
	// node in their map, dead), nothing is flushed on purpose.
	nd.crash()
	nd.stop()
	nd.db.Stop()
	_ = nd.direct.Disconnect(context.Background())
	nd.db, nd.direct = nil, nil
	must(t, os.RemoveAll(nd.dir))
	nd.start()
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
		waitUntil(t, 30*time.Second, nd.id+"'s ops acknowledged", func() bool {
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
