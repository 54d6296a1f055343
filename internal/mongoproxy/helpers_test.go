package mongoproxy

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
	"github.com/edgenode/edgenode/internal/mongoproxy/embedded"
	"github.com/edgenode/edgenode/internal/replica"
	"github.com/edgenode/edgenode/internal/testkit"
)

var (
	flagLong    = flag.Bool("mongoproxy.long", false, "run the long variants (more convergence cases)")
	flagVerbose = flag.Bool("mongoproxy.verbose", false, "log proxy and FerretDB output")
)

// Child-process mode: the crash test and the memory benchmark re-execute
// the test binary as a standalone proxy process.
const (
	envChild     = "EDGENODE_MONGOPROXY_TEST_CHILD"
	envUpstream  = "EDGENODE_MONGOPROXY_TEST_UPSTREAM"
	envDataDir   = "EDGENODE_MONGOPROXY_TEST_DATADIR"
	envNode      = "EDGENODE_MONGOPROXY_TEST_NODE"
	envFault     = "EDGENODE_MONGOPROXY_TEST_FAULT" // "point:n": SIGKILL at the n-th hit of point
	envMaxConns  = "EDGENODE_MONGOPROXY_TEST_MAXCONNS"
	childAddrTag = "PROXY_ADDR "
)

var (
	dbOnce  sync.Mutex
	dbPool  []*embedded.Server
	dbRoot  string
	testCtx = context.Background()
)

func TestMain(m *testing.M) {
	if os.Getenv(envChild) == "1" {
		os.Exit(childMain())
	}
	flag.Parse()
	var err error
	dbRoot, err = os.MkdirTemp("", "mongoproxy-test-")
	if err != nil {
		panic(err)
	}
	code := m.Run()
	dbOnce.Lock()
	for _, s := range dbPool {
		s.Stop()
	}
	dbOnce.Unlock()
	stopAuthFerret()
	if pgPool.s != nil {
		pgPool.s.Stop()
	}
	_ = os.RemoveAll(dbRoot)
	os.Exit(code)
}

// childMain runs a proxy until killed or until stdin closes.
func childMain() int {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	opts := Options{Listen: "127.0.0.1:0", Upstream: os.Getenv(envUpstream), NodeID: os.Getenv(envNode), DataDir: os.Getenv(envDataDir)}
	if n, err := strconv.Atoi(os.Getenv(envMaxConns)); err == nil {
		opts.MaxConns = n
	}
	if f := os.Getenv(envFault); f != "" {
		point, nStr, _ := strings.Cut(f, ":")
		n, _ := strconv.Atoi(nStr)
		var hits atomic.Int64
		opts.Faults = func(at replica.FaultPoint) {
			if string(at) == point && hits.Add(1) == int64(n) {
				_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
				select {} // never returns: the kernel takes it from here
			}
		}
	}
	p, err := New(opts, log, prometheus.NewRegistry())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if err := p.Start(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	fmt.Printf("%s%s\n", childAddrTag, p.Addr())
	_, _ = io.Copy(io.Discard, os.Stdin)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = p.Shutdown(ctx)
	return 0
}

// child is a proxy running in another process.
type child struct {
	cmd      *exec.Cmd
	stdin    io.WriteCloser
	addr     string
	waitOnce sync.Once
	waitErr  error
	exited   chan struct{}
}

// wait waits for the child to exit (however it ends).
func (c *child) wait() error {
	c.waitOnce.Do(func() {
		go func() { c.waitErr = c.cmd.Wait(); close(c.exited) }()
	})
	<-c.exited
	return c.waitErr
}

func startChild(t testing.TB, upstream, dataDir, node, fault string, extraEnv ...string) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envChild+"=1", envUpstream+"="+upstream, envDataDir+"="+dataDir, envNode+"="+node, envFault+"="+fault)
	cmd.Env = append(cmd.Env, extraEnv...)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, stdin: stdin, exited: make(chan struct{})}
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if a, ok := strings.CutPrefix(sc.Text(), childAddrTag); ok {
			c.addr = a
			break
		}
	}
	if c.addr == "" {
		_ = c.wait()
		t.Fatalf("child proxy did not start (exit %v)", cmd.ProcessState)
	}
	go func() { _, _ = io.Copy(io.Discard, out) }()
	t.Cleanup(func() { c.stop() })
	return c
}

// stop asks the child to shut down (closes its stdin) and waits.
func (c *child) stop() {
	_ = c.stdin.Close()
	done := make(chan struct{})
	go func() { _ = c.wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		_ = c.cmd.Process.Kill()
		<-done
	}
}

// upstream returns the URI of the i-th shared FerretDB instance (started on
// first use and reused by every test; tests use their own databases).
func upstream(t testing.TB, i int) string {
	t.Helper()
	dbOnce.Lock()
	defer dbOnce.Unlock()
	for len(dbPool) <= i {
		s, err := embedded.Start(context.Background(), filepath.Join(dbRoot, fmt.Sprintf("db%d", len(dbPool))), testLogger())
		if err != nil {
			t.Fatal(err)
		}
		dbPool = append(dbPool, s)
	}
	return dbPool[i].URI()
}

// upstreamKind names a database the proxy runs in front of.
type upstreamKind string

const (
	// sqliteKind is the embedded FerretDB 1.24.2 over SQLite, in process.
	sqliteKind upstreamKind = "sqlite"
	// postgresKind is FerretDB 1.24.2 over PostgreSQL, each its own
	// process (testkit.StartPGFerrets): a real external database.
	postgresKind upstreamKind = "postgresql"
)

// upstreamKinds are the databases the end-to-end tests run over.
var upstreamKinds = []upstreamKind{sqliteKind, postgresKind}

// pgPool is the package's FerretDB-on-PostgreSQL upstreams: one server,
// started on first use, with one FerretDB per index (stopped by TestMain).
var pgPool struct {
	mu sync.Mutex
	s  *testkit.PGFerrets
}

// upstreamOf returns the URI of the i-th shared upstream of kind k (tests
// use their own databases on it).
func upstreamOf(t testing.TB, k upstreamKind, i int) string {
	t.Helper()
	if k == sqliteKind {
		return upstream(t, i)
	}
	pgPool.mu.Lock()
	defer pgPool.mu.Unlock()
	if pgPool.s == nil {
		s, err := testkit.StartPGFerrets(0)
		if err != nil {
			t.Fatalf("FerretDB on PostgreSQL: %v", err)
		}
		pgPool.s = s
	}
	if n := i + 1 - len(pgPool.s.Ferrets); n > 0 {
		if err := pgPool.s.Add(n); err != nil {
			t.Fatalf("FerretDB on PostgreSQL: %v", err)
		}
	}
	return pgPool.s.Ferrets[i].URI
}

func testLogger() *slog.Logger {
	if *flagVerbose {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type testProxy struct {
	*Proxy
	client *mongo.Client // through the proxy
	direct *mongo.Client // straight to the database
	logs   *syncBuffer
	reg    *prometheus.Registry
	dir    string
	opts   Options
}

type proxyOpt func(*Options)

// newProxy starts a proxy in front of FerretDB instance db and returns it
// with driver clients through it and direct to the database.
func newProxy(t testing.TB, db int, node string, mods ...proxyOpt) *testProxy {
	t.Helper()
	return newProxyAt(t, upstream(t, db), node, mods...)
}

// newProxyOver is newProxy over the db-th upstream of kind k.
func newProxyOver(t testing.TB, k upstreamKind, db int, node string, mods ...proxyOpt) *testProxy {
	t.Helper()
	return newProxyAt(t, upstreamOf(t, k, db), node, mods...)
}

// newProxyAt is newProxy in front of the database at uri.
func newProxyAt(t testing.TB, uri, node string, mods ...proxyOpt) *testProxy {
	t.Helper()
	tp := &testProxy{logs: &syncBuffer{}, dir: t.TempDir()}
	tp.opts = Options{Listen: "127.0.0.1:0", Upstream: uri, NodeID: node, DataDir: tp.dir}
	for _, m := range mods {
		m(&tp.opts)
	}
	tp.start(t)
	tp.direct = connect(t, tp.opts.Upstream)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		_ = tp.direct.Disconnect(ctx)
		tp.stop(t)
	})
	return tp
}

// start starts a proxy with tp's options and data folder.
func (tp *testProxy) start(t testing.TB) {
	t.Helper()
	var w io.Writer = tp.logs
	if *flagVerbose {
		w = io.MultiWriter(tp.logs, os.Stderr)
	}
	tp.reg = prometheus.NewRegistry()
	p, err := New(tp.opts, slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo})), tp.reg)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(testCtx); err != nil {
		t.Fatal(err)
	}
	tp.Proxy = p
	tp.client = connect(t, "mongodb://"+p.Addr().String()+"/")
}

func (tp *testProxy) stop(t testing.TB) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_ = tp.client.Disconnect(ctx)
	if err := tp.Shutdown(ctx); err != nil {
		t.Errorf("shutdown: %v", err)
	}
}

// restart stops the proxy and starts a new one on the same data folder
// (same op log) and database.
func (tp *testProxy) restart(t testing.TB) {
	t.Helper()
	tp.stop(t)
	tp.start(t)
}

// mongoPathsIf makes the proxy take the MongoDB code paths (versioned
// conditional writes, one-query reads of multi-document chunks) on
// FerretDB, when on is set.
func mongoPathsIf(on bool) proxyOpt {
	return func(o *Options) {
		if on {
			o.Capabilities = &replica.Capabilities{VersionedWrites: true, BatchReads: true}
		}
	}
}

// localOpsSince returns the ops tp logged locally after seq from, read
// from its op log as replication reads them.
func localOpsSince(t testing.TB, tp *testProxy, from uint64) []*crdt.Op {
	t.Helper()
	raws, err := tp.Replica().ReadOps(tp.Replica().Origin(), from, 1<<20, 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	ops := make([]*crdt.Op, len(raws))
	for i, raw := range raws {
		ops[i] = &crdt.Op{}
		if err := ops[i].UnmarshalBSON(raw); err != nil {
			t.Fatal(err)
		}
	}
	return ops
}

// stableFollowsClock gives the replica core, every millisecond until the
// test ends, the newest timestamp of its log as the compaction frontier: on
// a single node with no peers, every op logged is stable at once (one
// stamped but not applied yet is its document's lease holder's, which
// compacts after folding it in; every later op is stamped above).
func stableFollowsClock(t testing.TB, tp *testProxy) {
	rep := tp.Replica()
	rep.SetStable(rep.MaxTimestamp())
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				rep.SetStable(rep.MaxTimestamp())
			}
		}
	}()
	t.Cleanup(func() { close(done); <-stopped })
}

func connect(t testing.TB, uri string) *mongo.Client {
	t.Helper()
	c, err := mongo.Connect(options.Client().ApplyURI(uri).SetTimeout(60 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

var dbSeq atomic.Int64

// freshDB returns a database name no other test uses.
func freshDB(prefix string) string {
	return fmt.Sprintf("%s_%d_%d", prefix, os.Getpid(), dbSeq.Add(1))
}

// counter reads a counter's value from the registry.
func counter(t testing.TB, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	total := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				ok := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						ok = true
					}
				}
				if !ok {
					continue metrics
				}
			}
			if m.Counter != nil {
				total += m.Counter.GetValue()
			} else if m.Gauge != nil {
				total += m.Gauge.GetValue()
			}
		}
	}
	return total
}

// rawDoc decodes a document for comparisons in failure messages.
func rawDoc(t testing.TB, v any) bson.Raw {
	t.Helper()
	b, err := bson.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// findAll returns every document of a collection through client, by _id order.
func findAll(t testing.TB, c *mongo.Collection) []bson.Raw {
	t.Helper()
	cur, err := c.Find(testCtx, bson.D{}, options.Find().SetSort(bson.D{{Key: "_id", Value: 1}}))
	if err != nil {
		t.Fatal(err)
	}
	var out []bson.Raw
	for cur.Next(testCtx) {
		out = append(out, bytes.Clone(cur.Current))
	}
	if err := cur.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}
