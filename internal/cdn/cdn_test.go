package cdn

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/edgenode/edgenode/internal/testkit"
)

func TestHitMissHead(t *testing.T) {
	e := newEnv(t, nil)
	body := randBytes(100_000)
	etag := e.put("img/a.png", body, "image/png")

	r := e.get("img/a.png")
	if r.status != 200 || !bytes.Equal(r.body, body) {
		t.Fatalf("miss: status %d, %d bytes, err %v", r.status, len(r.body), r.err)
	}
	if got := r.header.Get("X-Cache"); got != "MISS" {
		t.Errorf("first X-Cache = %q, want MISS", got)
	}
	for k, want := range map[string]string{
		"Content-Type": "image/png", "ETag": etag, "Cache-Control": "public, max-age=300",
		"Accept-Ranges": "bytes", "Content-Length": "100000",
	} {
		if got := r.header.Get(k); got != want {
			t.Errorf("miss %s = %q, want %q", k, got, want)
		}
	}
	if r.header.Get("Last-Modified") == "" {
		t.Error("no Last-Modified")
	}

	r2 := e.get("img/a.png")
	if r2.status != 200 || !bytes.Equal(r2.body, body) || r2.header.Get("X-Cache") != "HIT" {
		t.Fatalf("hit: status %d, X-Cache %q, same body %v", r2.status, r2.header.Get("X-Cache"), bytes.Equal(r2.body, body))
	}
	for _, k := range []string{"Content-Type", "ETag", "Last-Modified", "Cache-Control", "Content-Length"} {
		if r.header.Get(k) != r2.header.Get(k) {
			t.Errorf("%s differs between miss (%q) and hit (%q)", k, r.header.Get(k), r2.header.Get(k))
		}
	}

	h := doGet(t, e.srv.Client(), http.MethodHead, e.srv.URL+"/media/img/a.png")
	if h.status != 200 || len(h.body) != 0 || h.header.Get("Content-Length") != "100000" || h.header.Get("ETag") != etag {
		t.Errorf("HEAD: status %d, body %d bytes, headers %v", h.status, len(h.body), h.header)
	}
	if n := e.count.count(e.bucket, "img/a.png"); n != 1 {
		t.Errorf("origin GETs = %d, want 1", n)
	}
	if v := testutil.ToFloat64(e.cache.m.requests.WithLabelValues("hit")); v != 2 {
		t.Errorf("hit counter = %v, want 2", v)
	}
	if v := testutil.ToFloat64(e.cache.m.diskBytes); v != 100_000 {
		t.Errorf("disk bytes gauge = %v", v)
	}
	// A method the route does not take.
	req, _ := http.NewRequest(http.MethodPost, e.srv.URL+"/media/img/a.png", nil)
	res, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST: %d", res.StatusCode)
	}
}

func TestRanges(t *testing.T) {
	e := newEnv(t, nil)
	body := randBytes(10_000)
	etag := e.put("r.bin", body, "application/octet-stream")

	// A range on a cold key is served from the download.
	r := e.get("r.bin", "Range", "bytes=0-4")
	if r.status != 206 || !bytes.Equal(r.body, body[:5]) || r.header.Get("Content-Range") != "bytes 0-4/10000" {
		t.Fatalf("cold range: %d %q %d bytes", r.status, r.header.Get("Content-Range"), len(r.body))
	}
	testkit.WaitFor(t, settleTimeout, "entry", func() bool { return e.get("r.bin", "Range", "bytes=0-0").header.Get("X-Cache") == "HIT" })

	cases := []struct {
		rng    string
		status int
		want   []byte
		cr     string
	}{
		{"bytes=0-4", 206, body[:5], "bytes 0-4/10000"},
		{"bytes=9995-", 206, body[9995:], "bytes 9995-9999/10000"},
		{"bytes=-3", 206, body[9997:], "bytes 9997-9999/10000"},
		{"bytes=9990-20000", 206, body[9990:], "bytes 9990-9999/10000"},
		{"bytes=-20000", 206, body, "bytes 0-9999/10000"},
		{"bytes=10000-", 416, nil, "bytes */10000"},
		{"bytes=20000-30000", 416, nil, "bytes */10000"},
		{"bytes=5-4", 416, nil, ""},
		{"bytes=99999999999999999999-", 416, nil, ""},
		{"bytes=0-99999999999999999999", 416, nil, ""},
		{"bytes=--1", 416, nil, ""},
		{"bytes=a-b", 416, nil, ""},
		{"bytes=", 416, nil, ""},
		{"bytes=0-9999,0-9999", 416, nil, "bytes */10000"}, // asks for twice the object
		{"bytes=" + strings.Repeat("1-1,", 17) + "1-1", 416, nil, ""},
		{"items=0-4", 200, body, ""}, // unknown unit: ignored
	}
	for _, c := range cases {
		r := e.get("r.bin", "Range", c.rng)
		if r.status != c.status {
			t.Errorf("Range %q: status %d, want %d", c.rng, r.status, c.status)
			continue
		}
		if c.want != nil && !bytes.Equal(r.body, c.want) {
			t.Errorf("Range %q: wrong body (%d bytes)", c.rng, len(r.body))
		}
		if c.cr != "" && r.header.Get("Content-Range") != c.cr {
			t.Errorf("Range %q: Content-Range %q, want %q", c.rng, r.header.Get("Content-Range"), c.cr)
		}
	}

	// Multiple ranges: multipart/byteranges with exact Content-Length.
	r = e.get("r.bin", "Range", "bytes=0-9, 100-199,-5")
	if r.status != 206 {
		t.Fatalf("multi: %d", r.status)
	}
	if cl, _ := strconv.Atoi(r.header.Get("Content-Length")); cl != len(r.body) {
		t.Errorf("multi: Content-Length %d, body %d", cl, len(r.body))
	}
	mt, params, err := mime.ParseMediaType(r.header.Get("Content-Type"))
	if err != nil || mt != "multipart/byteranges" {
		t.Fatalf("multi: Content-Type %q", r.header.Get("Content-Type"))
	}
	mr := multipart.NewReader(bytes.NewReader(r.body), params["boundary"])
	wantParts := []struct {
		b  []byte
		cr string
	}{{body[:10], "bytes 0-9/10000"}, {body[100:200], "bytes 100-199/10000"}, {body[9995:], "bytes 9995-9999/10000"}}
	for i, w := range wantParts {
		p, err := mr.NextPart()
		if err != nil {
			t.Fatalf("part %d: %v", i, err)
		}
		got, _ := io.ReadAll(p)
		if !bytes.Equal(got, w.b) || p.Header.Get("Content-Range") != w.cr || p.Header.Get("Content-Type") != "application/octet-stream" {
			t.Errorf("part %d: %d bytes, Content-Range %q", i, len(got), p.Header.Get("Content-Range"))
		}
	}
	if _, err := mr.NextPart(); err != io.EOF {
		t.Errorf("extra part: %v", err)
	}

	// If-Range: the current ETag allows the range, another one gets 200.
	if r := e.get("r.bin", "Range", "bytes=0-4", "If-Range", etag); r.status != 206 {
		t.Errorf("If-Range current: %d", r.status)
	}
	if r := e.get("r.bin", "Range", "bytes=0-4", "If-Range", `"other"`); r.status != 200 || len(r.body) != 10_000 {
		t.Errorf("If-Range stale: %d", r.status)
	}
	if n := e.count.count(e.bucket, "r.bin"); n != 1 {
		t.Errorf("origin GETs = %d, want 1", n)
	}
}

func TestConditional(t *testing.T) {
	e := newEnv(t, nil)
	body := []byte("hello conditional")
	etag := e.put("c.txt", body, "text/plain")
	r := e.get("c.txt")
	if r.status != 200 {
		t.Fatal(r.status)
	}
	lm := r.header.Get("Last-Modified")
	for _, c := range []struct {
		hdr    []string
		status int
	}{
		{[]string{"If-None-Match", etag}, 304},
		{[]string{"If-None-Match", `"x", ` + etag}, 304},
		{[]string{"If-None-Match", "W/" + etag}, 304}, // weak comparison
		{[]string{"If-None-Match", "*"}, 304},
		{[]string{"If-None-Match", `"nope"`}, 200},
		{[]string{"If-Modified-Since", lm}, 304},
		{[]string{"If-Modified-Since", "Mon, 02 Jan 2006 15:04:05 GMT"}, 200},
		{[]string{"If-None-Match", `"nope"`, "If-Modified-Since", lm}, 200}, // INM wins
		{[]string{"If-Match", etag}, 200},
		{[]string{"If-Match", `"nope"`}, 412},
		{[]string{"If-Match", "W/" + etag}, 412}, // strong comparison
		{[]string{"If-Unmodified-Since", "Mon, 02 Jan 2006 15:04:05 GMT"}, 412},
	} {
		r := e.get("c.txt", c.hdr...)
		if r.status != c.status {
			t.Errorf("%v: %d, want %d", c.hdr, r.status, c.status)
		}
		if r.status == 304 && (len(r.body) != 0 || r.header.Get("ETag") != etag) {
			t.Errorf("%v: 304 with body %q / ETag %q", c.hdr, r.body, r.header.Get("ETag"))
		}
	}
}

func TestNegativeCache(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.NegativeTTL = time.Hour })
	r := e.get("nope.png")
	if r.status != 404 || r.header.Get("X-Cache") != "MISS" {
		t.Fatalf("first: %d %q", r.status, r.header.Get("X-Cache"))
	}
	r = e.get("nope.png")
	if r.status != 404 || r.header.Get("X-Cache") != "NEGATIVE" {
		t.Fatalf("second: %d %q", r.status, r.header.Get("X-Cache"))
	}
	if n := e.count.count(e.bucket, "nope.png"); n != 1 {
		t.Fatalf("origin GETs = %d, want 1 (404 remembered)", n)
	}
	e.put("nope.png", []byte("now here"), "image/png")
	if r := e.get("nope.png"); r.status != 404 {
		t.Fatalf("within NegativeTTL: %d", r.status)
	}
	e.expireNegative("nope.png")
	if r := e.get("nope.png"); r.status != 200 {
		t.Fatalf("after NegativeTTL: %d", r.status)
	}
	if n := e.count.count(e.bucket, "nope.png"); n != 2 {
		t.Errorf("origin GETs = %d, want 2", n)
	}
	if n, _ := filesUnder(t, e.opts.Dir, ".data"); n != 1 {
		t.Errorf("%d data files, want 1", n)
	}
}

func TestEvictionOrder(t *testing.T) {
	const size = 1000
	e := newEnv(t, func(o *Options) { o.MaxBytes = 4 * size })
	bodies := map[string][]byte{}
	for _, k := range []string{"a", "b", "c", "d", "e"} {
		bodies[k] = randBytes(size)
		e.put(k, bodies[k], "")
	}
	get := func(k, want string) {
		t.Helper()
		r := e.get(k)
		if r.status != 200 || !bytes.Equal(r.body, bodies[k]) {
			t.Fatalf("%s: %d", k, r.status)
		}
		if got := r.header.Get("X-Cache"); got != want {
			t.Errorf("%s: X-Cache %q, want %q", k, got, want)
		}
	}
	for _, k := range []string{"a", "b", "c", "d"} {
		get(k, "MISS")
	}
	get("a", "HIT") // a is now the most recent; b the least
	get("e", "MISS")
	for _, k := range []string{"a", "c", "d", "e"} {
		get(k, "HIT")
	}
	get("b", "MISS") // evicted; refetching evicts the LRU, a
	get("a", "MISS")
	if n, b := filesUnder(t, e.opts.Dir, ".data"); n != 4 || b != 4*size {
		t.Errorf("on disk: %d files, %d bytes; want 4, %d", n, b, 4*size)
	}
	if v := testutil.ToFloat64(e.cache.m.evictions); v != 3 {
		t.Errorf("evictions = %v, want 3", v)
	}
	if v := testutil.ToFloat64(e.cache.m.diskBytes); v != 4*size {
		t.Errorf("disk bytes = %v", v)
	}

	// The entry budget works the same way.
	e2 := newEnv(t, func(o *Options) { o.MaxEntries = 2 })
	for _, k := range []string{"x", "y", "z"} {
		e2.put(k, []byte(k), "")
		if r := e2.get(k); r.status != 200 {
			t.Fatal(r.status)
		}
	}
	if r := e2.get("x"); r.header.Get("X-Cache") != "MISS" {
		t.Errorf("x over the entry budget: %q", r.header.Get("X-Cache"))
	}
	if n, _ := filesUnder(t, e2.opts.Dir, ".data"); n != 2 {
		t.Errorf("%d files, want 2", n)
	}
}

func TestRestartKeepsCache(t *testing.T) {
	e := newEnv(t, nil)
	bodies := map[string][]byte{"k1": randBytes(5000), "k2": randBytes(7000), "dir/k3": randBytes(1)}
	for k, b := range bodies {
		e.put(k, b, "text/plain")
		if r := e.get(k); r.status != 200 {
			t.Fatal(r.status)
		}
	}
	e.stop()
	// Debris a crash leaves: a half download, an orphan data file, a
	// truncated entry, junk in the objects folder.
	os.WriteFile(filepath.Join(e.opts.Dir, "v1", "tmp", "fill-123"), []byte("partial"), 0o644)
	shard := filepath.Join(e.opts.Dir, "v1", "objects", "ab")
	os.MkdirAll(shard, 0o755)
	orphan := filepath.Join(shard, "ab"+strings.Repeat("0", 62)+".00000000000000ff.data")
	os.WriteFile(orphan, []byte("orphan"), 0o644)
	os.WriteFile(filepath.Join(shard, "junk"), []byte("?"), 0o644)
	k2 := keyHash("k2")
	matches, _ := filepath.Glob(filepath.Join(e.opts.Dir, "v1", "objects", k2[:2], k2+".*.data"))
	if len(matches) != 1 {
		t.Fatalf("k2 data files: %v", matches)
	}
	os.Truncate(matches[0], 10) // k2's data no longer matches its meta

	e.start()
	before := e.count.count(e.bucket, "k1")
	for _, k := range []string{"k1", "dir/k3"} {
		r := e.get(k)
		if r.status != 200 || !bytes.Equal(r.body, bodies[k]) || r.header.Get("X-Cache") != "HIT" {
			t.Errorf("%s after restart: %d %q", k, r.status, r.header.Get("X-Cache"))
		}
	}
	if e.count.count(e.bucket, "k1") != before {
		t.Error("k1 was fetched again after restart")
	}
	if r := e.get("k2"); r.status != 200 || !bytes.Equal(r.body, bodies["k2"]) || r.header.Get("X-Cache") != "MISS" {
		t.Errorf("broken k2: %d %q", r.status, r.header.Get("X-Cache"))
	}
	if n, _ := filesUnder(t, filepath.Join(e.opts.Dir, "v1", "tmp"), ""); n != 0 {
		t.Errorf("%d temp files left", n)
	}
	for _, p := range []string{orphan, filepath.Join(shard, "junk")} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s not removed", p)
		}
	}
	if n, _ := filesUnder(t, e.opts.Dir, ".data"); n != 3 {
		t.Errorf("%d data files, want 3", n)
	}
}

func TestRestartKeepsRecency(t *testing.T) {
	const size = 1000
	e := newEnv(t, func(o *Options) { o.MaxBytes = 4 * size })
	for _, k := range []string{"a", "b", "c", "d"} {
		e.put(k, randBytes(size), "")
		e.get(k)
	}
	e.get("a") // LRU order now b, c, d, a
	e.restart()
	e.put("e", randBytes(size), "")
	e.get("e") // evicts b
	if r := e.get("a"); r.header.Get("X-Cache") != "HIT" {
		t.Errorf("a: %q", r.header.Get("X-Cache"))
	}
	if r := e.get("b"); r.header.Get("X-Cache") != "MISS" {
		t.Errorf("b: %q (should have been the one evicted)", r.header.Get("X-Cache"))
	}
}

func TestCoalescing(t *testing.T) {
	e := newEnv(t, nil)
	body := randBytes(512 << 10)
	e.put("hot.js", body, "text/javascript")
	client := &http.Client{Transport: &http.Transport{MaxConnsPerHost: 0, MaxIdleConnsPerHost: 200}}
	defer client.CloseIdleConnections()

	const n = 200
	var wg sync.WaitGroup
	start := make(chan struct{})
	results := make([]resp, n)
	for i := range n {
		wg.Go(func() {
			<-start
			results[i] = doGet(t, client, http.MethodGet, e.srv.URL+"/media/hot.js")
		})
	}
	close(start)
	wg.Wait()
	var misses, hits int
	for i, r := range results {
		if r.err != nil || r.status != 200 || !bytes.Equal(r.body, body) {
			t.Fatalf("request %d: status %d err %v, %d bytes", i, r.status, r.err, len(r.body))
		}
		switch r.header.Get("X-Cache") {
		case "MISS":
			misses++
		case "HIT":
			hits++
		}
	}
	if got := e.count.count(e.bucket, "hot.js"); got != 1 {
		t.Fatalf("origin GETs for %d concurrent cold requests = %d, want exactly 1", n, got)
	}
	t.Logf("%d requests: %d streamed from the one download, %d hits; coalesced waiters %v",
		n, misses, hits, testutil.ToFloat64(e.cache.m.coalesced))
}

// TestSlowOriginStreams holds the origin's body back after its first bytes:
// clients must already receive those bytes, and a client arriving later
// joins the same download.
func TestSlowOriginStreams(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.OriginTimeout = time.Minute })
	body := randBytes(1 << 20)
	e.put("slow.bin", body, "")
	e.proxy.gateAfter.Store(64 << 10) // headers + some body
	e.proxy.set(proxyGate)

	type reader struct {
		res  *http.Response
		head []byte
	}
	open := func() reader {
		res, err := e.srv.Client().Get(e.srv.URL + "/media/slow.bin")
		if err != nil {
			t.Fatal(err)
		}
		head := make([]byte, 16<<10)
		if _, err := io.ReadFull(res.Body, head); err != nil {
			t.Fatalf("first bytes: %v", err)
		}
		return reader{res, head}
	}
	first := open()
	second := open()
	// Both have bytes while the origin is still held back.
	if e.proxy.passed.Load() >= int64(len(body)) {
		t.Fatal("origin already sent everything")
	}
	for _, r := range []reader{first, second} {
		if !bytes.Equal(r.head, body[:len(r.head)]) || r.res.Header.Get("X-Cache") != "MISS" {
			t.Fatal("wrong first bytes")
		}
	}
	e.proxy.openGate()
	for _, r := range []reader{first, second} {
		rest, err := io.ReadAll(r.res.Body)
		r.res.Body.Close()
		if err != nil || !bytes.Equal(append(r.head, rest...), body) {
			t.Fatalf("rest: %v, %d bytes", err, len(rest))
		}
	}
	if n := e.count.count(e.bucket, "slow.bin"); n != 1 {
		t.Errorf("origin GETs = %d, want 1", n)
	}
}

// TestPartialDownloadNeverServed cuts the origin's response mid-body, and
// then corrupts one byte of it: the client sees a broken transfer, nothing
// is cached, and the next request fetches again.
func TestPartialDownloadNeverServed(t *testing.T) {
	e := newEnv(t, nil)
	body := randBytes(300_000)
	e.put("p.bin", body, "")

	e.proxy.cutAfter.Store(100_000)
	e.proxy.set(proxyCut)
	r := e.get("p.bin")
	if r.err == nil && bytes.Equal(r.body, body) {
		t.Fatal("a cut download reached the client complete")
	}
	if r.err == nil && r.status == 200 {
		t.Fatalf("cut download looked complete: %d bytes, no error", len(r.body))
	}
	testkit.WaitFor(t, settleTimeout, "fill to end", func() bool {
		e.cache.mu.Lock()
		defer e.cache.mu.Unlock()
		return len(e.cache.fills) == 0
	})
	if n, _ := filesUnder(t, e.opts.Dir, ""); n != 0 {
		t.Errorf("%d files left after a cut download", n)
	}

	// One flipped byte in the body: the MD5 (S3's ETag) catches it.
	e.proxy.flipAt.Store(200_000)
	e.proxy.set(proxyFlip)
	r = e.get("p.bin")
	// A 502 is right too: on a busy machine the download can be over (and
	// rejected) before the request starts its answer.
	if r.err == nil && r.status == 200 {
		t.Fatalf("corrupt download reached the client complete (%d bytes)", len(r.body))
	}
	if len(r.body) >= len(body) {
		t.Errorf("client got %d bytes of a corrupt download", len(r.body))
	}
	testkit.WaitFor(t, settleTimeout, "fill to end", func() bool {
		e.cache.mu.Lock()
		defer e.cache.mu.Unlock()
		return len(e.cache.fills) == 0
	})
	if v := testutil.ToFloat64(e.cache.m.fillFailures.WithLabelValues("checksum")); v != 1 {
		t.Errorf("checksum failures = %v", v)
	}

	e.proxy.set(proxyPass)
	r = e.get("p.bin")
	if r.status != 200 || !bytes.Equal(r.body, body) || r.header.Get("X-Cache") != "MISS" {
		t.Fatalf("after repair: %d %q", r.status, r.header.Get("X-Cache"))
	}
	if r := e.get("p.bin"); r.header.Get("X-Cache") != "HIT" || !bytes.Equal(r.body, body) {
		t.Fatalf("then: %q", r.header.Get("X-Cache"))
	}
	if n := e.count.count(e.bucket, "p.bin"); n != 3 {
		t.Errorf("origin GETs = %d, want 3", n)
	}
}

func TestOriginDownServesStale(t *testing.T) {
	e := newEnv(t, func(o *Options) {
		o.TTL = time.Hour
		o.StaleWhileRevalidate = -1
		o.OriginTimeout = 2 * time.Second
	})
	body := []byte("stale but useful")
	e.put("s.txt", body, "text/plain")
	if r := e.get("s.txt"); r.status != 200 {
		t.Fatal(r.status)
	}
	e.age("s.txt", time.Hour) // past TTL

	e.proxy.set(proxyDown)
	r := e.get("s.txt")
	if r.status != 200 || !bytes.Equal(r.body, body) || r.header.Get("X-Cache") != "STALE-IF-ERROR" {
		t.Fatalf("origin down: %d %q %q", r.status, r.header.Get("X-Cache"), r.body)
	}
	// Right after a failure, the copy is served without asking again.
	before := e.count.count(e.bucket, "s.txt")
	if r := e.get("s.txt"); r.header.Get("X-Cache") != "STALE-IF-ERROR" {
		t.Fatalf("second: %q", r.header.Get("X-Cache"))
	}
	if e.count.count(e.bucket, "s.txt") != before {
		t.Error("a down origin was asked again at once")
	}

	// A hanging origin is a timeout, handled the same way.
	e.age("s.txt", 0) // as if the failure were long ago
	e.proxy.set(proxyHang)
	r = e.get("s.txt")
	if r.status != 200 || r.header.Get("X-Cache") != "STALE-IF-ERROR" {
		t.Fatalf("origin hanging: %d %q", r.status, r.header.Get("X-Cache"))
	}
	if v := testutil.ToFloat64(e.cache.m.originRequests.WithLabelValues("timeout")); v != 1 {
		t.Errorf("timeouts = %v", v)
	}

	// No copy: 502.
	if r := e.get("never-cached.txt"); r.status != http.StatusGatewayTimeout && r.status != http.StatusBadGateway {
		t.Errorf("uncached key with origin down: %d", r.status)
	}
	e.proxy.set(proxyPass)
	e.age("s.txt", 0)
	if r := e.get("s.txt"); r.header.Get("X-Cache") != "REVALIDATED" {
		t.Errorf("origin back: %q", r.header.Get("X-Cache"))
	}
}

func TestRevalidation(t *testing.T) {
	e := newEnv(t, func(o *Options) {
		o.TTL = time.Hour
		o.StaleWhileRevalidate = -1
	})
	v1 := []byte("version one")
	e.put("v.txt", v1, "text/plain")
	e.get("v.txt")
	e.age("v.txt", time.Hour)
	// Unchanged: a conditional GET answered 304, the copy is fresh again.
	r := e.get("v.txt")
	if r.status != 200 || !bytes.Equal(r.body, v1) || r.header.Get("X-Cache") != "REVALIDATED" {
		t.Fatalf("revalidated: %d %q", r.status, r.header.Get("X-Cache"))
	}
	if e.count.conditional() != 1 {
		t.Errorf("conditional GETs = %d", e.count.conditional())
	}
	if r := e.get("v.txt"); r.header.Get("X-Cache") != "HIT" {
		t.Errorf("after 304: %q", r.header.Get("X-Cache"))
	}
	// Changed: the new version replaces the old one.
	v2 := []byte("version two, longer")
	e.put("v.txt", v2, "text/plain")
	e.age("v.txt", time.Hour)
	r = e.get("v.txt")
	if !bytes.Equal(r.body, v2) {
		t.Fatalf("after change: %q", r.body)
	}
	if n, _ := filesUnder(t, e.opts.Dir, ".data"); n != 1 {
		t.Errorf("%d data files, want 1 (old version removed)", n)
	}
	// Deleted at the origin: gone here too.
	e.age("v.txt", time.Hour)
	if _, err := e.s3.DeleteObject(t.Context(), deleteInput(e.bucket, "v.txt")); err != nil {
		t.Fatal(err)
	}
	if r := e.get("v.txt"); r.status != 404 {
		t.Errorf("deleted at origin: %d", r.status)
	}
	if n, _ := filesUnder(t, e.opts.Dir, ".data"); n != 0 {
		t.Errorf("%d data files, want 0", n)
	}
}

func TestStaleWhileRevalidate(t *testing.T) {
	e := newEnv(t, func(o *Options) {
		o.TTL = time.Hour
		o.StaleWhileRevalidate = time.Hour
	})
	e.put("w.txt", []byte("old"), "text/plain")
	e.get("w.txt")
	e.put("w.txt", []byte("new!"), "text/plain")
	e.age("w.txt", time.Hour+time.Second) // past TTL, within SWR
	r := e.get("w.txt")
	if string(r.body) != "old" || r.header.Get("X-Cache") != "STALE" {
		t.Fatalf("within SWR: %q %q", r.body, r.header.Get("X-Cache"))
	}
	testkit.WaitFor(t, settleTimeout, "background revalidation", func() bool {
		r := e.get("w.txt")
		return string(r.body) == "new!" && r.header.Get("X-Cache") == "HIT"
	})
	if e.count.conditional() < 1 {
		t.Error("no conditional GET")
	}
}

func TestPurge(t *testing.T) {
	e := newEnv(t, nil)
	e.put("pg/x.css", []byte("body{}"), "text/css")
	e.get("pg/x.css")
	if r := e.get("pg/x.css"); r.header.Get("X-Cache") != "HIT" {
		t.Fatal("not cached")
	}
	req, _ := http.NewRequest(http.MethodDelete, e.admin.URL+"/v1/cache/pg/x.css", nil)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusNoContent {
		t.Fatalf("purge: %d", res.StatusCode)
	}
	select {
	case k := <-e.purged:
		if k != "pg/x.css" {
			t.Errorf("hook got %q", k)
		}
	default:
		t.Error("OnPurge hook not called")
	}
	if n, _ := filesUnder(t, e.opts.Dir, ".data"); n != 0 {
		t.Errorf("%d files after purge", n)
	}
	if r := e.get("pg/x.css"); r.header.Get("X-Cache") != "MISS" {
		t.Errorf("after purge: %q", r.header.Get("X-Cache"))
	}
	// Purge from a peer: no hook (no echo).
	if err := e.cache.Purge("pg/x.css"); err != nil {
		t.Fatal(err)
	}
	select {
	case k := <-e.purged:
		t.Errorf("hook called for a peer purge of %q", k)
	default:
	}
	if err := e.cache.Purge("../etc"); err == nil {
		t.Error("purge of a bad key accepted")
	}
	req, _ = http.NewRequest(http.MethodDelete, e.admin.URL+"/v1/cache/a/%00", nil)
	res, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 400 {
		t.Errorf("purge bad key: %d", res.StatusCode)
	}
}

// TestPurgeDuringFill: a purge that arrives while a download runs stops it
// from becoming an entry.
func TestPurgeDuringFill(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.OriginTimeout = time.Minute })
	body := randBytes(256 << 10)
	e.put("pf.bin", body, "")
	e.proxy.gateAfter.Store(32 << 10)
	e.proxy.set(proxyGate)
	res, err := e.srv.Client().Get(e.srv.URL + "/media/pf.bin")
	if err != nil {
		t.Fatal(err)
	}
	if err := e.cache.Purge("pf.bin"); err != nil {
		t.Fatal(err)
	}
	e.proxy.openGate()
	got, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err != nil || !bytes.Equal(got, body) {
		t.Fatalf("waiting client: %v", err)
	}
	testkit.WaitFor(t, settleTimeout, "fill end", func() bool {
		e.cache.mu.Lock()
		defer e.cache.mu.Unlock()
		return len(e.cache.fills) == 0 && e.cache.reserved == 0
	})
	if n, _ := filesUnder(t, e.opts.Dir, ".data"); n != 0 {
		t.Errorf("purged download was cached")
	}
}

func TestBadKeys(t *testing.T) {
	e := newEnv(t, nil)
	addr := strings.TrimPrefix(e.srv.URL, "http://")
	paths := []string{
		"/media/..%2F..%2Fetc%2Fpasswd",
		"/media/a/%2e%2e/%2e%2e/b",
		"/media/a%00b",
		"/media/a/%00",
		"/media/" + strings.Repeat("k", 1100),
		"/media/%ff%fe",
		"/media/a%2F%2Fb",
		"/media/%2e",
		"/media/a%5cb",
		"/media/a%0d%0aX-Injected:%201",
		"/media/%c2%85",
		"/media/",
	}
	for _, p := range paths {
		status := rawGet(t, addr, p, "")
		if status < 300 || status >= 500 {
			t.Errorf("%s: status %d, want a clean refusal", p, status)
		}
	}
	// Overflowing and malformed ranges on a key never seen: refused before
	// anything is fetched.
	for _, rng := range []string{"bytes=99999999999999999999-", "bytes=1-0", "bytes=x", "bytes=" + strings.Repeat("0-0,", 40) + "0-0"} {
		if status := rawGet(t, addr, "/media/fresh.bin", rng); status != 416 {
			t.Errorf("Range %q: %d, want 416", rng, status)
		}
	}
	e.count.mu.Lock()
	gets := len(e.count.gets)
	e.count.mu.Unlock()
	if gets != 0 {
		t.Errorf("bad requests reached the origin: %v", e.count.gets)
	}
	if n, _ := filesUnder(t, e.opts.Dir, ""); n != 0 {
		t.Errorf("bad requests wrote %d files", n)
	}
}

// rawGet sends a request line as written (no client-side cleaning).
func rawGet(t *testing.T, addr, path, rng string) int {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	req := "GET " + path + " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
	if rng != "" {
		req += "Range: " + rng + "\r\n"
	}
	fmt.Fprint(c, req+"\r\n")
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	res.Body.Close()
	return res.StatusCode
}

func TestHTTP2(t *testing.T) {
	e := newEnv(t, nil)
	body := randBytes(300_000)
	e.put("h2.bin", body, "")
	srv := newH2Server(t, e.cache)
	client := srv.Client()
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			r := doGet(t, client, http.MethodGet, srv.URL+"/media/h2.bin")
			if r.err != nil || !bytes.Equal(r.body, body) {
				t.Errorf("h2 GET: %v", r.err)
			}
		})
	}
	wg.Wait()
	res, err := client.Get(srv.URL + "/media/h2.bin")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.ProtoMajor != 2 {
		t.Fatalf("not HTTP/2: %s", res.Proto)
	}
	r := doGet(t, client, http.MethodGet, srv.URL+"/media/h2.bin", "Range", "bytes=1000-1999,5000-5009")
	if r.status != 206 || !strings.HasPrefix(r.header.Get("Content-Type"), "multipart/byteranges") {
		t.Errorf("h2 multi-range: %d", r.status)
	}
	if n := e.count.count(e.bucket, "h2.bin"); n != 1 {
		t.Errorf("origin GETs = %d", n)
	}
	// A download that breaks off resets the HTTP/2 stream: the client
	// sees an error, not a short body that looks complete. (When the
	// download has already failed before anything was sent to this client,
	// a 502 is the honest answer too.)
	e.put("h2cut.bin", randBytes(300_000), "")
	e.proxy.cutAfter.Store(100_000)
	e.proxy.set(proxyCut)
	if r := doGet(t, client, http.MethodGet, srv.URL+"/media/h2cut.bin"); r.err == nil && r.status < 500 {
		t.Errorf("cut download over h2: status %d, %d bytes, no error", r.status, len(r.body))
	}
	e.settle()
}

func TestFullDiskPassesThrough(t *testing.T) {
	dir := t.TempDir()
	if out, err := runCmd("mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", dir); err != nil {
		t.Skipf("cannot mount a small tmpfs to fill up (needs root): %v %s", err, out)
	}
	t.Cleanup(func() { runCmd("umount", dir) })
	e := newEnv(t, func(o *Options) { o.Dir = dir })
	body := randBytes(1 << 20) // four times the disk
	e.put("big.bin", body, "")
	r := e.get("big.bin")
	if r.err != nil || r.status != 200 || !bytes.Equal(r.body, body) {
		t.Fatalf("disk fills up mid-download: %d, err %v, %d bytes", r.status, r.err, len(r.body))
	}
	r = e.get("big.bin")
	if r.err != nil || r.status != 200 || !bytes.Equal(r.body, body) || r.header.Get("X-Cache") != "BYPASS" {
		t.Fatalf("full disk: %d %q err %v", r.status, r.header.Get("X-Cache"), r.err)
	}
	if r := e.get("big.bin", "Range", "bytes=1000-1999"); r.status != 206 || !bytes.Equal(r.body, body[1000:2000]) {
		t.Errorf("full disk range: %d", r.status)
	}
	if v := testutil.ToFloat64(e.cache.m.fillFailures.WithLabelValues("disk")); v < 1 {
		t.Errorf("disk failures = %v", v)
	}
}

func TestTooBigPassesThrough(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.MaxObjectBytes = 50_000 })
	body := randBytes(120_000)
	e.put("huge.mp4", body, "video/mp4")
	for i := range 3 {
		r := e.get("huge.mp4")
		if r.status != 200 || !bytes.Equal(r.body, body) || r.header.Get("X-Cache") != "BYPASS" {
			t.Fatalf("get %d: %d %q", i, r.status, r.header.Get("X-Cache"))
		}
	}
	r := e.get("huge.mp4", "Range", "bytes=100000-100009")
	if r.status != 206 || !bytes.Equal(r.body, body[100000:100010]) || r.header.Get("Content-Range") != "bytes 100000-100009/120000" {
		t.Fatalf("range: %d %q", r.status, r.header.Get("Content-Range"))
	}
	if n, _ := filesUnder(t, e.opts.Dir, ""); n != 0 {
		t.Errorf("%d files for an uncacheable object", n)
	}
	// One discovery GET, then one per request.
	if n := e.count.count(e.bucket, "huge.mp4"); n != 5 {
		t.Errorf("origin GETs = %d, want 5", n)
	}
}

func TestTenantBuckets(t *testing.T) {
	addr := s3Server(t)
	client := newS3Client("http://"+addr, nil)
	b1, b2 := newBucket(t, client), newBucket(t, client)
	putObject(t, client, b1, "logo.png", []byte("acme"), "image/png")
	putObject(t, client, b2, "site/logo.png", []byte("default"), "image/png")
	o, err := NewS3Origin(t.Context(), S3Options{
		Bucket: b2, KeyPrefix: "site/", Buckets: map[string]string{"acme": b1},
		Endpoint: "http://" + addr, PathStyle: true, AccessKeyID: s3Access, SecretAccessKey: s3Secret,
	})
	if err != nil {
		t.Fatal(err)
	}
	for key, want := range map[string]string{"acme/logo.png": "acme", "logo.png": "default"} {
		obj, err := o.Fetch(t.Context(), OriginRequest{Key: key})
		if err != nil {
			t.Fatalf("%s: %v", key, err)
		}
		b, _ := io.ReadAll(obj.Body)
		obj.Body.Close()
		if string(b) != want {
			t.Errorf("%s = %q", key, b)
		}
	}
	if _, err := o.Fetch(t.Context(), OriginRequest{Key: "acme/none.png"}); err != ErrNotFound {
		t.Errorf("missing: %v", err)
	}
}

func runCmd(name string, args ...string) ([]byte, error) {
	return execCommand(name, args...).CombinedOutput()
}
