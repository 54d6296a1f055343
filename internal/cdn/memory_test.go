package cdn

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/edgenode/edgenode/internal/testkit"
)

// TestMemoryTier: small objects enter the memory tier at their first hit
// and are served from it with the same answers as from disk (whole, ranges,
// 304); it stays within its byte budget, least recently used out first;
// larger objects never enter; a purge takes an object out.
func TestMemoryTier(t *testing.T) {
	c, srv, dir := newDirCache(t, func(o *Options) { o.MemoryBytes = 64 << 10; o.MemoryMaxObjectBytes = 4 << 10 })
	os.MkdirAll(filepath.Join(dir, "m"), 0o755)
	objs := map[string][]byte{}
	for i := range 24 {
		k := fmt.Sprintf("m/%02d.bin", i)
		objs[k] = randBytes(3000)
		os.WriteFile(filepath.Join(dir, k), objs[k], 0o644)
	}
	big := randBytes(5000)
	os.WriteFile(filepath.Join(dir, "m/big.bin"), big, 0o644)
	get := func(key string, hdr ...string) resp {
		t.Helper()
		r := doGet(t, srv.Client(), http.MethodGet, srv.URL+"/media/"+key, hdr...)
		testkit.WaitFor(t, settleTimeout, "fill", func() bool { return c.running.Load() == 0 })
		return r
	}
	memEntries := func() int {
		c.mu.Lock()
		defer c.mu.Unlock()
		if int64(testutil.ToFloat64(c.m.memBytes)) != c.memBytes || c.memBytes > c.opts.MemoryBytes {
			t.Errorf("memory bytes %d (gauge %v), budget %d", c.memBytes, testutil.ToFloat64(c.m.memBytes), c.opts.MemoryBytes)
		}
		return c.mem.Len()
	}

	a := objs["m/00.bin"]
	if r := get("m/00.bin"); r.status != 200 || r.header.Get("X-Cache") != "MISS" || !bytes.Equal(r.body, a) {
		t.Fatalf("miss: %d %q", r.status, r.header.Get("X-Cache"))
	}
	// A miss streams from the download (or, when the download ended
	// before the request looked, from the new entry, which enters the
	// tier then); the first hit reads the file into memory at the latest.
	disk := get("m/00.bin")
	if n := memEntries(); n != 1 {
		t.Fatalf("%d in memory after a hit, want 1", n)
	}
	hits0 := testutil.ToFloat64(c.m.memHits)
	mem := get("m/00.bin")
	if mem.status != 200 || !bytes.Equal(mem.body, a) || mem.header.Get("X-Cache") != "HIT" {
		t.Fatalf("memory hit: %d %q", mem.status, mem.header.Get("X-Cache"))
	}
	if testutil.ToFloat64(c.m.memHits) != hits0+1 {
		t.Error("memory hit not counted")
	}
	for _, k := range []string{"Content-Type", "Content-Length", "ETag", "Last-Modified", "Cache-Control", "X-Content-Type-Options", "Content-Security-Policy", "Accept-Ranges"} {
		if disk.header.Get(k) != mem.header.Get(k) {
			t.Errorf("%s: %q from the first hit, %q from memory", k, disk.header.Get(k), mem.header.Get(k))
		}
	}
	if r := get("m/00.bin", "Range", "bytes=10-19"); r.status != 206 || !bytes.Equal(r.body, a[10:20]) || r.header.Get("Content-Range") != "bytes 10-19/3000" {
		t.Errorf("range from memory: %d %q", r.status, r.header.Get("Content-Range"))
	}
	if r := get("m/00.bin", "Range", "bytes=0-1,2990-"); r.status != 206 || !bytes.Contains(r.body, a[2990:]) || !bytes.Contains(r.body, a[:2]) {
		t.Errorf("multipart range from memory: %d", r.status)
	}
	if r := get("m/00.bin", "If-None-Match", mem.header.Get("ETag")); r.status != 304 {
		t.Errorf("conditional from memory: %d", r.status)
	}

	// Fill the tier past its budget: 22 objects of 3000 bytes are more
	// than 64 KiB, so the least recently used leave; all are still hits.
	for i := 1; i < 24; i++ {
		k := fmt.Sprintf("m/%02d.bin", i)
		get(k)
		if r := get(k); r.status != 200 || !bytes.Equal(r.body, objs[k]) || r.header.Get("X-Cache") != "HIT" {
			t.Fatalf("%s: %d %q", k, r.status, r.header.Get("X-Cache"))
		}
	}
	if n := memEntries(); n != (64<<10)/3000 {
		t.Errorf("%d objects in memory, want %d", n, (64<<10)/3000)
	}
	if testutil.ToFloat64(c.m.memEvictions) == 0 {
		t.Error("no memory evictions counted")
	}
	c.mu.Lock()
	e0, _ := c.idx.Peek("m/00.bin")
	e23, _ := c.idx.Peek("m/23.bin")
	c.mu.Unlock()
	if e0.mem != nil || e23.mem == nil {
		t.Errorf("least recent still in memory (%v) or most recent not (%v)", e0.mem != nil, e23.mem == nil)
	}
	if r := get("m/00.bin"); r.status != 200 || !bytes.Equal(r.body, a) || r.header.Get("X-Cache") != "HIT" {
		t.Errorf("evicted from memory, still a hit from disk: %d %q", r.status, r.header.Get("X-Cache"))
	}

	// Over MemoryMaxObjectBytes: served from the file, never held.
	get("m/big.bin")
	if r := get("m/big.bin"); r.status != 200 || !bytes.Equal(r.body, big) {
		t.Fatalf("big: %d", r.status)
	}
	c.mu.Lock()
	eb, _ := c.idx.Peek("m/big.bin")
	c.mu.Unlock()
	if eb.mem != nil {
		t.Error("an object over memory_max_object_bytes is in memory")
	}

	// A purge takes the object out of memory too.
	before := memEntries()
	if err := c.Purge("m/23.bin"); err != nil {
		t.Fatal(err)
	}
	if n := memEntries(); n != before-1 || e23.mem != nil {
		t.Errorf("after a purge %d in memory (was %d)", n, before)
	}
	if r := get("m/23.bin"); r.header.Get("X-Cache") != "MISS" {
		t.Errorf("after a purge: %q, want MISS", r.header.Get("X-Cache"))
	}
}

// TestMemoryTierOff: a negative MemoryBytes (config 0) holds nothing.
func TestMemoryTierOff(t *testing.T) {
	c, srv, dir := newDirCache(t, func(o *Options) { o.MemoryBytes = -1 })
	body := randBytes(1000)
	os.WriteFile(filepath.Join(dir, "x.bin"), body, 0o644)
	for range 3 {
		r := doGet(t, srv.Client(), http.MethodGet, srv.URL+"/media/x.bin")
		testkit.WaitFor(t, settleTimeout, "fill", func() bool { return c.running.Load() == 0 })
		if r.status != 200 || !bytes.Equal(r.body, body) {
			t.Fatalf("status %d", r.status)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.mem.Len() != 0 || testutil.ToFloat64(c.m.memHits) != 0 {
		t.Errorf("memory tier off, but %d objects in it and %v hits", c.mem.Len(), testutil.ToFloat64(c.m.memHits))
	}
}
