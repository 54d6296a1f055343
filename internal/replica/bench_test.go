package replica

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"path/filepath"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
	"github.com/edgenode/edgenode/internal/mongoproxy/embedded"
	"github.com/edgenode/edgenode/internal/testkit"
)

// flagBenchUpstream: the catch-up benchmark's database, any MongoDB URI
// ("pg": start FerretDB on PostgreSQL, "pg-indexed": the same with
// testkit.Postgres.IndexIDs; empty: the embedded FerretDB).
var flagBenchUpstream = flag.String("replica.bench-upstream", "", `MongoDB URI of BenchmarkCatchUp's database ("pg": a FerretDB on PostgreSQL started for it, "pg-indexed": with testkit.Postgres.IndexIDs; empty: the embedded FerretDB)`)

var flagBenchBatch = flag.Int("replica.bench-batch", 65536, "BenchmarkCatchUp's ops per ApplyRemote (the receiver merges up to 65,536 while a peer catches up, 8,192 before)")

// BenchmarkCatchUp is a node catching up: a peer's ops, $inc+$set updates
// of a working set of 10,000 documents (benchrepl's load), applied in the
// batches the receiver makes (-replica.bench-batch). It reports ops/s and
// the database writes per op.
func BenchmarkCatchUp(b *testing.B) {
	const docs = 10000
	r := openBenchReplica(b)
	ctx := context.Background()
	var seq uint64
	next := func(kind crdt.Kind, id string) *crdt.Op {
		seq++
		_, v, _ := bson.MarshalValue(id)
		return &crdt.Op{Origin: "peer", Seq: seq, TS: crdt.Timestamp{Wall: time.Now().UnixMilli(), Logical: uint32(seq), Node: "peer"},
			NS: "app.w", ID: bson.RawValue{Type: bson.TypeString, Value: v}, Kind: kind}
	}
	var seed []*crdt.Op
	for i := range docs {
		op := next(crdt.Insert, fmt.Sprintf("w%06d", i))
		op.Doc, _ = bson.Marshal(bson.D{{Key: "_id", Value: fmt.Sprintf("w%06d", i)}, {Key: "n", Value: int64(0)}, {Key: "s", Value: "seed"}})
		seed = append(seed, op)
	}
	if err := r.ApplyRemote(ctx, seed); err != nil {
		b.Fatal(err)
	}
	r.Forget() // a node coming back has nothing of the working set cached
	upd, _ := bson.Marshal(bson.D{{Key: "$inc", Value: bson.D{{Key: "n", Value: 1}}}, {Key: "$set", Value: bson.D{{Key: "s", Value: "node1"}}}})
	rng := rand.New(rand.NewPCG(1, 2))
	b.ResetTimer()
	start := time.Now()
	for done := 0; done < b.N; {
		n := min(b.N-done, *flagBenchBatch)
		batch := make([]*crdt.Op, n)
		for i := range batch {
			batch[i] = next(crdt.Update, fmt.Sprintf("w%06d", rng.IntN(docs)))
			batch[i].Update = upd
		}
		if err := r.ApplyRemote(ctx, batch); err != nil {
			b.Fatal(err)
		}
		done += n
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "ops/s")
}

func openBenchReplica(b *testing.B) *Replica {
	ctx := context.Background()
	dir := b.TempDir()
	log := slog.New(slog.DiscardHandler)
	uri := *flagBenchUpstream
	switch uri {
	case "":
		db, err := embedded.Start(ctx, filepath.Join(dir, "db"), log)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(db.Stop)
		uri = db.URI()
	case "pg":
		uri = testkit.PGUpstreams(b, 1)[0]
	case "pg-indexed":
		s, err := testkit.StartPGFerretsIndexed(1)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(s.Stop)
		uri = s.URIs()[0]
	}
	client, err := mongo.Connect(options.Client().ApplyURI(uri))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = client.Disconnect(context.Background()) })
	r, err := Open(ctx, Config{Node: "n1", DataDir: dir, Client: client, Replicated: func(db, coll string) bool { return db == "app" },
		Capabilities: Detect(ctx, client), MaxDocumentBytes: 1 << 20, DocCacheBytes: 64 << 20, MaxClockSkew: time.Minute}, log)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = r.Close() })
	return r
}
