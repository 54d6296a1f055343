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
	"github.com/edgenode/edgenode/internal/testkit"
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
	testkit.WaitFor(c.t, 60*time.Second, "nodes synced and writable", func() bool {
		for _, nd := range nodes {
			st := nd.rep.Status()
			if st.State != "synced" || st.Writes != "accepted" {
				return false
			}
		}
		return true
	})
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
	m, err := crdt.DecodeMetaWith(bson.RawValue{Type: bson.TypeEmbeddedDocument, Value: data}, raw)
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
