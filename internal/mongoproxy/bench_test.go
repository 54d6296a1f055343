package mongoproxy

import (
	"bufio"
	"flag"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"

	"github.com/edgenode/edgenode/internal/mongoproxy/wire"
)

const benchDocs = 1000

// flagBenchUpstream runs the benchmarks over another upstream than the
// embedded FerretDB (FerretDB on PostgreSQL, say): any MongoDB URI. The
// proxy, the direct paths and the seed documents all use it.
var flagBenchUpstream = flag.String("mongoproxy.bench-upstream", "", "MongoDB URI of the benchmarks' upstream (empty: the embedded FerretDB)")

// benchEnv is one FerretDB with a proxy in front, and two collections with
// the same documents: one written through the proxy (so its documents carry
// metadata), one written directly. Paths compared:
//   - proxy: the replicated collection through the proxy;
//   - direct: the same collection (same stored documents, metadata
//     included) straight to the database: the cost of the proxy itself;
//   - direct-plain: the collection without metadata straight to the
//     database: what the application would see without edgenode at all
//     (the difference to direct is the database's cost of the metadata).
type benchEnv struct {
	tp                            *testProxy
	proxied, proxiedDirect, plain *mongo.Collection
}

func (e *benchEnv) paths() []struct {
	name string
	c    *mongo.Collection
} {
	return []struct {
		name string
		c    *mongo.Collection
	}{{"direct-plain", e.plain}, {"direct", e.proxiedDirect}, {"proxy", e.proxied}}
}

var (
	benchOnce sync.Once
	benchE    *benchEnv
)

func setupBench(b *testing.B) *benchEnv {
	benchOnce.Do(func() {
		uri := *flagBenchUpstream
		if uri == "" {
			uri = upstream(b, 0)
		}
		tp := newProxyAtNoCleanup(b, uri, "bench")
		// A single node: every op is causally stable as soon as it is
		// applied, so metadata is compacted on every write, as replication
		// does from peer acknowledgements. Without it, pending $inc ops
		// would grow each document for the whole run.
		// Shared by every benchmark of the run: with b's cleanup it
		// stopped when the first benchmark ended, and each later one ran
		// without compaction (its documents' metadata growing with every
		// write, every op paying for it).
		stableFollowsClock(&noCleanupTB{B: b}, tp)
		db := freshDB("bench")
		e := &benchEnv{tp: tp, proxied: tp.client.Database(db).Collection("proxied"),
			proxiedDirect: tp.direct.Database(db).Collection("proxied"), plain: tp.direct.Database(db).Collection("plain")}
		var docs []any
		for i := 0; i < benchDocs; i++ {
			docs = append(docs, bson.D{{Key: "_id", Value: benchID(i)}, {Key: "name", Value: fmt.Sprintf("user-%d", i)}, {Key: "n", Value: 0}, {Key: "tags", Value: bson.A{"a", "b"}}})
		}
		if _, err := e.proxied.InsertMany(testCtx, docs); err != nil {
			b.Fatal(err)
		}
		if _, err := e.plain.InsertMany(testCtx, docs); err != nil {
			b.Fatal(err)
		}
		benchE = e
	})
	if benchE == nil {
		b.Fatal("bench setup failed")
	}
	return benchE
}

// newProxyAtNoCleanup is newProxyAt for state shared by several benchmarks
// (the process exit cleans up).
func newProxyAtNoCleanup(b *testing.B, uri, node string) *testProxy {
	t := &noCleanupTB{B: b}
	return newProxyAt(t, uri, node)
}

type noCleanupTB struct{ *testing.B }

func (*noCleanupTB) Cleanup(func()) {}
func (t *noCleanupTB) TempDir() string {
	d, err := os.MkdirTemp(dbRoot, "bench-")
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// benchID is a string _id: FerretDB v1 uses its _id index only for string
// and ObjectId _ids (it scans the collection for numbers), and applications
// mostly use ObjectIds.
func benchID(i int) string { return fmt.Sprintf("u%06d", i) }

// runConcurrent runs b.N calls of op over conc goroutines and reports
// throughput and p99 latency.
func runConcurrent(b *testing.B, conc int, op func(rng *rand.Rand) error) {
	b.ReportAllocs()
	var next atomic.Int64
	lat := make([][]time.Duration, conc)
	var wg sync.WaitGroup
	var failed atomic.Value
	b.ResetTimer()
	start := time.Now()
	for g := 0; g < conc; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 7))
			for next.Add(1) <= int64(b.N) {
				t0 := time.Now()
				if err := op(rng); err != nil {
					failed.Store(err)
					return
				}
				lat[g] = append(lat[g], time.Since(t0))
			}
		}(g)
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	if err, _ := failed.Load().(error); err != nil {
		b.Fatal(err)
	}
	all := slices.Concat(lat...)
	slices.Sort(all)
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "ops/s")
	if len(all) > 0 {
		b.ReportMetric(float64(all[len(all)*99/100].Microseconds())/1000, "p99-ms")
	}
}

// BenchmarkFindOneByID: reads by _id, through the proxy and straight to the
// database, at 1 and 32 concurrent clients.
func BenchmarkFindOneByID(b *testing.B) {
	e := setupBench(b)
	for _, conc := range []int{1, 32} {
		for _, path := range e.paths() {
			c := path.c
			b.Run(fmt.Sprintf("%s/clients=%d", path.name, conc), func(b *testing.B) {
				runConcurrent(b, conc, func(rng *rand.Rand) error {
					return c.FindOne(testCtx, bson.D{{Key: "_id", Value: benchID(rng.IntN(benchDocs))}}).Err()
				})
			})
		}
	}
}

// BenchmarkUpdateOneSetInc: updateOne by _id with $set and $inc; through the
// proxy this includes the fsync'd op log append. (The direct path writes the
// replicated collection behind the proxy's back, which no application may
// do; it only serves as the baseline here.)
func BenchmarkUpdateOneSetInc(b *testing.B) {
	e := setupBench(b)
	for _, conc := range []int{1, 32} {
		for _, path := range e.paths() {
			c := path.c
			b.Run(fmt.Sprintf("%s/clients=%d", path.name, conc), func(b *testing.B) {
				runConcurrent(b, conc, func(rng *rand.Rand) error {
					_, err := c.UpdateOne(testCtx, bson.D{{Key: "_id", Value: benchID(rng.IntN(benchDocs))}},
						bson.D{{Key: "$set", Value: bson.D{{Key: "name", Value: strconv.Itoa(rng.IntN(1e6))}}}, {Key: "$inc", Value: bson.D{{Key: "n", Value: 1}}}})
					return err
				})
			})
		}
	}
}

// BenchmarkIdleConnections measures the resident memory of a proxy process
// (the test binary re-executed as a proxy) holding 1,000 idle client
// connections, each of which completed a hello (so its upstream connection
// is open too).
func BenchmarkIdleConnections(b *testing.B) {
	const conns = 1000
	up := upstream(b, 0)
	ch := startChild(b, up, b.TempDir(), "mem", "", envMaxConns+"=5000")
	before := rssMiB(b, ch.cmd.Process.Pid)
	hello := wire.AppendMsg(nil, 1, 0, 0, rawDoc(b, bson.D{{Key: "hello", Value: 1}, {Key: "$db", Value: "admin"}}))
	var open []net.Conn
	defer func() {
		for _, c := range open {
			_ = c.Close()
		}
	}()
	for i := 0; i < conns; i++ {
		nc, err := net.Dial("tcp", ch.addr)
		if err != nil {
			b.Fatal(err)
		}
		open = append(open, nc)
		if _, err := nc.Write(hello); err != nil {
			b.Fatal(err)
		}
		if _, err := wire.ReadMessage(nc, nil, 0); err != nil {
			b.Fatalf("hello %d: %v", i, err)
		}
	}
	time.Sleep(500 * time.Millisecond)
	after := rssMiB(b, ch.cmd.Process.Pid)
	for i := 0; i < b.N; i++ {
		_ = i // the measurement above is the benchmark
	}
	b.ReportMetric(after, "RSS-MiB")
	b.ReportMetric(after-before, "delta-MiB")
	b.ReportMetric((after-before)*1024/conns, "KiB/conn")
}

func rssMiB(b *testing.B, pid int) float64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			return kb / 1024
		}
	}
	b.Fatal("no VmRSS")
	return 0
}

// BenchmarkHotDocInc: 32 clients $inc the same document (a comment
// thread's counter), or one of 10, by _id: the writes a document's lease
// serializes, which the core stores in groups (one read, one log append,
// one database write for the writes waiting for one document). The direct
// paths lose increments on FerretDB (its updates are not atomic per
// document); they serve as the database's own speed only.
func BenchmarkHotDocInc(b *testing.B) {
	e := setupBench(b)
	for _, docs := range []int{1, 10} {
		for _, path := range e.paths() {
			c := path.c
			b.Run(fmt.Sprintf("%s/docs=%d", path.name, docs), func(b *testing.B) {
				runConcurrent(b, 32, func(rng *rand.Rand) error {
					_, err := c.UpdateOne(testCtx, bson.D{{Key: "_id", Value: benchID(rng.IntN(docs))}},
						bson.D{{Key: "$inc", Value: bson.D{{Key: "n", Value: 1}}}})
					return err
				})
			})
		}
	}
}
