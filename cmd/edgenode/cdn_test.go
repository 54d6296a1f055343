package main

import (
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// The embedded node serves media from its folder origin through the cache:
// the issue 7 "done when" against the real binary. A hit held in memory is
// answered on HTTP/1.1 by the transport's fast path, the same bytes, and
// not once the object is purged.
func TestEmbeddedNodeMedia(t *testing.T) {
	cfg, p := nodeConfig(t, "")
	startNode(t, cfg, p)
	dir := filepath.Join(p.dataDir, "origin", "demo")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "hello.txt"), []byte("hello, media\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	url := "https://" + p.https + "/media/demo/hello.txt"
	c := httpsClient(true)
	resp, body := get(t, c, url)
	if resp.StatusCode != 200 || body != "hello, media\n" || resp.Header.Get("X-Cache") != "MISS" {
		t.Fatalf("first: %d %q %v", resp.StatusCode, body, resp.Header)
	}
	resp, _ = get(t, c, url)
	etag := resp.Header.Get("ETag")
	if resp.Header.Get("X-Cache") != "HIT" || etag == "" {
		t.Errorf("second: %v", resp.Header)
	}
	h1 := httpsClient(false)
	resp, body = get(t, h1, url)
	if resp.StatusCode != 200 || body != "hello, media\n" || resp.Header.Get("X-Cache") != "HIT" || resp.Header.Get("ETag") != etag || resp.ProtoMajor != 1 {
		t.Errorf("HTTP/1.1 hit: %s %d %q %v", resp.Proto, resp.StatusCode, body, resp.Header)
	}
	if v := metricValue(t, p.admin, "edgenode_http_fast_answers_total", "proto", "1.1"); v != "1" {
		t.Errorf("fast-path answers after one HTTP/1.1 hit: %q, want 1", v)
	}
	// The same hit over HTTP/2 comes from the HTTP/2 server's fast answer.
	before := metricValue(t, p.admin, "edgenode_http_fast_answers_total", "proto", "2")
	resp, body = get(t, c, url)
	if resp.StatusCode != 200 || body != "hello, media\n" || resp.Header.Get("X-Cache") != "HIT" || resp.Header.Get("ETag") != etag || resp.ProtoMajor != 2 {
		t.Errorf("HTTP/2 hit: %s %d %q %v", resp.Proto, resp.StatusCode, body, resp.Header)
	}
	after := metricValue(t, p.admin, "edgenode_http_fast_answers_total", "proto", "2")
	if b, err1 := strconv.ParseFloat(before, 64); err1 != nil || after != strconv.FormatFloat(b+1, 'g', -1, 64) {
		t.Errorf("HTTP/2 fast answers: %q before the hit, %q after", before, after)
	}
	req, _ := http.NewRequest("GET", url, nil)
	req.Header.Set("Range", "bytes=0-4")
	r2, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(r2.Body)
	r2.Body.Close()
	if r2.StatusCode != http.StatusPartialContent || string(b) != "hello" {
		t.Errorf("range: %d %q", r2.StatusCode, b)
	}
	req, _ = http.NewRequest("GET", url, nil)
	req.Header.Set("If-None-Match", etag)
	r3, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	r3.Body.Close()
	if r3.StatusCode != http.StatusNotModified {
		t.Errorf("conditional: %d", r3.StatusCode)
	}
	// Purge on the admin listener: the next request is a miss again.
	del, _ := http.NewRequest("DELETE", "http://"+p.admin+"/v1/cache/demo/hello.txt", nil)
	del.Header.Set("Authorization", "Bearer "+adminTokenOf(t, p))
	r4, err := http.DefaultClient.Do(del)
	if err != nil {
		t.Fatal(err)
	}
	r4.Body.Close()
	if r4.StatusCode != http.StatusNoContent {
		t.Errorf("purge: %d", r4.StatusCode)
	}
	resp, _ = get(t, h1, url)
	if resp.Header.Get("X-Cache") != "MISS" {
		t.Errorf("after purge: %v", resp.Header.Get("X-Cache"))
	}
}
