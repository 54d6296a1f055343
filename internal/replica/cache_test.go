package replica

import (
	"fmt"
	"runtime"
	"testing"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
)

// cacheDoc is a stored document of about n bytes as the cache sees it.
func cacheDoc(key string, n int) *docState {
	return &docState{key: key, base: crdt.State{Doc: bson.D{{Key: "_id", Value: key}}}, inColl: true, size: n}
}

// testKey is the document key of _id id in db.c, as the core makes it.
func testKey(id string) string { return docKey("db.c", bsonString(id)) }

// testCache is a cache of budget bytes with its own lease table.
func testCache(budget int64) *docCache {
	met, _ := NewMetrics(nil)
	c := newDocCache(budget, met)
	c.docs = newLeaseTable(rankDocument, &rankChecker{})
	return c
}

// remember caches ds under its lease, as the core does.
func remember(c *docCache, ds *docState) {
	l := c.docs.acquire(true, ds.key)
	c.remember(ds)
	l.release()
}

func cached(c *docCache, key string) bool {
	l := c.docs.acquire(true, key)
	defer l.release()
	_, ok := c.get(key)
	return ok
}

func TestDocCacheBoundedByBytes(t *testing.T) {
	c := testCache(1 << 20)
	// 1,000-byte documents are charged 3,000 bytes and some overhead: a
	// MiB holds about 320 of them, whatever their count.
	for i := range 1000 {
		remember(c, cacheDoc(testKey(fmt.Sprintf("%04d", i)), 1000))
	}
	n, used := c.stats()
	if used > 1<<20 || n < 300 || n > 350 {
		t.Fatalf("after 1,000 documents of 1,000 bytes: %d entries charged %d bytes; want about 320 within 1 MiB", n, used)
	}
	if cached(c, testKey("0000")) || !cached(c, testKey("0999")) {
		t.Fatal("the oldest document stayed or the newest went")
	}
	// Writing a cached document again replaces its charge, not adds to it.
	for range 10 {
		remember(c, cacheDoc(testKey("0999"), 1000))
	}
	if n2, used2 := c.stats(); n2 != n || used2 != used {
		t.Fatalf("rewriting one document changed the cache from %d entries / %d bytes to %d / %d", n, used, n2, used2)
	}
	// A document over a sixteenth of the budget is not kept, and its older
	// (smaller) state goes with it: a later read must not see that.
	remember(c, cacheDoc(testKey("0999"), 30000))
	if cached(c, testKey("0999")) {
		t.Fatal("a document charged over a sixteenth of the budget was kept (or its older state stayed)")
	}
	c.purge()
	if n, used := c.stats(); n != 0 || used != 0 {
		t.Fatalf("after purge: %d entries, %d bytes", n, used)
	}
}

func TestDocCacheOff(t *testing.T) {
	c := testCache(0)
	remember(c, cacheDoc(testKey("a"), 10))
	if cached(c, testKey("a")) {
		t.Fatal("a disabled cache kept a document")
	}
}

// TestDocCacheChargeCoversMemory checks decodedFactor: the memory a cached
// document takes (decoded, with its metadata) against what it is charged,
// for the replication bench's documents and a comment-sized one.
func TestDocCacheChargeCoversMemory(t *testing.T) {
	docs := map[string]bson.D{
		"bench counter": {{Key: "n", Value: int32(42)}, {Key: "s", Value: "node1"}},
		"comment": {{Key: "thread", Value: "t-12345"}, {Key: "author", Value: "someone@example.com"}, {Key: "at", Value: int64(1765000000000)},
			{Key: "text", Value: "A comment of a couple of sentences, as a widget stores them: neither short nor long, about two hundred bytes of text in all."},
			{Key: "likes", Value: int32(3)}, {Key: "tags", Value: bson.A{"a", "b"}}},
	}
	for name, body := range docs {
		t.Run(name, func(t *testing.T) {
			const n = 2000
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			c := testCache(1 << 40)
			var stored int
			for i := range n {
				id := fmt.Sprintf("d%06d", i)
				doc := append(bson.D{{Key: "_id", Value: id}}, body...)
				st := crdt.State{Meta: &crdt.Meta{}}
				// Fold an insert and an update, as a replicated document's
				// metadata holds.
				ts := crdt.Timestamp{Wall: int64(1765000000000 + i), Node: "node1"}
				raw, _ := bson.Marshal(doc)
				st, _, _ = crdt.Apply(st, &crdt.Op{Kind: crdt.Insert, Origin: "node1", Seq: uint64(2*i + 1), TS: ts, NS: "db.c", ID: bsonString(id), Doc: raw})
				full, err := withMeta(st.Doc, st.Meta)
				if err != nil {
					t.Fatal(err)
				}
				ds := &docState{key: docKey("db.c", bsonString(id)), base: st, inColl: true, size: len(full)}
				stored += len(full)
				remember(c, ds)
			}
			runtime.GC()
			runtime.ReadMemStats(&after)
			_, charged := c.stats()
			took := int64(after.HeapAlloc) - int64(before.HeapAlloc)
			t.Logf("%d documents of %d stored bytes each: %d bytes in memory, charged %d (%.2f×)", n, stored/n, took/n, charged/n, float64(charged)/float64(took))
			// The charge is an estimate; it must not be so low that the
			// cache takes much more than its budget (within 0.6×: one
			// heap measure is not exact).
			if charged < took*6/10 {
				t.Errorf("charged %d bytes per document, but they take %d: the cache would take %.1f× its budget", charged/n, took/n, float64(took)/float64(charged))
			}
			runtime.KeepAlive(c)
		})
	}
}
