package cdn

import (
	"bytes"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/edgenode/edgenode/internal/testkit"
)

// Objects an uploader could make a browser run as a page on the media
// host's origin (stored XSS): HTML, SVG with a script, XML that loads a
// stylesheet, and the same in disguise.
var activeObjects = []struct {
	key, ctype string
	body       string
}{
	{"x.svg", "image/svg+xml", `<svg xmlns="http://www.w3.org/2000/svg"><script>alert(document.cookie)</script></svg>`},
	{"x.html", "text/html; charset=utf-8", `<!doctype html><script>alert(document.cookie)</script>`},
	{"x.xhtml", "application/xhtml+xml", `<html xmlns="http://www.w3.org/1999/xhtml"><script>alert(1)</script></html>`},
	{"x.xml", "text/xml", `<?xml-stylesheet type="text/xsl" href="x.xsl"?><x/>`},
	{"x.rss", "application/rss+xml", `<rss><channel/></rss>`},
	{"shout", "TEXT/HTML", `<script>alert(1)</script>`},
	{"x.js", "text/javascript", `alert(1)`},
	{"x.pdf-no", "application/x-unknown-thing", `<script>alert(1)</script>`},
}

// checkSandboxed fails unless the response forbids scripts on the media
// origin (CSP sandbox) and type sniffing.
func checkSandboxed(t *testing.T, what string, r resp) {
	t.Helper()
	if r.status != http.StatusOK && r.status != http.StatusPartialContent {
		t.Errorf("%s: status %d", what, r.status)
		return
	}
	if got := r.header.Get("Content-Security-Policy"); got != "sandbox" {
		t.Errorf("%s: Content-Security-Policy %q, want \"sandbox\"", what, got)
	}
	if got := r.header.Get("X-Content-Type-Options"); got != "nosniff" {
		t.Errorf("%s: X-Content-Type-Options %q, want nosniff", what, got)
	}
}

// TestActiveContentSandboxed plays an uploader who puts a script-carrying
// SVG, an HTML page and their kin in the bucket, and a victim who opens
// their media URLs: on a miss, a hit, a range, a HEAD and a pass-through,
// the response carries Content-Security-Policy: sandbox (the document gets
// a unique origin and no scripts) and nosniff. Passive media (a PNG, a
// video) gets nosniff and no CSP.
func TestActiveContentSandboxed(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.MaxObjectBytes = 50_000 })
	for _, o := range activeObjects {
		e.put(o.key, []byte(o.body), o.ctype)
		checkSandboxed(t, o.key+" miss", e.get(o.key))
		checkSandboxed(t, o.key+" hit", e.get(o.key))
		checkSandboxed(t, o.key+" range", e.get(o.key, "Range", "bytes=0-9"))
		checkSandboxed(t, o.key+" HEAD", doGet(t, e.srv.Client(), http.MethodHead, e.srv.URL+"/media/"+o.key))
	}
	// Too big to cache: served straight from the origin.
	big := append([]byte(`<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script>`), bytes.Repeat([]byte(" "), 60_000)...)
	e.put("big.svg", append(big, "</svg>"...), "image/svg+xml")
	for range 2 {
		r := e.get("big.svg")
		if r.header.Get("X-Cache") != "BYPASS" {
			t.Errorf("big.svg: X-Cache %q, want BYPASS", r.header.Get("X-Cache"))
		}
		checkSandboxed(t, "big.svg", r)
	}

	e.put("a.png", randBytes(1000), "image/png")
	e.put("v.mp4", randBytes(1000), "video/mp4")
	for _, k := range []string{"a.png", "v.mp4"} {
		for range 2 {
			r := e.get(k)
			if r.status != 200 || r.header.Get("X-Content-Type-Options") != "nosniff" || r.header.Get("Content-Security-Policy") != "" {
				t.Errorf("%s: %d, nosniff %q, CSP %q", k, r.status, r.header.Get("X-Content-Type-Options"), r.header.Get("Content-Security-Policy"))
			}
		}
	}
}

// TestActiveContentSandboxedDirOrigin: the same from the folder origin,
// where the type comes from the extension or, without one, from sniffing.
func TestActiveContentSandboxedDirOrigin(t *testing.T) {
	c, srv, dir := newDirCache(t, nil)
	files := map[string]string{
		"x.svg":  `<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>`,
		"x.html": `<!doctype html><script>alert(1)</script>`,
		"x.htm":  `<script>alert(1)</script>`,
		"x.xml":  `<?xml version="1.0"?><x/>`,
		"page":   `<!doctype html><script>alert(1)</script>`, // sniffed as text/html
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for name := range files {
		for _, what := range []string{"miss", "hit"} {
			r := doGet(t, srv.Client(), http.MethodGet, srv.URL+"/media/"+name)
			testkit.WaitFor(t, settleTimeout, "fill", func() bool { return c.running.Load() == 0 })
			checkSandboxed(t, name+" "+what+" ("+r.header.Get("Content-Type")+")", r)
		}
	}
}

func TestActiveContentTypes(t *testing.T) {
	for ctype, want := range map[string]bool{
		"image/png": false, "image/jpeg": false, "image/webp": false, "image/avif": false, "image/gif": false,
		"video/mp4": false, "audio/mpeg": false, "font/woff2": false, "application/pdf": false,
		"Image/PNG": false, "video/webm; codecs=vp9": false,
		"image/svg+xml": true, "IMAGE/SVG+XML": true, "image/svg+xml; charset=utf-8": true,
		"text/html": true, "text/html; charset=utf-8": true, "application/xhtml+xml": true,
		"text/xml": true, "application/xml": true, "application/atom+xml": true, "text/xsl": true,
		"application/javascript": true, "text/plain": true, "application/octet-stream": true,
		"": true, "garbage": true, "image/": true, "image/png,text/html": true,
		"multipart/x-mixed-replace": true, "application/x-shockwave-flash": true,
	} {
		if got := activeType(ctype); got != want {
			t.Errorf("activeType(%q) = %v, want %v", ctype, got, want)
		}
	}
}
