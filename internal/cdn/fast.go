package cdn

import (
	"bytes"
	"net/http"
	"strings"
	"time"
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
	if method != http.MethodGet && method != http.MethodHead {
		return dst, nil, false
	}
	key, found := strings.CutPrefix(path, c.opts.Prefix)
	if !found || ValidateKey(key) != nil {
		return dst, nil, false
	}
	now := time.Now().UnixNano()
	c.mu.Lock()
	e, ok := c.idx.Get(key)
	if !ok || e.mem == nil || now-e.validated >= int64(c.opts.TTL) {
		c.mu.Unlock()
		return dst, nil, false
	}
	m := e.mem
	c.mem.Get(e) // recency
	c.mu.Unlock()
	c.m.hit.Inc()
	c.m.memHits.Inc()
	return append(dst, m.head...), m.b, true
}

// fastHead is the header block of a 200 hit for oh, for AppendFast: the
// fields serveObject sets, written as net/http writes a header (one
// "Name: value\r\n" per value). Built once per object in the memory tier.
func (c *Cache) fastHead(oh *objHeaders) []byte {
	h := http.Header{}
	c.setObjectFields(h, oh, xHit)
	h["Content-Length"] = oh.hLen
	var b bytes.Buffer
	_ = h.Write(&b) // a bytes.Buffer does not fail
	return b.Bytes()
}
