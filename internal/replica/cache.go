package replica

import (
	lru "github.com/hashicorp/golang-lru/v2"

	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
)

// docCache keeps the stored state of recently written documents, so that
// a write to a hot document skips the read. An entry belongs to whoever
// holds its document's lease: only the holder reads or writes it (checked
// builds panic otherwise), so an entry is never read while another writer
// is between its read and its write. Forget (dropping every entry) needs
// no lease: an entry gone only costs a read. Every failed write drops its
// entry. It assumes the core is the only writer of its replicated
// collections, which it must be anyway for them to replicate; if
// something else writes one behind its back, the version-conditional
// write notices (Capabilities.VersionedWrites) and re-reads.
type docCache struct {
	docs *leaseTable
	lru  *lru.Cache[string, cachedDoc] // nil: disabled
}

type cachedDoc struct {
	st              crdt.State
	inColl, hasMeta bool
}

func newDocCache(size int) *docCache {
	c := &docCache{}
	if size > 0 {
		c.lru, _ = lru.New[string, cachedDoc](size)
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
	return c.lru.Get(key)
}

func (c *docCache) remember(ds *docState) {
	if c.lru == nil {
		return
	}
	c.owned(ds.key)
	c.lru.Add(ds.key, cachedDoc{st: ds.base, inColl: ds.inColl, hasMeta: ds.hasMeta})
}

func (c *docCache) forget(key string) {
	if c.lru == nil {
		return
	}
	c.owned(key)
	c.lru.Remove(key)
}

// purge drops every entry (collections were dropped, renamed or reloaded).
func (c *docCache) purge() {
	if c.lru != nil {
		c.lru.Purge()
	}
}

// Forget drops every cached document (see Local).
func (r *Replica) Forget() { r.cache.purge() }
