package cdn

import (
	"bytes"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgenode/edgenode/internal/testkit"
)

// newDirCache serves a cache over a folder origin, as `make run` does.
func newDirCache(t testing.TB, tweak func(*Options)) (*Cache, *httptest.Server, string) {
	t.Helper()
	originDir := t.TempDir()
	o, err := NewDirOrigin(originDir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { o.Close() })
	opts := Options{Dir: t.TempDir(), Origin: o}
	if tweak != nil {
		tweak(&opts)
	}
	c, err := New(opts, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	for p, h := range c.Routes() {
		mux.Handle(p, h)
	}
	srv := httptest.NewServer(mux)
	t.Cleanup(func() {
		srv.Close()
		c.Close()
	})
	return c, srv, originDir
}

// TestDirOriginDemo is the "done when" walk-through on the folder
// origin: demo/hello.txt served, then a hit, a 5-byte range, a 304.
func TestDirOriginDemo(t *testing.T) {
	c, srv, dir := newDirCache(t, nil)
	os.MkdirAll(filepath.Join(dir, "demo"), 0o755)
	body := []byte("hello, edge!\n")
	os.WriteFile(filepath.Join(dir, "demo", "hello.txt"), body, 0o644)
	get := func(hdr ...string) resp {
		r := doGet(t, srv.Client(), http.MethodGet, srv.URL+"/media/demo/hello.txt", hdr...)
		testkit.WaitFor(t, settleTimeout, "fill", func() bool { return c.running.Load() == 0 })
		return r
	}
	r := get()
	if r.status != 200 || !bytes.Equal(r.body, body) || r.header.Get("X-Cache") != "MISS" {
		t.Fatalf("first: %d %q %q", r.status, r.header.Get("X-Cache"), r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != "text/plain; charset=utf-8" {
		t.Errorf("Content-Type %q", ct)
	}
	r = get()
	if r.header.Get("X-Cache") != "HIT" {
		t.Errorf("second: %q", r.header.Get("X-Cache"))
	}
	r = get("Range", "bytes=0-4")
	if r.status != 206 || string(r.body) != "hello" {
		t.Errorf("range: %d %q", r.status, r.body)
	}
	etag := r.header.Get("ETag")
	if r := get("If-None-Match", etag); r.status != 304 {
		t.Errorf("If-None-Match: %d", r.status)
	}
	// Unknown extension: the type is sniffed.
	os.WriteFile(filepath.Join(dir, "demo", "page"), []byte("<!doctype html><p>x"), 0o644)
	r = doGet(t, srv.Client(), http.MethodGet, srv.URL+"/media/demo/page")
	if ct := r.header.Get("Content-Type"); ct != "text/html; charset=utf-8" {
		t.Errorf("sniffed Content-Type %q", ct)
	}
	// Missing files, folders and escapes are 404s.
	os.Symlink("/etc", filepath.Join(dir, "escape"))
	for _, k := range []string{"demo/none.txt", "demo", "escape/passwd", "demo/hello.txt/x"} {
		if r := doGet(t, srv.Client(), http.MethodGet, srv.URL+"/media/"+k); r.status != 404 {
			t.Errorf("%s: %d", k, r.status)
		}
	}
}

func TestDirOriginConditional(t *testing.T) {
	dir := t.TempDir()
	o, err := NewDirOrigin(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	os.WriteFile(filepath.Join(dir, "f.bin"), []byte("0123456789"), 0o644)
	obj, err := o.Fetch(t.Context(), OriginRequest{Key: "f.bin"})
	if err != nil {
		t.Fatal(err)
	}
	obj.Body.Close()
	if _, err := o.Fetch(t.Context(), OriginRequest{Key: "f.bin", IfNoneMatch: obj.ETag}); err != ErrNotModified {
		t.Errorf("If-None-Match: %v", err)
	}
	if _, err := o.Fetch(t.Context(), OriginRequest{Key: "f.bin", IfMatch: `"other"`}); err != ErrChanged {
		t.Errorf("If-Match: %v", err)
	}
	part, err := o.Fetch(t.Context(), OriginRequest{Key: "f.bin", Offset: 3, Length: 4})
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 10)
	n, _ := part.Body.Read(b)
	part.Body.Close()
	if string(b[:n]) != "3456" || part.Offset != 3 || part.Size != 10 {
		t.Errorf("range: %q offset %d size %d", b[:n], part.Offset, part.Size)
	}
	if _, err := o.Fetch(t.Context(), OriginRequest{Key: "f.bin", Offset: 10}); err != ErrRange {
		t.Errorf("offset at end: %v", err)
	}
}

// TestMetricsTwiceOnOneRegistry: a second Cache on one registry is a
// programming error that surfaces as an error naming the package, not as a
// panic.
func TestMetricsTwiceOnOneRegistry(t *testing.T) {
	o, err := NewDirOrigin(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	reg := prometheus.NewRegistry()
	first, err := New(Options{Dir: t.TempDir(), Origin: o}, slog.New(slog.DiscardHandler), reg)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	second, err := New(Options{Dir: t.TempDir(), Origin: o}, slog.New(slog.DiscardHandler), reg)
	if err == nil {
		second.Close()
	}
	var are prometheus.AlreadyRegisteredError
	if !errors.As(err, &are) || !strings.HasPrefix(err.Error(), "cdn: ") {
		t.Fatalf("second Cache: %v", err)
	}
}
