package replica

import (
	"sync"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
)

// docCache keeps the stored state of recently written or read documents,
// so that a write to a hot document, or a peer's op for one, skips the
// read: one database round trip instead of two. That read is half of what
// applying a caught-up peer's backlog costs, so the cache is bounded by
// bytes (Config.DocCacheBytes), not by a count that a working set of small
// documents outgrows while large ones could fill the memory. An entry
// belongs to whoever holds its document's lease: only the holder reads or
// writes it (checked builds panic otherwise), so an entry is never read
// while another writer is between its read and its write. Forget
// (dropping every entry) needs no lease: an entry gone only costs a read.
// Every failed write drops its entry. It assumes the core is the only
// writer of its replicated collections, which it must be anyway for them
// to replicate; if something else writes one behind its back, the
// version-conditional write notices (Capabilities.VersionedWrites) and
// re-reads.
type docCache struct {
	docs         *leaseTable
	budget       int64 // 0: disabled
	met          *Metrics
	hits, misses prometheus.Counter // met.cacheLookups' two children, resolved once (every write looks up)

	// mu guards lru and used: held for a map operation and the evictions
	// it causes, never across I/O.
	mu   sync.Mutex
	lru  *simplelru.LRU[string, cachedDoc]
	used int64
}

type cachedDoc struct {
	st              crdt.State
	inColl, hasMeta bool
	cost            int64
}

// Sizes behind an entry's charge. A decoded document (bson.D, boxed
// values, the metadata's entries) takes about three times its stored BSON
// in memory (TestDocCacheChargeCoversMemory: 3.0× for the replication
// bench's counters, 319 bytes stored; 3.5× for a comment, 843).
// entryOverhead covers the key, the LRU element and the map slot. An entry
// over maxEntryShare of the budget is not kept: one large document would
// otherwise push out many small hot ones.
const (
	decodedFactor = 3
	entryOverhead = 256
	maxEntryShare = 16
)

// newDocCache returns a cache of at most budget bytes (by the charge
// above); budget <= 0 disables it.
func newDocCache(budget int64, met *Metrics) *docCache {
	c := &docCache{budget: max(budget, 0), met: met,
		hits: met.cacheLookups.WithLabelValues("hit"), misses: met.cacheLookups.WithLabelValues("miss")}
	if c.budget > 0 {
		// Bounded by bytes below, not by count.
		c.lru, _ = simplelru.NewLRU[string, cachedDoc](1<<62, func(_ string, v cachedDoc) { c.used -= v.cost })
	}
	return c
}

// owned panics, in checked builds, when the caller does not hold key's
// document lease.
func (c *docCache) owned(key string) {
	if lockRankChecked && !c.docs.heldByCaller(key) {
		panic("replica: document cache entry used without the document's lease: " + key)
	}
}

func (c *docCache) get(key string) (cachedDoc, bool) {
	if c.lru == nil {
		return cachedDoc{}, false
	}
	c.owned(key)
	c.mu.Lock()
	d, ok := c.lru.Get(key)
	c.mu.Unlock()
	if ok {
		c.hits.Inc()
	} else {
		c.misses.Inc()
	}
	return d, ok
}

func (c *docCache) remember(ds *docState) {
	if c.lru == nil {
		return
	}
	c.owned(ds.key)
	cost := decodedFactor*int64(ds.size) + int64(len(ds.key)) + entryOverhead
	c.mu.Lock()
	defer c.mu.Unlock()
	// The older state goes first: Add would replace it without the eviction
	// callback (its cost would stay counted), and an entry too large to
	// keep must not leave an older, smaller state behind.
	c.lru.Remove(ds.key)
	if cost > c.budget/maxEntryShare {
		c.gauges()
		return
	}
	c.lru.Add(ds.key, cachedDoc{st: ds.base, inColl: ds.inColl, hasMeta: ds.hasMeta, cost: cost})
	c.used += cost
	for c.used > c.budget {
		c.lru.RemoveOldest()
	}
	c.gauges()
}

// gauges publishes the cache's size; c.mu is held.
func (c *docCache) gauges() {
	c.met.cacheBytes.Set(float64(c.used))
	c.met.cacheDocs.Set(float64(c.lru.Len()))
}

func (c *docCache) forget(key string) {
	if c.lru == nil {
		return
	}
	c.owned(key)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lru.Remove(key)
	c.gauges()
}

// purge drops every entry (collections were dropped, renamed or reloaded).
func (c *docCache) purge() {
	if c.lru == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lru.Purge()
	c.gauges()
}

// stats reports the entries and the bytes charged for them.
func (c *docCache) stats() (entries int, bytes int64) {
	if c.lru == nil {
		return 0, 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len(), c.used
}

// Forget drops every cached document (see Local).
func (r *Replica) Forget() { r.cache.purge() }
