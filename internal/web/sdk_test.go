package web

import (
	"compress/gzip"
	"crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
)

func TestSDKServed(t *testing.T) {
	s, err := NewSDK()
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	for p, h := range s.Routes() {
		mux.Handle(p, h)
	}
	srv := httptest.NewServer(mux)
	defer srv.Close()
	// DisableCompression: the test sees what the server sends.
	client := &http.Client{Transport: &http.Transport{DisableCompression: true}}
	get := func(path string, hdr ...string) (*http.Response, []byte) {
		t.Helper()
		req, _ := http.NewRequest("GET", srv.URL+path, nil)
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, b
	}

	resp, body := get("/sdk/v1/manifest.json")
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("manifest: %s %q", resp.Status, resp.Header.Get("Content-Type"))
	}
	var m SDKManifest
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatal(err)
	}
	if m.Latest != s.Latest || len(m.Versions[m.Latest]) != 2 {
		t.Fatalf("manifest: %s", body)
	}
	for name, f := range m.Versions[m.Latest] {
		resp, body := get(f.Path)
		if resp.StatusCode != 200 || resp.Header.Get("Cache-Control") != "public, max-age=31536000, immutable" ||
			resp.Header.Get("Content-Type") != "text/javascript; charset=utf-8" || resp.Header.Get("Access-Control-Allow-Origin") != "*" {
			t.Fatalf("%s: %s %v", f.Path, resp.Status, resp.Header)
		}
		sum := sha512.Sum384(body)
		if got := "sha384-" + base64.StdEncoding.EncodeToString(sum[:]); got != f.Integrity || len(body) != f.Bytes {
			t.Fatalf("%s: integrity %s, manifest says %s", f.Path, got, f.Integrity)
		}
		// Revalidation, gzip, the moving alias.
		if r, _ := get(f.Path, "If-None-Match", resp.Header.Get("ETag")); r.StatusCode != http.StatusNotModified {
			t.Errorf("%s with its ETag: %s", f.Path, r.Status)
		}
		r, gz := get(f.Path, "Accept-Encoding", "gzip, br")
		if r.Header.Get("Content-Encoding") != "gzip" || len(gz) != f.Gzipped {
			t.Errorf("%s gzipped: %q %d bytes", f.Path, r.Header.Get("Content-Encoding"), len(gz))
		} else if zr, err := gzip.NewReader(strings.NewReader(string(gz))); err != nil {
			t.Error(err)
		} else if plain, _ := io.ReadAll(zr); string(plain) != string(body) {
			t.Errorf("%s: the gzipped body is another file", f.Path)
		}
		r, alias := get("/sdk/v1/" + name)
		if r.StatusCode != 200 || string(alias) != string(body) || r.Header.Get("Cache-Control") != "public, max-age=300" {
			t.Errorf("/sdk/v1/%s: %s %q", name, r.Status, r.Header.Get("Cache-Control"))
		}
		t.Logf("%s: %d bytes, %d gzipped, %s", f.Path, f.Bytes, f.Gzipped, f.Integrity)
	}
	for _, p := range []string{"/sdk/v1/0.9.0/edgenode.js", "/sdk/v1/", "/sdk/v1/../web.go", "/sdk/v1/" + m.Latest + "/edgenode.mjs.map"} {
		if r, _ := get(p); r.StatusCode != http.StatusNotFound {
			t.Errorf("%s: %s, want 404", p, r.Status)
		}
	}
}

// TestReadmeEmbedSnippet: the README's copy-paste snippet names the newest
// version with its integrity hash.
func TestReadmeEmbedSnippet(t *testing.T) {
	s, err := NewSDK()
	if err != nil {
		t.Fatal(err)
	}
	want := `<script src="https://live.example.com/sdk/v1/` + s.Latest + `/edgenode.js"` + "\n" +
		`        integrity="` + s.Integrity + `" crossorigin="anonymous"></script>`
	for _, f := range []string{"../../README.md", "../../sdk/js/README.md"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), want) {
			t.Errorf("%s has no embed snippet of version %s; want:\n%s", f, s.Latest, want)
		}
	}
}
