package replica

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
	"github.com/edgenode/edgenode/internal/mongoproxy/embedded"
)

// The core against a real database (embedded FerretDB), without the
// proxy: what its two faces promise. The proxy's tests
// (internal/mongoproxy) cover the write semantics in depth.

func openTestReplica(t *testing.T) *Replica {
	t.Helper()
	if testing.Short() {
		t.Skip("starts a database")
	}
	ctx := context.Background()
	dir := t.TempDir()
	log := slog.New(slog.DiscardHandler)
	db, err := embedded.Start(ctx, filepath.Join(dir, "db"), log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Stop)
	client, err := mongo.Connect(options.Client().ApplyURI(db.URI()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Disconnect(context.Background()) })
	r, err := Open(ctx, Config{Node: "n1", DataDir: dir, Client: client, Replicated: func(db, coll string) bool { return db == "app" },
		Capabilities: Detect(ctx, client), MaxDocumentBytes: 1 << 20, DocCacheBytes: 64 << 10, MaxClockSkew: time.Minute}, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Error(err)
		}
	})
	return r
}

func insertItem(t *testing.T, id string) Item {
	doc, err := bson.Marshal(bson.D{{Key: "_id", Value: id}, {Key: "n", Value: 1}})
	if err != nil {
		t.Fatal(err)
	}
	_, v, _ := bson.MarshalValue(id)
	return Item{ID: bson.RawValue{Type: bson.TypeString, Value: v}, Compute: func(st crdt.State, found bool, ts crdt.Timestamp) (*crdt.Op, error) {
		if found {
			return nil, errors.New("exists")
		}
		return &crdt.Op{Kind: crdt.Insert, Doc: doc}, nil
	}}
}

func notified(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	case <-time.After(30 * time.Second):
		return false
	}
}

// TestLocalWriteIsStreamed: a local write is logged, applied, and its ops
// are readable from the subscriber's position once the subscriber is told.
func TestLocalWriteIsStreamed(t *testing.T) {
	r := openTestReplica(t)
	ctx := context.Background()
	notify, cancel := r.Subscribe()
	defer cancel()
	from := r.LastSeq()
	done, err := r.Admit()
	if err != nil {
		t.Fatal(err)
	}
	out := r.Write(ctx, "app.c", []Item{insertItem(t, "a"), insertItem(t, "b"), insertItem(t, "a")}, false)
	done()
	if !out[0].Done || out[0].Err != nil || !out[1].Done || out[1].Err != nil {
		t.Fatalf("outcomes %+v", out)
	}
	if out[2].Err == nil || out[2].Err.Error() != "exists" {
		t.Fatalf("the second insert of a: %+v", out[2])
	}
	if !notified(notify) {
		t.Fatal("the subscriber was not told")
	}
	raws, err := r.ReadOps(r.Origin(), from, 10, 1<<20)
	if err != nil || len(raws) != 2 {
		t.Fatalf("read %d ops after %d: %v", len(raws), from, err)
	}
	if got := r.Applied("n1"); got != from+2 {
		t.Fatalf("applied %d, want %d", got, from+2)
	}
	if f := r.Frontier(); f.IsZero() {
		t.Fatal("no frontier after a write")
	}
}

// TestBlockedWritesAreRefused: while writes are blocked, Admit refuses
// with the reason; AllowWrites lets them through again.
func TestBlockedWritesAreRefused(t *testing.T) {
	r := openTestReplica(t)
	r.BlockWrites("syncing")
	var be *BlockedError
	if _, err := r.Admit(); !errors.As(err, &be) || be.Reason != "syncing" {
		t.Fatalf("admitted while blocked: %v", err)
	}
	if got := r.WritesBlocked(); got != "syncing" {
		t.Fatalf("WritesBlocked %q", got)
	}
	r.AllowWrites()
	done, err := r.Admit()
	if err != nil {
		t.Fatal(err)
	}
	done()
}

// TestRemoteClockAheadIsRefused: a peer's op stamped beyond the clock
// bound fails the whole call before anything is logged.
func TestRemoteClockAheadIsRefused(t *testing.T) {
	r := openTestReplica(t)
	doc, _ := bson.Marshal(bson.D{{Key: "_id", Value: "x"}})
	_, id, _ := bson.MarshalValue("x")
	op := &crdt.Op{Origin: "peer", Seq: 1, TS: crdt.Timestamp{Wall: time.Now().Add(time.Hour).UnixMilli(), Node: "peer"}, NS: "app.c",
		ID: bson.RawValue{Type: bson.TypeString, Value: id}, Kind: crdt.Insert, Doc: doc}
	var ce *ClockSkewError
	if err := r.ApplyRemote(context.Background(), []*crdt.Op{op}); !errors.As(err, &ce) {
		t.Fatalf("ApplyRemote: %v", err)
	}
	if got := r.Applied("peer"); got != 0 {
		t.Fatalf("applied %d of the peer's ops", got)
	}
}
