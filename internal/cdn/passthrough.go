package cdn

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// passThrough serves a request straight from the origin without caching:
// objects over MaxObjectBytes, and misses while the disk is full. A single
// "a-b" or "a-" range is forwarded to the origin as a range; other Range
// forms are ignored (a full 200, which RFC 9110 allows).
func (c *Cache) passThrough(w http.ResponseWriter, r *http.Request, key string) {
	c.m.bypass.Inc()
	req := OriginRequest{Key: key}
	var ranged bool
	if rh := r.Header["Range"]; len(rh) > 0 && len(r.Header["If-Range"]) == 0 {
		if off, length, ok := simpleRange(rh[0]); ok {
			req.Offset, req.Length, ranged = off, length, true
		}
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	stall := newStallTimer(c.opts.OriginTimeout, cancel)
	defer stall.stop()
	start := time.Now()
	obj, err := c.opts.Origin.Fetch(ctx, req)
	c.m.originDuration.Observe(time.Since(start).Seconds())
	if err != nil {
		switch {
		case errors.Is(err, ErrNotFound):
			c.m.originNotFound.Inc()
			c.mu.Lock()
			if c.opts.NegativeTTL > 0 {
				c.negative.Add(key, time.Now().Add(c.opts.NegativeTTL))
			}
			c.mu.Unlock()
			c.notFound(w, xBypass)
		case errors.Is(err, ErrRange):
			c.m.rangeUnsat.Inc()
			http.Error(w, "range not satisfiable", http.StatusRequestedRangeNotSatisfiable)
		default:
			if stall.fired() {
				c.m.originTimeout.Inc()
				err = errOriginTimeout
			} else {
				c.m.originError.Inc()
			}
			if r.Context().Err() == nil {
				c.log.Warn("pass-through fetch failed", "key", key, "err", err)
			}
			c.originFailed(w, err)
		}
		return
	}
	defer obj.Body.Close()
	c.m.originOK.Inc()

	size := obj.Size
	oh := newObjHeaders(max(size, 0), obj.ETag, obj.LastModified, obj.ContentType)
	switch checkConditions(r, &oh) {
	case condNotModified:
		c.m.notModified.Inc()
		h := w.Header()
		h["ETag"], h["Last-Modified"], h["X-Cache"] = oh.hETag, oh.hLastMod, xBypass
		if oh.hCSP != nil {
			h["Content-Security-Policy"] = oh.hCSP
		}
		w.WriteHeader(http.StatusNotModified)
		return
	case condFailed:
		c.m.preconditionFailed.Inc()
		http.Error(w, "precondition failed", http.StatusPreconditionFailed)
		return
	}
	h := w.Header()
	h["Content-Type"], h["ETag"], h["Last-Modified"] = oh.hCtype, oh.hETag, oh.hLastMod
	h["Accept-Ranges"], h["X-Content-Type-Options"], h["X-Cache"] = hBytes, hNosniff, xBypass
	if oh.hCSP != nil {
		h["Content-Security-Policy"] = oh.hCSP
	}
	if c.hdrCacheControl != nil {
		h["Cache-Control"] = c.hdrCacheControl
	}
	body := io.Reader(obj.Body)
	status := http.StatusOK
	n := size
	switch {
	case ranged && size >= 0 && obj.Offset == req.Offset:
		end := size - 1
		if req.Length > 0 {
			end = min(end, req.Offset+req.Length-1)
		}
		n = end - req.Offset + 1
		status = http.StatusPartialContent
		h["Content-Range"] = []string{contentRange(httpRange{req.Offset, n}, size)}
	case obj.Offset != 0:
		// A range the client did not ask for: should not happen.
		c.originFailed(w, errors.New("origin answered with an unexpected range"))
		return
	}
	if n >= 0 {
		h["Content-Length"] = []string{strconv.FormatInt(n, 10)}
		body = io.LimitReader(body, n)
	}
	w.WriteHeader(status)
	if r.Method == http.MethodHead {
		return
	}
	bp := c.bufs.Get().(*[]byte)
	defer c.bufs.Put(bp)
	buf := *bp
	var sent int64
	for {
		m, rerr := body.Read(buf)
		if m > 0 {
			stall.poke()
			if _, werr := w.Write(buf[:m]); werr != nil {
				return
			}
			sent += int64(m)
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			if r.Context().Err() == nil {
				c.log.Warn("pass-through aborted: origin failed mid-body", "key", key, "err", rerr)
			}
			panic(http.ErrAbortHandler)
		}
	}
	if n >= 0 && sent != n {
		c.log.Warn("pass-through aborted: origin body too short", "key", key, "sent", sent, "want", n)
		panic(http.ErrAbortHandler)
	}
}

// simpleRange reads a single "bytes=a-b" or "bytes=a-" range, the forms
// that can be forwarded without knowing the object's size.
func simpleRange(s string) (off, length int64, ok bool) {
	spec, found := strings.CutPrefix(s, "bytes=")
	if !found || strings.Contains(spec, ",") {
		return 0, 0, false
	}
	a, b, found := strings.Cut(strings.TrimSpace(spec), "-")
	if !found || a == "" {
		return 0, 0, false
	}
	off, ok = parseDigits(a)
	if !ok {
		return 0, 0, false
	}
	if b == "" {
		return off, 0, true
	}
	end, ok := parseDigits(b)
	if !ok || end < off {
		return 0, 0, false
	}
	return off, end - off + 1, true
}
