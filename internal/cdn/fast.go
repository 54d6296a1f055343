package cdn

import (
	"bytes"
	"maps"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/edgenode/edgenode/internal/h2"
	"golang.org/x/net/http2/hpack"
)

// AppendFast answers the transport's HTTP/1.1 fast path (transport.FastHandler):
// for a GET or HEAD of a fresh hit whose bytes are in the memory tier, it
// appends the response's header fields to dst, exactly those ServeHTTP
// sends for a 200 of the same request, and returns the body. The caller
// only asks for requests without Range, conditional or body headers, so
// the answer cannot depend on them. Anything else (a miss, a stale or
// revalidating entry, an object only on disk, a bad key) returns ok false
// and the request goes through ServeHTTP as usual. No allocation on a hit.
func (c *Cache) AppendFast(dst []byte, method, path string) (head, body []byte, ok bool) {
	m := c.fastHit(method, path)
	if m == nil {
		return dst, nil, false
	}
	return append(dst, m.head...), m.b, true
}

// AppendFastBlock is AppendFast for the transport's HTTP/2 server: the
// same answer, its header as an HPACK block that uses no table state
// (h2.AppendLiteral), made once per object.
func (c *Cache) AppendFastBlock(dst []byte, method, path string) (block, body []byte, ok bool) {
	m := c.fastHit(method, path)
	if m == nil {
		return dst, nil, false
	}
	return append(dst, m.h2block...), m.b, true
}

// fastHit is the memory-tier object of a fresh hit for a GET or HEAD of
// path, counted as a hit, or nil.
func (c *Cache) fastHit(method, path string) *memObject {
	if method != http.MethodGet && method != http.MethodHead {
		return nil
	}
	key, found := strings.CutPrefix(path, c.opts.Prefix)
	if !found || ValidateKey(key) != nil {
		return nil
	}
	now := time.Now().UnixNano()
	c.mu.Lock()
	e, ok := c.idx.Get(key)
	if !ok || e.mem == nil || now-e.validated >= int64(c.opts.TTL) {
		c.mu.Unlock()
		return nil
	}
	m := e.mem
	c.mem.Get(e) // recency
	c.mu.Unlock()
	c.m.hit.Inc()
	c.m.memHits.Inc()
	return m
}

// fastHead is the header of a 200 hit for oh: the fields serveObject
// sets, written as net/http writes a header (one "Name: value\r\n" per
// value) for AppendFast, and as an HPACK block of the same fields in the
// same order for AppendFastBlock. Built once per object in the memory tier.
func (c *Cache) fastHead(oh *objHeaders) (head, h2block []byte) {
	h := http.Header{}
	c.setObjectFields(h, oh, xHit)
	h["Content-Length"] = oh.hLen
	var b bytes.Buffer
	_ = h.Write(&b) // a bytes.Buffer does not fail
	keys := slices.Sorted(maps.Keys(h))
	for _, k := range keys {
		for _, v := range h[k] {
			h2block = h2.AppendLiteral(h2block, hpack.HeaderField{Name: strings.ToLower(k), Value: v})
		}
	}
	return b.Bytes(), h2block
}
