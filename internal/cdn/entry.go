package cdn

import (
	"encoding/hex"
	"io"
	"mime"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// entry is one cached object. Its fields are immutable once it is in the
// index, except those marked as guarded by Cache.mu.
type entry struct {
	key       string
	hash      string
	gen       uint64
	size      int64
	etag      string // the origin's ETag, "" when none
	lastMod   time.Time
	ctype     string
	md5       [16]byte
	fetchedAt time.Time
	hdr       objHeaders
	dataPath  string

	// Guarded by Cache.mu.
	validated int64 // unix nanos of the last fetch or successful revalidation
	// failedUntil (unix nanos): a revalidation failed; until then the copy
	// is served as stale-if-error without asking the origin again.
	failedUntil int64
	h           *handle    // open file while the entry is in Cache.open
	mem         *memObject // the bytes while the entry is in Cache.mem
	removed     bool
}

// memObject is the bytes of a small object held in the memory tier, and
// the header of its 200 for the transport's fast paths, as an HTTP/1.1
// header block (AppendFast) and as an HPACK block (AppendFastBlock); never
// mutated. A pointer, so that passing it as an io.ReaderAt allocates
// nothing.
type memObject struct {
	b, head, h2block []byte
}

func (m *memObject) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(m.b)) {
		return 0, io.EOF
	}
	n := copy(p, m.b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// handle is an open file shared by the requests reading it (pread only, so
// they never disturb each other). The cache holds one reference while the
// entry is in the open-file LRU; each reader holds one while it reads.
type handle struct {
	f    *os.File
	refs atomic.Int32
}

func newHandle(f *os.File) *handle {
	h := &handle{f: f}
	h.refs.Store(1)
	return h
}

func (h *handle) acquire() { h.refs.Add(1) }

func (h *handle) release() {
	if h.refs.Add(-1) == 0 {
		h.f.Close()
	}
}

// closeFile drops the cache's reference to the open file (under Cache.mu).
func (e *entry) closeFile() {
	if e.h != nil {
		e.h.release()
		e.h = nil
	}
}

// objHeaders are the validators and precomputed header values of one
// version of an object: built once per entry (or fill), then only read, so
// the hit path assigns header slices without formatting anything.
type objHeaders struct {
	size    int64
	etag    string    // the ETag sent to clients, "" when none
	lastMod time.Time // whole seconds, zero when unknown
	lmStr   string    // lastMod in http.TimeFormat
	ctype   string

	hCtype, hLen, hETag, hLastMod []string // nil: header not sent
	hCSP                          []string // Content-Security-Policy; nil for passive media
}

func newObjHeaders(size int64, etag string, lastMod time.Time, ctype string) objHeaders {
	if ctype == "" {
		ctype = "application/octet-stream"
	}
	h := objHeaders{size: size, etag: etag, ctype: ctype}
	h.hCtype = []string{ctype}
	if activeType(ctype) {
		h.hCSP = hSandbox
	}
	h.hLen = []string{strconv.FormatInt(size, 10)}
	if etag != "" {
		h.hETag = []string{etag}
	}
	if !lastMod.IsZero() && lastMod.Unix() > 0 {
		h.lastMod = lastMod.Truncate(time.Second)
		h.lmStr = h.lastMod.UTC().Format(http.TimeFormat)
		h.hLastMod = []string{h.lmStr}
	}
	return h
}

// hSandbox is the Content-Security-Policy of active content: the document
// gets a unique origin and runs no script, so an uploaded page or SVG
// cannot act as the media host's origin (read its cookies, call its APIs).
// Shared, never mutated.
var hSandbox = []string{"sandbox"}

// activeType reports whether a response of this Content-Type could run
// script or render as a document that does: everything but the passive
// media families (raster images, audio, video, fonts) and PDF, whose
// scripts run in the browser's viewer rather than on the page's origin.
// Anything unparsable, or that names SVG, XML or HTML in any family, is
// active. Being generous costs nothing: a sandboxed JSON file or text
// file still displays, and subresource loads ignore the policy.
func activeType(ctype string) bool {
	mt, _, err := mime.ParseMediaType(ctype)
	if err != nil {
		return true
	}
	typ, sub, ok := strings.Cut(mt, "/") // ParseMediaType lower-cases
	if !ok || sub == "" || strings.Contains(sub, "xml") || strings.Contains(sub, "svg") || strings.Contains(sub, "html") {
		return true
	}
	switch typ {
	case "image", "audio", "video", "font":
		return false
	case "application":
		return sub != "pdf"
	}
	return true
}

// buildHeaders fills e.hdr. Without an origin ETag, the MD5 of the bytes
// serves as one (strong: it names exactly these bytes).
func (e *entry) buildHeaders() {
	etag := e.etag
	if etag == "" || len(etag) < 2 || etag[len(etag)-1] != '"' {
		etag = `"` + hex.EncodeToString(e.md5[:]) + `"`
	}
	e.hdr = newObjHeaders(e.size, etag, e.lastMod, e.ctype)
}

func (e *entry) meta() objMeta {
	return objMeta{
		Key: e.key, Gen: e.gen, Size: e.size, ETag: e.etag, LastModified: e.lastMod,
		ContentType: e.ctype, MD5: hex.EncodeToString(e.md5[:]), FetchedAt: e.fetchedAt,
		ValidatedAt: time.Unix(0, e.validated),
	}
}

func entryFromMeta(m *objMeta) *entry {
	e := &entry{
		key: m.Key, hash: keyHash(m.Key), gen: m.Gen, size: m.Size, etag: m.ETag,
		lastMod: m.LastModified, ctype: m.ContentType, fetchedAt: m.FetchedAt,
		validated: m.ValidatedAt.UnixNano(),
	}
	b, _ := hex.DecodeString(m.MD5)
	copy(e.md5[:], b)
	return e
}
