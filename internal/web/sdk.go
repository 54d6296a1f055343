package web

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"net/http"
	"path"
	"strconv"
	"strings"

	"github.com/edgenode/edgenode/sdk"
)

// SDK serves edgenode.js, the browser client of live channels (package
// sdk), on the public listener of every node:
//
//	GET /sdk/v1/{version}/edgenode.js    the classic script (sets window.edgenode), immutable
//	GET /sdk/v1/{version}/edgenode.mjs   the ES module, immutable
//	GET /sdk/v1/edgenode.js, .mjs        the newest 1.x, revalidated every 5 minutes
//	GET /sdk/v1/manifest.json            versions, paths and SRI integrity hashes
//
// A version's files never change (package sdk checks it), so they are
// cached for a year and pinned by pages with an integrity hash; every
// released version stays served, so a page pinned to an old one keeps
// working during and after a rolling upgrade. The unversioned path follows
// the newest version: it gets a short cache life and must not be pinned
// with an integrity hash. Responses are gzipped when the client takes it,
// carry an ETag, and may be loaded from any origin (CORS), as module
// scripts and integrity-checked scripts need.
type SDK struct {
	files    map[string]*sdkFile // by URL path
	manifest []byte
	// Latest is the newest version; Integrity the SRI hash of its classic
	// script (the README's embed snippet).
	Latest, Integrity string
}

type sdkFile struct {
	body, gz  []byte
	etag      string
	immutable bool
	ctype     string
}

// SDKManifest is /sdk/v1/manifest.json.
type SDKManifest struct {
	Latest   string                        `json:"latest"`
	Versions map[string]map[string]SDKFile `json:"versions"` // version -> file name -> file
}

// SDKFile is one served file in the manifest.
type SDKFile struct {
	Path      string `json:"path"`
	Integrity string `json:"integrity"` // sha384-..., for <script integrity>
	Bytes     int    `json:"bytes"`
	Gzipped   int    `json:"gzipped"`
}

// NewSDK loads every version of package sdk's dist.
func NewSDK() (*SDK, error) {
	dist, err := fs.Sub(sdk.Dist, "js/dist")
	if err != nil {
		return nil, err
	}
	dirs, err := fs.ReadDir(dist, ".")
	if err != nil {
		return nil, fmt.Errorf("sdk: %w", err)
	}
	s := &SDK{files: map[string]*sdkFile{}}
	m := SDKManifest{Versions: map[string]map[string]SDKFile{}}
	for _, d := range dirs {
		v := d.Name()
		if !d.IsDir() || !strings.HasPrefix(v, "1.") || semver(v) == nil {
			return nil, fmt.Errorf("sdk: js/dist/%s: want a folder named 1.Y.Z", v)
		}
		m.Versions[v] = map[string]SDKFile{}
		for _, name := range []string{"edgenode.js", "edgenode.mjs"} {
			body, err := fs.ReadFile(dist, path.Join(v, name))
			if err != nil {
				return nil, fmt.Errorf("sdk: %w", err)
			}
			f, err := newSDKFile(body, true)
			if err != nil {
				return nil, err
			}
			p := "/sdk/v1/" + v + "/" + name
			s.files[p] = f
			sum := sha512.Sum384(body)
			m.Versions[v][name] = SDKFile{Path: p, Integrity: "sha384-" + base64.StdEncoding.EncodeToString(sum[:]),
				Bytes: len(body), Gzipped: len(f.gz)}
		}
		if m.Latest == "" || newer(v, m.Latest) {
			m.Latest = v
		}
	}
	if m.Latest == "" {
		return nil, fmt.Errorf("sdk: no version in js/dist")
	}
	for _, name := range []string{"edgenode.js", "edgenode.mjs"} {
		latest := *s.files["/sdk/v1/"+m.Latest+"/"+name]
		latest.immutable = false
		s.files["/sdk/v1/"+name] = &latest
	}
	s.Latest, s.Integrity = m.Latest, m.Versions[m.Latest]["edgenode.js"].Integrity
	if s.manifest, err = json.MarshalIndent(m, "", "  "); err != nil {
		return nil, err
	}
	mf, err := newSDKFile(s.manifest, false)
	if err != nil {
		return nil, err
	}
	mf.ctype = "application/json"
	s.files["/sdk/v1/manifest.json"] = mf
	return s, nil
}

func newSDKFile(body []byte, immutable bool) (*sdkFile, error) {
	var gz bytes.Buffer
	w, _ := gzip.NewWriterLevel(&gz, gzip.BestCompression)
	if _, err := w.Write(body); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	sum := sha256.Sum256(body)
	return &sdkFile{body: body, gz: gz.Bytes(), etag: `"` + hex.EncodeToString(sum[:12]) + `"`,
		immutable: immutable, ctype: "text/javascript; charset=utf-8"}, nil
}

// Routes are the public listener's routes.
func (s *SDK) Routes() map[string]http.Handler {
	return map[string]http.Handler{"GET /sdk/v1/": http.HandlerFunc(s.serve)}
}

func (s *SDK) serve(w http.ResponseWriter, r *http.Request) {
	f := s.files[r.URL.Path]
	if f == nil {
		http.Error(w, "no such file: see /sdk/v1/manifest.json", http.StatusNotFound)
		return
	}
	h := w.Header()
	h.Set("Content-Type", f.ctype)
	h.Set("ETag", f.etag)
	h.Set("Vary", "Accept-Encoding")
	h.Set("Access-Control-Allow-Origin", "*")
	h.Set("Cross-Origin-Resource-Policy", "cross-origin")
	h.Set("X-Content-Type-Options", "nosniff")
	if f.immutable {
		h.Set("Cache-Control", "public, max-age=31536000, immutable")
	} else {
		h.Set("Cache-Control", "public, max-age=300")
	}
	if etagMatch(r.Header.Get("If-None-Match"), f.etag) {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	body := f.body
	if acceptsGzip(r.Header.Get("Accept-Encoding")) {
		body = f.gz
		h.Set("Content-Encoding", "gzip")
	}
	h.Set("Content-Length", strconv.Itoa(len(body)))
	if r.Method == http.MethodHead {
		return
	}
	_, _ = w.Write(body)
}

func etagMatch(header, etag string) bool {
	for _, t := range strings.Split(header, ",") {
		t = strings.TrimPrefix(strings.TrimSpace(t), "W/")
		if t == etag || t == "*" {
			return true
		}
	}
	return false
}

func acceptsGzip(header string) bool {
	for _, part := range strings.Split(header, ",") {
		name, params, _ := strings.Cut(strings.TrimSpace(part), ";")
		if strings.EqualFold(strings.TrimSpace(name), "gzip") {
			return strings.ReplaceAll(strings.TrimSpace(params), " ", "") != "q=0"
		}
	}
	return false
}

// semver is X.Y.Z as numbers, nil when v is not that.
func semver(v string) []int {
	parts := strings.Split(v, ".")
	if len(parts) != 3 {
		return nil
	}
	out := make([]int, 3)
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 || strconv.Itoa(n) != p {
			return nil
		}
		out[i] = n
	}
	return out
}

func newer(a, b string) bool {
	x, y := semver(a), semver(b)
	for i := range 3 {
		if x[i] != y[i] {
			return x[i] > y[i]
		}
	}
	return false
}
