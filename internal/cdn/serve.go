package cdn

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"math"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

const (
	copyBufSize = 64 << 10
	// smallBufSize: an HTTP/2 or HTTP/3 response is framed in pieces of
	// 16 KiB at most (the default largest frame), so a larger buffer would
	// only hold more memory for each of the many streams of a connection.
	smallBufSize = 16 << 10
	// sendfileMin: below it a pread into a pooled buffer costs less than
	// opening a private file descriptor for sendfile.
	sendfileMin = 64 << 10
)

// Header values shared by every response; never mutated.
var (
	xHit         = []string{"HIT"}
	xMiss        = []string{"MISS"}
	xStale       = []string{"STALE"}
	xStaleErr    = []string{"STALE-IF-ERROR"}
	xRevalidated = []string{"REVALIDATED"}
	xBypass      = []string{"BYPASS"}
	xNegative    = []string{"NEGATIVE"}
	hBytes       = []string{"bytes"}
	hNosniff     = []string{"nosniff"}
)

// ServeHTTP answers GET and HEAD of Prefix{key...}.
func (c *Cache) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header()["Allow"] = []string{"GET, HEAD"}
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	key := r.PathValue("key")
	if key == "" {
		key = strings.TrimPrefix(r.URL.Path, c.opts.Prefix)
	}
	if err := ValidateKey(key); err != nil {
		c.m.badReq.Inc()
		http.Error(w, "bad key: "+err.Error(), http.StatusBadRequest)
		return
	}
	// A Range that is wrong whatever the object's size is refused before
	// anything is looked up or fetched.
	if rh := r.Header["Range"]; len(rh) > 0 && len(r.Header["If-Range"]) == 0 {
		if _, _, err := parseRanges(rh[0], math.MaxInt64, c.opts.MaxRanges); errors.Is(err, errRangeSyntax) || errors.Is(err, errRangeMany) {
			c.m.rangeUnsat.Inc()
			http.Error(w, "range not satisfiable: "+err.Error(), http.StatusRequestedRangeNotSatisfiable)
			return
		}
	}
	c.serveKey(w, r, key, true)
}

// serveKey routes one request: hit, stale, revalidation, coalesced miss,
// remembered 404 or pass-through. retry allows one more lookup when a fill
// ended just as this request joined it.
func (c *Cache) serveKey(w http.ResponseWriter, r *http.Request, key string, retry bool) {
	now := time.Now().UnixNano()
	c.mu.Lock()
	if e, ok := c.idx.Get(key); ok {
		age := now - e.validated
		ttl := int64(c.opts.TTL)
		switch {
		case age < ttl:
			c.serveEntryLocked(w, r, e, xHit, c.m.hit)
			return
		case now < e.failedUntil:
			// The origin failed moments ago: don't make this request wait
			// for it too.
			c.serveEntryLocked(w, r, e, xStaleErr, c.m.staleErr)
			return
		case age < ttl+int64(c.opts.StaleWhileRevalidate):
			if c.fills[key] == nil && !c.closed {
				c.newFillLocked(key, e, true)
			}
			c.serveEntryLocked(w, r, e, xStale, c.m.stale)
			return
		}
		f := c.fills[key]
		if f == nil && !c.closed {
			f = c.newFillLocked(key, e, true)
		}
		c.mu.Unlock()
		if f == nil {
			c.serveEntry(w, r, e, xStaleErr, c.m.staleErr)
			return
		}
		c.serveFill(w, r, f, e, retry)
		return
	}
	if f := c.fills[key]; f != nil {
		c.mu.Unlock()
		c.m.coalesced.Inc()
		c.serveFill(w, r, f, f.old, retry)
		return
	}
	if until, ok := c.negative.Get(key); ok {
		if now < until.UnixNano() {
			c.mu.Unlock()
			c.m.negative.Inc()
			c.notFound(w, xNegative)
			return
		}
		c.negative.Remove(key)
	}
	bypass := now < c.noDisk || c.closed
	if until, ok := c.tooBig.Get(key); ok {
		if now < until.UnixNano() {
			bypass = true
		} else {
			c.tooBig.Remove(key)
		}
	}
	if bypass {
		c.mu.Unlock()
		c.passThrough(w, r, key)
		return
	}
	f := c.newFillLocked(key, nil, noPeerFill(r.Context()))
	c.mu.Unlock()
	c.serveFill(w, r, f, nil, retry)
}

// serveEntryLocked serves a cached entry; called with c.mu held, returns
// with it released (the lock covers only the handle bookkeeping).
func (c *Cache) serveEntryLocked(w http.ResponseWriter, r *http.Request, e *entry, xcache []string, counter interface{ Inc() }) {
	if m := e.mem; m != nil {
		c.mem.Get(e) // recency
		c.mu.Unlock()
		counter.Inc()
		c.m.memHits.Inc()
		c.serveObject(w, r, &e.hdr, m, "", xcache)
		return
	}
	h := e.h
	if h != nil {
		c.open.Get(e) // recency among open files
		h.acquire()
		c.mu.Unlock()
	} else {
		c.mu.Unlock()
		var err error
		if h, err = c.openEntry(e); err != nil {
			c.lostEntry(w, r, e, err)
			return
		}
	}
	defer h.release()
	counter.Inc()
	if c.opts.MemoryBytes > 0 && e.size <= c.opts.MemoryMaxObjectBytes && r.Method != http.MethodHead {
		// Small, and asked for: read it once into the memory tier.
		b := make([]byte, e.size)
		if _, err := h.f.ReadAt(b, 0); err == nil || (errors.Is(err, io.EOF) && e.size == 0) {
			m := &memObject{b: b}
			m.head, m.h2block = c.fastHead(&e.hdr)
			c.mu.Lock()
			c.addMemLocked(e, m)
			c.mu.Unlock()
			c.m.memHits.Inc()
			c.serveObject(w, r, &e.hdr, m, "", xcache)
			return
		}
	}
	c.serveObject(w, r, &e.hdr, h.f, e.dataPath, xcache)
}

// serveEntry is serveEntryLocked without the lock held.
func (c *Cache) serveEntry(w http.ResponseWriter, r *http.Request, e *entry, xcache []string, counter interface{ Inc() }) {
	c.mu.Lock()
	c.serveEntryLocked(w, r, e, xcache, counter)
}

// openEntry opens an entry's file and, while the entry is still indexed,
// keeps it open for the next hits. The caller releases the handle.
func (c *Cache) openEntry(e *entry) (*handle, error) {
	f, err := os.Open(e.dataPath)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case e.h != nil: // another request opened it meanwhile
		f.Close()
	case !e.removed && !c.closed:
		e.h = newHandle(f)
		c.open.Add(e, struct{}{})
	default:
		return newHandle(f), nil // private: evicted meanwhile
	}
	e.h.acquire()
	return e.h, nil
}

// lostEntry handles an entry whose file cannot be opened (removed behind
// the cache's back): drop it and serve the request as a miss.
func (c *Cache) lostEntry(w http.ResponseWriter, r *http.Request, e *entry, err error) {
	c.mu.Lock()
	if cur, ok := c.idx.Peek(e.key); ok && cur == e {
		c.idx.Remove(e.key)
	}
	victims := c.takeVictimsLocked()
	c.updateGaugesLocked()
	c.mu.Unlock()
	c.deleteFiles(victims)
	if errors.Is(err, os.ErrNotExist) {
		c.log.Warn("cached file vanished; refetching", "key", e.key)
		c.serveKey(w, r, e.key, false)
		return
	}
	c.log.Error("opening cached file", "key", e.key, "err", err)
	c.passThrough(w, r, e.key)
}

// serveFill serves a request from a fill: streamed from the download as it
// arrives, or per the origin's answer.
func (c *Cache) serveFill(w http.ResponseWriter, r *http.Request, f *fill, old *entry, retry bool) {
	v, ok := f.waitHeaders(r.Context())
	if !ok {
		return // the client left
	}
	st, h := v.state, v.h
	if h != nil {
		defer h.release()
	}
	switch st {
	case fillNotModified:
		c.serveEntry(w, r, old, xRevalidated, c.m.revalidated)
		return
	case fillNotFound:
		c.m.miss.Inc()
		c.notFound(w, xMiss)
		return
	case fillBypass:
		c.passThrough(w, r, f.key)
		return
	}
	if h == nil {
		// Over before this request looked: failed before any byte, or
		// complete and indexed (or purged) meanwhile.
		if st == fillComplete {
			// This request's miss was filled before it looked: serve the
			// new entry, still labelled as the miss it was.
			c.mu.Lock()
			if e, ok := c.idx.Get(f.key); ok {
				c.serveEntryLocked(w, r, e, xMiss, c.m.miss)
				return
			}
			c.mu.Unlock()
			if retry {
				c.serveKey(w, r, f.key, false)
				return
			}
		}
		if old != nil {
			c.serveEntry(w, r, old, xStaleErr, c.m.staleErr)
			return
		}
		if v.diskErr {
			c.passThrough(w, r, f.key)
			return
		}
		c.originFailed(w, v.err)
		return
	}
	if old != nil {
		c.m.revalidated.Inc()
	} else {
		c.m.miss.Inc()
	}
	fr := &fillReader{c: c, f: f, h: h, ctx: r.Context()}
	defer fr.close()
	c.serveObject(w, r, &f.hdr, fr, "", xMiss)
}

func (c *Cache) notFound(w http.ResponseWriter, xcache []string) {
	h := w.Header()
	h["X-Cache"] = xcache
	h["Cache-Control"] = []string{"public, max-age=" + strconv.Itoa(int(c.opts.NegativeTTL/time.Second))}
	http.Error(w, "not found", http.StatusNotFound)
}

func (c *Cache) originFailed(w http.ResponseWriter, err error) {
	c.m.originErr.Inc()
	w.Header()["Cache-Control"] = []string{"no-store"}
	if errors.Is(err, errOriginTimeout) {
		http.Error(w, "origin timed out", http.StatusGatewayTimeout)
		return
	}
	http.Error(w, "origin unavailable", http.StatusBadGateway)
}

// serveObject answers with the object: validators, ranges, body. path, when
// set, is the file behind src (a hit), which allows sendfile.
func (c *Cache) serveObject(w http.ResponseWriter, r *http.Request, oh *objHeaders, src io.ReaderAt, path string, xcache []string) {
	h := w.Header()
	switch checkConditions(r, oh) {
	case condNotModified:
		c.m.notModified.Inc()
		h["ETag"] = oh.hETag
		h["Last-Modified"] = oh.hLastMod
		if oh.hCSP != nil {
			h["Content-Security-Policy"] = oh.hCSP
		}
		if c.hdrCacheControl != nil {
			h["Cache-Control"] = c.hdrCacheControl
		}
		h["X-Cache"] = xcache
		w.WriteHeader(http.StatusNotModified)
		return
	case condFailed:
		c.m.preconditionFailed.Inc()
		http.Error(w, "precondition failed", http.StatusPreconditionFailed)
		return
	}
	c.setObjectFields(h, oh, xcache)

	if rh := r.Header["Range"]; len(rh) > 0 && ifRangeAllows(r, oh) {
		ranges, ok, err := parseRanges(rh[0], oh.size, c.opts.MaxRanges)
		if err != nil {
			c.m.rangeUnsat.Inc()
			delete(h, "Content-Type")
			h["Content-Range"] = []string{"bytes */" + strconv.FormatInt(oh.size, 10)}
			http.Error(w, "range not satisfiable: "+err.Error(), http.StatusRequestedRangeNotSatisfiable)
			return
		}
		if ok && len(ranges) == 1 {
			rg := ranges[0]
			h["Content-Range"] = []string{contentRange(rg, oh.size)}
			h["Content-Length"] = []string{strconv.FormatInt(rg.length, 10)}
			w.WriteHeader(http.StatusPartialContent)
			if r.Method != http.MethodHead {
				c.copyBody(w, r, src, path, rg.start, rg.length)
			}
			return
		}
		if ok {
			c.serveMultipart(w, r, oh, src, ranges)
			return
		}
	}
	h["Content-Length"] = oh.hLen
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		c.copyBody(w, r, src, path, 0, oh.size)
	}
}

// setObjectFields sets the fields of an answer with the object (a 200 or a
// 206). The fast path's header block (fastHead) is made by this too, so the
// two cannot drift apart.
func (c *Cache) setObjectFields(h http.Header, oh *objHeaders, xcache []string) {
	h["Content-Type"] = oh.hCtype
	h["ETag"] = oh.hETag
	h["Last-Modified"] = oh.hLastMod
	h["Accept-Ranges"] = hBytes
	h["X-Content-Type-Options"] = hNosniff
	if oh.hCSP != nil {
		h["Content-Security-Policy"] = oh.hCSP
	}
	if c.hdrCacheControl != nil {
		h["Cache-Control"] = c.hdrCacheControl
	}
	h["X-Cache"] = xcache
}

func contentRange(rg httpRange, size int64) string {
	return "bytes " + strconv.FormatInt(rg.start, 10) + "-" + strconv.FormatInt(rg.start+rg.length-1, 10) +
		"/" + strconv.FormatInt(size, 10)
}

// serveMultipart writes a multipart/byteranges body (RFC 9110 §14.6) with
// an exact Content-Length.
func (c *Cache) serveMultipart(w http.ResponseWriter, r *http.Request, oh *objHeaders, src io.ReaderAt, ranges []httpRange) {
	var rnd [12]byte
	_, _ = rand.Read(rnd[:])
	boundary := hex.EncodeToString(rnd[:])
	heads := make([]string, len(ranges))
	total := int64(0)
	for i, rg := range ranges {
		var b strings.Builder
		if i > 0 {
			b.WriteString("\r\n")
		}
		b.WriteString("--" + boundary + "\r\nContent-Type: " + oh.ctype + "\r\nContent-Range: " +
			contentRange(rg, oh.size) + "\r\n\r\n")
		heads[i] = b.String()
		total += int64(len(heads[i])) + rg.length
	}
	tail := "\r\n--" + boundary + "--\r\n"
	total += int64(len(tail))
	h := w.Header()
	h["Content-Type"] = []string{"multipart/byteranges; boundary=" + boundary}
	h["Content-Length"] = []string{strconv.FormatInt(total, 10)}
	w.WriteHeader(http.StatusPartialContent)
	if r.Method == http.MethodHead {
		return
	}
	for i, rg := range ranges {
		if _, err := io.WriteString(w, heads[i]); err != nil {
			return
		}
		c.copyBody(w, r, src, "", rg.start, rg.length)
	}
	_, _ = io.WriteString(w, tail)
}

// copyBody writes n bytes of src from off. Plain HTTP/1 responses of large
// hits go through sendfile (a private descriptor, since sendfile uses the
// file offset); the rest is pread into a pooled buffer. When the source
// fails (a download that broke off), the response is aborted so that the
// client sees a truncated transfer, never a complete-looking one.
func (c *Cache) copyBody(w http.ResponseWriter, r *http.Request, src io.ReaderAt, path string, off, n int64) {
	if m, ok := src.(*memObject); ok {
		// One write of the bytes themselves: no read, no buffer.
		_, _ = w.Write(m.b[off : off+n])
		return
	}
	if path != "" && n >= sendfileMin && r.TLS == nil && r.ProtoMajor == 1 {
		if rf := innerReaderFrom(w); rf != nil {
			if f, err := os.Open(path); err == nil {
				defer f.Close()
				if _, err := f.Seek(off, io.SeekStart); err == nil {
					_, _ = rf.ReadFrom(io.LimitReader(f, n))
					return
				}
			}
		}
	}
	if r.ProtoMajor == 2 {
		// The transport's HTTP/2 server (internal/h2) reads into its own
		// buffers, sized so that each read is one DATA frame that fills
		// one TLS record; net/http's HTTP/2 writer has no ReadFrom.
		if rf := innerReaderFrom(w); rf != nil {
			sr := &sourceReader{r: io.NewSectionReader(src, off, n)}
			if _, err := rf.ReadFrom(sr); err != nil && sr.err != nil {
				if r.Context().Err() == nil {
					c.log.Warn("aborting a response: source failed", "err", sr.err)
				}
				panic(http.ErrAbortHandler)
			}
			return
		}
	}
	pool := &c.bufs
	if r.ProtoMajor >= 2 {
		pool = &c.smallBufs
	}
	bp := pool.Get().(*[]byte)
	defer pool.Put(bp)
	buf := *bp
	for n > 0 {
		m, err := src.ReadAt(buf[:min(int64(len(buf)), n)], off)
		if m > 0 {
			if _, werr := w.Write(buf[:m]); werr != nil {
				return // the client left
			}
			off += int64(m)
			n -= int64(m)
		}
		if err != nil && n > 0 && !(err == io.EOF && m > 0) {
			if r.Context().Err() == nil {
				c.log.Warn("aborting a response: source failed", "err", err)
			}
			panic(http.ErrAbortHandler)
		}
	}
}

// sourceReader remembers the error of the source (as opposed to the
// client's) when a ReadFrom copies it.
type sourceReader struct {
	r   io.Reader
	err error
}

func (s *sourceReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if err != nil && err != io.EOF {
		s.err = err
	}
	return n, err
}

// innerReaderFrom finds the response writer that can read a body itself
// (an io.ReaderFrom: net/http's HTTP/1.1 one uses sendfile, internal/h2's
// sizes its reads to its frames) below wrappers that expose Unwrap, as the
// transport's status recorder does. Such wrappers must not transform the
// body; headers and status are still written through the outer writer.
func innerReaderFrom(w http.ResponseWriter) io.ReaderFrom {
	for range 8 {
		if rf, ok := w.(io.ReaderFrom); ok {
			return rf
		}
		u, ok := w.(interface{ Unwrap() http.ResponseWriter })
		if !ok {
			return nil
		}
		w = u.Unwrap()
	}
	return nil
}

// fillReader reads a download for one request. When the download failed
// because of the local disk, it continues from the origin on its own
// (a ranged GET pinned to the same ETag), so a full disk never breaks a
// response.
type fillReader struct {
	c   *Cache
	f   *fill
	h   *handle
	ctx context.Context

	resume    io.ReadCloser // origin body from resumePos on
	resumePos int64
	cancel    context.CancelFunc
	stall     *stallTimer
}

func (fr *fillReader) ReadAt(p []byte, off int64) (int, error) {
	if fr.resume == nil {
		n, err := fr.f.readAt(fr.ctx, fr.h, p, off)
		var ff *errFillFailed
		if !errors.As(err, &ff) || !ff.diskErr {
			return n, err
		}
		if err := fr.startResume(off); err != nil {
			return 0, err
		}
	}
	if off != fr.resumePos {
		fr.closeResume()
		if err := fr.startResume(off); err != nil {
			return 0, err
		}
	}
	n, err := fr.resume.Read(p)
	fr.stall.poke()
	fr.resumePos += int64(n)
	return n, err
}

func (fr *fillReader) startResume(off int64) error {
	ctx, cancel := context.WithCancel(fr.ctx)
	stall := newStallTimer(fr.c.opts.OriginTimeout, cancel)
	obj, err := fr.c.opts.Origin.Fetch(ctx, OriginRequest{Key: fr.f.key, Offset: off, IfMatch: fr.f.hdr.etag})
	if err != nil {
		stall.stop()
		cancel()
		return err
	}
	if obj.Offset != off {
		obj.Body.Close()
		stall.stop()
		cancel()
		return errors.New("origin ignored the range of a resumed transfer")
	}
	fr.c.m.bypass.Inc()
	fr.resume, fr.resumePos, fr.cancel, fr.stall = obj.Body, off, cancel, stall
	return nil
}

func (fr *fillReader) closeResume() {
	if fr.resume != nil {
		fr.resume.Close()
		fr.stall.stop()
		fr.cancel()
		fr.resume = nil
	}
}

func (fr *fillReader) close() { fr.closeResume() }
