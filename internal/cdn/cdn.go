// Package cdn is the media cache: GET/HEAD /media/{key} served from a bounded
// on-disk LRU in front of an origin (S3 or a local folder).
//
// A hit is served from an open file with the semantics of http.ServeContent
// (single and multiple ranges, ETag/Last-Modified validators, 304/412), with
// headers precomputed per entry. A miss starts exactly one origin GET per key
// however many clients ask at once (a "fill"); every client streams from the
// fill's temporary file while it grows, and the file becomes a cache entry
// only once complete, verified (length, and MD5 when the origin states one),
// fsync'd and renamed. A client never receives an object's last byte before
// that verification, so a failed download never looks complete to anyone.
//
// Freshness is the cache's own: an entry is served without asking the origin
// for TTL after it was fetched or revalidated, then for StaleWhileRevalidate
// more it is served at once while a background conditional GET revalidates it;
// past that a request waits for the conditional GET. Whenever the origin
// fails or times out and a copy exists, the copy is served (stale-if-error)
// with "X-Cache: STALE-IF-ERROR". 404s are remembered for NegativeTTL.
//
// Small objects (MemoryMaxObjectBytes) also enter a memory tier bounded by
// MemoryBytes at their first hit, least recently used out first: a hit on
// one is a single Write of bytes in memory, with no file read and no copy
// buffer (docs/https-edge-profile.md).
//
// Objects larger than MaxObjectBytes are streamed through without caching
// (single ranges are forwarded to the origin as ranges); so is everything while
// the disk is full or failing.
//
// Media is someone's upload served on the node's own origin, so no response
// lets it act as a page there: every object is sent with
// "X-Content-Type-Options: nosniff", and every object whose type could run
// script or render as a document (HTML, SVG, XML, JavaScript, anything
// unknown: all but images, audio, video, fonts and PDF) also with
// "Content-Security-Policy: sandbox".
package cdn

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"github.com/prometheus/client_golang/prometheus"
)

// Options configure a Cache. Zero values take the documented defaults.
type Options struct {
	// Dir is the cache folder (DATA_DIR/cache). Required. The cache owns
	// everything under it.
	Dir string
	// MaxBytes bounds the bytes of cached objects on disk (default 1 GiB);
	// MaxEntries bounds their number (default 100,000). The least recently
	// used entries are evicted to stay within both.
	MaxBytes   int64
	MaxEntries int
	// Prefix is the route prefix, starting and ending with "/"; default
	// "/media/".
	Prefix string
	// Origin is where misses are fetched from. Required.
	Origin Origin
	// MaxObjectBytes: larger objects are streamed through from the origin
	// on every request, never cached. Default 64 MiB, and never more than
	// MaxBytes/4 so one object cannot flush the cache.
	MaxObjectBytes int64
	// CacheControl is sent to browsers on every object response; default
	// "public, max-age=300". "-" sends none.
	CacheControl string
	// TTL is how long an entry is served without asking the origin;
	// default 1 minute.
	TTL time.Duration
	// StaleWhileRevalidate is how long past TTL an entry is still served at
	// once while a background conditional GET revalidates it; default 10
	// minutes, negative: none (every request past TTL waits for the
	// conditional GET).
	StaleWhileRevalidate time.Duration
	// NegativeTTL is how long an origin 404 is remembered; default 10s,
	// negative: not at all. MaxNegativeEntries bounds that memory (default
	// 10,000).
	NegativeTTL        time.Duration
	MaxNegativeEntries int
	// OriginTimeout is the longest the origin may stay silent: before it
	// answers, and between two reads of a body. Default 10s.
	OriginTimeout time.Duration
	// OpenFiles is how many cached files are kept open for hits; default
	// 1024.
	OpenFiles int
	// MaxRanges is the most ranges one request may ask for; default 16.
	// More get 416.
	MaxRanges int
	// MemoryBytes bounds the memory tier: the bytes of small hot objects
	// also held in memory, so that a hit on one costs no file read and no
	// copy buffer (default 64 MiB; negative: no memory tier). Objects of
	// at most MemoryMaxObjectBytes (default 64 KiB, never more than
	// MemoryBytes/16) enter it at their first hit; the least recently
	// used leave it first.
	MemoryBytes          int64
	MemoryMaxObjectBytes int64
	// Peer turns on peer fill (see peerfill.go) when Peer.Peers is set.
	Peer PeerOptions
}

func (o *Options) setDefaults() error {
	if o.Dir == "" {
		return errors.New("cdn: Options.Dir is required")
	}
	if o.Origin == nil {
		return errors.New("cdn: Options.Origin is required")
	}
	if o.MaxBytes <= 0 {
		o.MaxBytes = 1 << 30
	}
	if o.MaxEntries <= 0 {
		o.MaxEntries = 100_000
	}
	if o.Prefix == "" {
		o.Prefix = "/media/"
	}
	if !strings.HasPrefix(o.Prefix, "/") || !strings.HasSuffix(o.Prefix, "/") || strings.ContainsAny(o.Prefix, "{} ") {
		return fmt.Errorf("cdn: Options.Prefix %q must start and end with '/' and hold no pattern characters", o.Prefix)
	}
	if o.MaxObjectBytes <= 0 {
		o.MaxObjectBytes = 64 << 20
	}
	if o.MaxObjectBytes > o.MaxBytes/4 {
		o.MaxObjectBytes = o.MaxBytes / 4
	}
	if o.CacheControl == "" {
		o.CacheControl = "public, max-age=300"
	}
	if o.TTL <= 0 {
		o.TTL = time.Minute
	}
	if o.StaleWhileRevalidate == 0 {
		o.StaleWhileRevalidate = 10 * time.Minute
	} else if o.StaleWhileRevalidate < 0 {
		o.StaleWhileRevalidate = 0
	}
	if o.NegativeTTL == 0 {
		o.NegativeTTL = 10 * time.Second
	} else if o.NegativeTTL < 0 {
		o.NegativeTTL = 0
	}
	if o.MaxNegativeEntries <= 0 {
		o.MaxNegativeEntries = 10_000
	}
	if o.OriginTimeout <= 0 {
		o.OriginTimeout = 10 * time.Second
	}
	if o.OpenFiles <= 0 {
		o.OpenFiles = 1024
	}
	if o.MaxRanges <= 0 {
		o.MaxRanges = 16
	}
	if o.MemoryBytes == 0 {
		o.MemoryBytes = 64 << 20
	} else if o.MemoryBytes < 0 {
		o.MemoryBytes = 0
	}
	if o.MemoryMaxObjectBytes <= 0 {
		o.MemoryMaxObjectBytes = 64 << 10
	}
	o.MemoryMaxObjectBytes = min(o.MemoryMaxObjectBytes, o.MemoryBytes/16)
	if o.Peer.FirstByte <= 0 {
		o.Peer.FirstByte = time.Second
	}
	if o.Peer.BadFor <= 0 {
		o.Peer.BadFor = time.Minute
	}
	return nil
}

// Cache is the media cache and its HTTP handler.
type Cache struct {
	opts  Options
	log   *slog.Logger
	m     *metrics
	store *store

	// Lifetime of fills and background revalidations.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	// running counts fill goroutines (commit included), so tests can wait
	// for the background work of a request to end.
	running atomic.Int64

	// Precomputed header values shared by every response (never mutated).
	hdrCacheControl []string

	bufs      sync.Pool // *[]byte copy buffers (copyBufSize) for fills and the HTTP/1.1 hit path
	smallBufs sync.Pool // *[]byte copy buffers (smallBufSize) for HTTP/2 and HTTP/3 hits

	mu       sync.Mutex
	closed   bool
	idx      *simplelru.LRU[string, *entry]   // key → entry, most recent first
	open     *simplelru.LRU[*entry, struct{}] // entries whose file is open
	bytes    int64                            // sum of entry sizes
	reserved int64                            // bytes promised to running fills
	victims  []*entry                         // removed from idx, files not yet deleted
	fills    map[string]*fill                 // running fills by key
	negative *simplelru.LRU[string, time.Time]
	tooBig   *simplelru.LRU[string, time.Time] // keys found over MaxObjectBytes
	mem      *simplelru.LRU[*entry, struct{}]  // entries held in memory (entry.mem set), by recency
	memBytes int64                             // their bytes
	noDisk   int64                             // unix nanos: until then, misses pass through
	onPurge  []PurgeHook
	peerBad  *simplelru.LRU[string, time.Time] // keys filling from the origin only, until
	purgedAt *simplelru.LRU[string, time.Time] // keys' latest purge: older peer copies are refused
}

// A PurgeHook is told of each purge that came through the admin route:
// the key and the time of the purge, every copy fetched before which is
// gone here. An error fails the route with 503 (the purge is done here
// whatever the hooks say; it is idempotent and may be retried).
type PurgeHook func(ctx context.Context, key string, at time.Time) error

// New opens the cache folder, rebuilds the index from the files in it
// (removing temporary and broken ones) and evicts down to the budget.
func New(opts Options, log *slog.Logger, reg prometheus.Registerer) (*Cache, error) {
	if err := opts.setDefaults(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	c := &Cache{
		opts:  opts,
		log:   log.With("part", "cdn"),
		fills: map[string]*fill{},
	}
	c.bufs.New = func() any { b := make([]byte, copyBufSize); return &b }
	c.smallBufs.New = func() any { b := make([]byte, smallBufSize); return &b }
	if opts.CacheControl != "-" {
		c.hdrCacheControl = []string{opts.CacheControl}
	}
	var err error
	c.idx, err = simplelru.NewLRU(opts.MaxEntries, c.onRemove)
	if err != nil {
		return nil, fmt.Errorf("cdn: index: %w", err)
	}
	c.open, err = simplelru.NewLRU(opts.OpenFiles, func(e *entry, _ struct{}) { e.closeFile() })
	if err != nil {
		return nil, fmt.Errorf("cdn: open files: %w", err)
	}
	// Bounded by bytes (memBytes), not by count: the count bound is never
	// reached before MaxEntries.
	c.mem, _ = simplelru.NewLRU(opts.MaxEntries+1, c.onMemRemove)
	c.negative, _ = simplelru.NewLRU[string, time.Time](opts.MaxNegativeEntries, nil)
	c.tooBig, _ = simplelru.NewLRU[string, time.Time](opts.MaxNegativeEntries, nil)
	c.peerBad, _ = simplelru.NewLRU[string, time.Time](opts.MaxNegativeEntries, nil)
	c.purgedAt, _ = simplelru.NewLRU[string, time.Time](opts.MaxNegativeEntries, nil)
	c.m, err = newMetrics(reg, opts.Origin.Name())
	if err != nil {
		return nil, err
	}
	c.store, err = openStore(opts.Dir)
	if err != nil {
		return nil, err
	}
	entries, stats, err := c.store.rebuild()
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	for _, e := range entries { // least recent first
		e.buildHeaders()
		c.idx.Add(e.key, e)
		c.bytes += e.size
	}
	evicted := c.evictLocked(0)
	victims := c.takeVictimsLocked()
	c.updateGaugesLocked()
	c.mu.Unlock()
	c.deleteFiles(victims)
	c.log.Info("cache index rebuilt", "dir", opts.Dir, "entries", len(entries)-evicted, "bytes", c.bytes,
		"removed_temp", stats.temp, "removed_broken", stats.broken, "evicted", evicted)
	c.ctx, c.cancel = context.WithCancel(context.Background())
	return c, nil
}

// Routes are the public routes for the transport: GET and HEAD of
// Prefix{key...}.
func (c *Cache) Routes() map[string]http.Handler {
	return map[string]http.Handler{
		"GET " + c.opts.Prefix + "{key...}":  c,
		"HEAD " + c.opts.Prefix + "{key...}": c,
	}
}

// AdminRoutes are the routes for the admin listener: DELETE
// /v1/cache/{key...} purges a key here and then calls the OnPurge hooks (so
// the owner can tell the peers, and record the purge for those that are
// down). The bearer-token check is the admin server's.
func (c *Cache) AdminRoutes() map[string]http.Handler {
	return map[string]http.Handler{
		"DELETE /v1/cache/{key...}": http.HandlerFunc(c.servePurge),
	}
}

func (c *Cache) servePurge(w http.ResponseWriter, r *http.Request) {
	key := r.PathValue("key")
	at := time.Now()
	if err := c.Purge(key); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	c.mu.Lock()
	hooks := slices.Clone(c.onPurge)
	c.mu.Unlock()
	var errs []error
	for _, h := range hooks {
		if err := h(r.Context(), key, at); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		http.Error(w, "purged on this node, but: "+err.Error()+" (a purge may be repeated)", http.StatusServiceUnavailable)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// OnPurge registers a hook called after each purge that came through the
// admin route (not after Purge or PurgeBefore calls: those are how peers'
// purges arrive, and must not echo back).
func (c *Cache) OnPurge(fn PurgeHook) {
	c.mu.Lock()
	c.onPurge = append(c.onPurge, fn)
	c.mu.Unlock()
}

// Purge forgets key on this node: its cached copy, its remembered 404, and
// any fill in flight (whose bytes still reach the clients already waiting,
// but which will not become an entry). It is idempotent.
func (c *Cache) Purge(key string) error {
	if err := ValidateKey(key); err != nil {
		return fmt.Errorf("cdn: purge: %w", err)
	}
	c.mu.Lock()
	c.notePurgeLocked(key, time.Now())
	if f := c.fills[key]; f != nil {
		f.purged = true
		delete(c.fills, key)
	}
	c.idx.Remove(key)
	c.negative.Remove(key)
	c.tooBig.Remove(key)
	victims := c.takeVictimsLocked()
	c.updateGaugesLocked()
	c.mu.Unlock()
	c.deleteFiles(victims)
	c.m.purges.Inc()
	return nil
}

// PurgeBefore forgets what this node holds of key from before at: a copy
// whose download began before at, a 404 or an "over MaxObjectBytes"
// remembered since before at, and a fill begun before at. What was fetched
// since is kept: a purge that reaches this node late (it was down or cut
// off when the purge was issued) must not throw away a copy fetched after
// the purge. It reports whether anything was forgotten. Times are compared
// across nodes, so this is as exact as their clocks agree.
func (c *Cache) PurgeBefore(key string, at time.Time) (bool, error) {
	if err := ValidateKey(key); err != nil {
		return false, fmt.Errorf("cdn: purge: %w", err)
	}
	dropped := false
	c.mu.Lock()
	c.notePurgeLocked(key, at)
	if f := c.fills[key]; f != nil && f.begun.Before(at) {
		f.purged = true
		delete(c.fills, key)
		dropped = true
	}
	if e, ok := c.idx.Peek(key); ok && e.fetchedAt.Before(at) {
		c.idx.Remove(key)
		dropped = true
	}
	if until, ok := c.negative.Peek(key); ok && until.Add(-c.opts.NegativeTTL).Before(at) {
		c.negative.Remove(key)
		dropped = true
	}
	if until, ok := c.tooBig.Peek(key); ok && until.Add(-c.opts.TTL).Before(at) {
		c.tooBig.Remove(key)
		dropped = true
	}
	victims := c.takeVictimsLocked()
	c.updateGaugesLocked()
	c.mu.Unlock()
	c.deleteFiles(victims)
	if dropped {
		c.m.purges.Inc()
	}
	return dropped, nil
}

// Close stops fills and revalidations, waits for them, and records the LRU
// order so that a restart keeps recency. Requests still being served keep
// their open files until they finish.
func (c *Cache) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	c.cancel()
	c.wg.Wait()
	c.mu.Lock()
	order := c.idx.Values() // oldest first
	c.open.Purge()          // closes the files (readers keep their refs)
	c.mem.Purge()
	victims := c.takeVictimsLocked()
	c.mu.Unlock()
	c.deleteFiles(victims)
	if err := c.store.writeOrder(order); err != nil {
		return fmt.Errorf("cdn: close: %w", err)
	}
	return nil
}

// onRemove is the index's eviction callback: every entry leaving the index
// (evicted, purged, replaced) passes here, under c.mu.
func (c *Cache) onRemove(_ string, e *entry) {
	c.bytes -= e.size
	e.removed = true
	c.open.Remove(e)
	c.mem.Remove(e)
	c.victims = append(c.victims, e)
}

// SetLimits changes the cache's budget, bytes and entries (Options.MaxBytes
// and MaxEntries), as a config reload does: a smaller budget evicts the
// least recently used entries at once. Other options need a new Cache.
func (c *Cache) SetLimits(maxBytes int64, maxEntries int) {
	c.mu.Lock()
	c.opts.MaxBytes, c.opts.MaxEntries = maxBytes, maxEntries
	n := c.idx.Resize(maxEntries)
	c.m.evictions.Add(float64(n))
	c.evictLocked(0)
	victims := c.takeVictimsLocked()
	c.updateGaugesLocked()
	c.mu.Unlock()
	c.deleteFiles(victims)
}

// evictLocked removes least recently used entries until need more bytes
// fit in the budget; it returns how many were evicted.
func (c *Cache) evictLocked(need int64) int {
	n := 0
	for c.bytes+c.reserved+need > c.opts.MaxBytes && c.idx.Len() > 0 {
		c.idx.RemoveOldest()
		n++
	}
	c.m.evictions.Add(float64(n))
	return n
}

func (c *Cache) takeVictimsLocked() []*entry {
	v := c.victims
	c.victims = nil
	return v
}

// deleteFiles removes the files of entries that left the index; called
// without the lock (disk I/O). Paths are unique per version, so this never
// races with a newer copy of the same key.
func (c *Cache) deleteFiles(victims []*entry) {
	for _, e := range victims {
		if err := c.store.remove(e); err != nil {
			c.log.Warn("removing evicted files", "key", e.key, "err", err)
		}
	}
}

func (c *Cache) updateGaugesLocked() {
	c.m.diskBytes.Set(float64(c.bytes))
	c.m.entries.Set(float64(c.idx.Len()))
	c.m.memBytes.Set(float64(c.memBytes))
	c.m.memEntries.Set(float64(c.mem.Len()))
}

// onMemRemove is the memory tier's eviction callback, under c.mu. Requests
// serving the bytes keep them until they finish; the garbage collector
// frees them after.
func (c *Cache) onMemRemove(e *entry, _ struct{}) {
	c.memBytes -= int64(len(e.mem.b))
	e.mem = nil
}

// addMemLocked puts an entry's bytes in the memory tier, evicting the least
// recently used to stay within MemoryBytes.
func (c *Cache) addMemLocked(e *entry, m *memObject) {
	if e.mem != nil || e.removed || c.closed {
		return
	}
	e.mem = m
	c.mem.Add(e, struct{}{})
	c.memBytes += int64(len(m.b))
	n := 0
	for c.memBytes > c.opts.MemoryBytes && c.mem.Len() > 0 {
		c.mem.RemoveOldest()
		n++
	}
	c.m.memEvictions.Add(float64(n))
	c.m.memBytes.Set(float64(c.memBytes))
	c.m.memEntries.Set(float64(c.mem.Len()))
}
