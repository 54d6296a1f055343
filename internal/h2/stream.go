package h2

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/textproto"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// stream is one request and its response. Its fields are under conn.mu.
type stream struct {
	id     uint32
	cond   *sync.Cond // its handler's waits: body data, send window, reset
	cancel context.CancelFunc

	remoteEnded bool  // the client ended its side (or reset)
	localEnded  bool  // the response is complete
	closed      bool  // removed from conn.streams
	resetErr    error // why writes and reads fail: reset, connection gone

	handlerRunning bool

	sendWin int64

	recvWin    int64
	unacked    int64 // body bytes read by the handler, not yet returned
	buf        []byte
	bodyClosed bool  // the handler closed the body (or finished)
	declared   int64 // Content-Length, or -1
	received   int64
	trailer    http.Header // declared trailer fields, filled at the end

	readDeadline, writeDeadline time.Time
	timers                      [2]*time.Timer // by readDL, writeDL
}

// The indexes of stream.timers.
const (
	readDL = iota
	writeDL
)

func (c *conn) newStream(id uint32) *stream {
	st := &stream{id: id, cond: sync.NewCond(&c.mu), sendWin: c.peerInitWin,
		recvWin: int64(c.s.opts.StreamWindow), declared: -1}
	c.streams[id] = st
	c.active++
	return st
}

func (c *conn) onHeaders(f *http2.MetaHeadersFrame) (http2.ErrCode, error) {
	id := f.StreamID
	if id%2 == 0 {
		return http2.ErrCodeProtocol, errors.New("HEADERS on an even stream")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if st := c.streams[id]; st != nil {
		return c.onTrailers(st, f)
	}
	if id <= c.lastStream {
		return http2.ErrCodeStreamClosed, errors.New("HEADERS on a closed stream")
	}
	c.lastStream = id
	if c.goingAway {
		return http2.ErrCodeNo, nil // past the GOAWAY: ignored (RFC 9113 §6.8)
	}
	if f.HasPriority() && f.Priority.StreamDep == id {
		c.resetStream(id, http2.ErrCodeProtocol)
		return http2.ErrCodeNo, nil
	}
	if uint32(c.active) >= c.s.opts.MaxConcurrentStreams {
		c.refused++
		if c.refused > 2*int(c.s.opts.MaxConcurrentStreams) {
			return http2.ErrCodeEnhanceYourCalm, errors.New("too many streams refused")
		}
		c.resetStream(id, http2.ErrCodeRefusedStream)
		return http2.ErrCodeNo, nil
	}
	if f.Truncated {
		st := c.newStream(id)
		c.answerStatus(st, http.StatusRequestHeaderFieldsTooLarge, f.StreamEnded())
		return http2.ErrCodeNo, nil
	}
	rq, ok := parseRequest(f)
	if !ok {
		c.resetStream(id, http2.ErrCodeProtocol)
		return http2.ErrCodeNo, nil
	}
	if c.s.opts.Fast != nil && f.StreamEnded() && (rq.method == http.MethodGet || rq.method == http.MethodHead) {
		if c.answerFast(id, &rq, f.RegularFields()) {
			return http2.ErrCodeNo, nil
		}
	}
	st := c.newStream(id)
	req, err := c.newRequest(st, &rq, f)
	if err != nil {
		c.answerStatus(st, http.StatusBadRequest, f.StreamEnded())
		return http2.ErrCodeNo, nil
	}
	if f.StreamEnded() {
		st.remoteEnded = true
	}
	st.handlerRunning = true
	c.handlers.Add(1)
	go c.runHandler(st, req)
	return http2.ErrCodeNo, nil
}

// onTrailers handles a HEADERS frame on an open stream: the request's
// trailer fields, which must end it.
func (c *conn) onTrailers(st *stream, f *http2.MetaHeadersFrame) (http2.ErrCode, error) {
	if st.remoteEnded {
		c.resetStream(st.id, http2.ErrCodeStreamClosed)
		return http2.ErrCodeNo, nil
	}
	if !f.StreamEnded() || len(f.PseudoFields()) > 0 || f.Truncated {
		c.resetStream(st.id, http2.ErrCodeProtocol)
		return http2.ErrCodeNo, nil
	}
	if st.declared >= 0 && st.received != st.declared {
		c.resetStream(st.id, http2.ErrCodeProtocol)
		return http2.ErrCodeNo, nil
	}
	for _, hf := range f.RegularFields() {
		k := canonicalKey(hf.Name)
		if _, ok := st.trailer[k]; ok {
			st.trailer[k] = append(st.trailer[k], hf.Value)
		}
	}
	c.remoteEnd(st)
	st.cond.Broadcast()
	return http2.ErrCodeNo, nil
}

// answerStatus answers st with an empty response of code, and resets the
// client's side if it has not ended.
func (c *conn) answerStatus(st *stream, code int, remoteEnded bool) {
	c.writeHeaders(st.id, code, []hpack.HeaderField{{Name: "content-length", Value: "0"}}, true)
	st.localEnded = true
	if !remoteEnded {
		c.resetStream(st.id, http2.ErrCodeNo)
		return
	}
	c.closeStream(st)
}

// request is a request's pseudo-header fields.
type request struct {
	method, scheme, authority, path string
}

// parseRequest checks the pseudo-header fields and the fields HTTP/2
// forbids (RFC 9113 §8.2.2, §8.3.1). Anything wrong is a stream error of
// type PROTOCOL_ERROR.
func parseRequest(f *http2.MetaHeadersFrame) (request, bool) {
	var r request
	for _, hf := range f.PseudoFields() {
		switch hf.Name {
		case ":method":
			r.method = hf.Value
		case ":scheme":
			r.scheme = hf.Value
		case ":authority":
			r.authority = hf.Value
		case ":path":
			r.path = hf.Value
		default:
			// :protocol (extended CONNECT) was never offered; :status is a
			// response's.
			return r, false
		}
	}
	if r.method == "" {
		return r, false
	}
	if r.method == http.MethodConnect {
		if r.scheme != "" || r.path != "" || r.authority == "" {
			return r, false
		}
	} else if r.scheme == "" || r.path == "" || (r.path[0] != '/' && !(r.path == "*" && r.method == http.MethodOptions)) {
		return r, false
	}
	for _, hf := range f.RegularFields() {
		switch hf.Name {
		case "connection", "proxy-connection", "keep-alive", "transfer-encoding", "upgrade":
			return r, false
		case "te":
			if hf.Value != "trailers" {
				return r, false
			}
		}
	}
	return r, true
}

// newRequest builds the http.Request a handler sees.
func (c *conn) newRequest(st *stream, rq *request, f *http2.MetaHeadersFrame) (*http.Request, error) {
	regular := f.RegularFields()
	h := make(http.Header, len(regular))
	var cookies []string
	for _, hf := range regular {
		if hf.Name == "cookie" {
			// Cookie crumbs are joined back into one field (RFC 9113 §8.2.3).
			cookies = append(cookies, hf.Value)
			continue
		}
		k := canonicalKey(hf.Name)
		h[k] = append(h[k], hf.Value)
	}
	if len(cookies) > 0 {
		h["Cookie"] = []string{strings.Join(cookies, "; ")}
	}
	host := rq.authority
	if host == "" {
		host = h.Get("Host")
	}
	var u *url.URL
	var err error
	if rq.method == http.MethodConnect {
		u = &url.URL{Host: rq.authority}
	} else if u, err = url.ParseRequestURI(rq.path); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(c.ctx)
	st.cancel = cancel
	req := &http.Request{
		Method:     rq.method,
		URL:        u,
		Proto:      "HTTP/2.0",
		ProtoMajor: 2,
		Header:     h,
		Host:       host,
		RemoteAddr: c.remote,
		RequestURI: rq.path,
		TLS:        c.tls,
		Body:       http.NoBody,
	}
	if !f.StreamEnded() {
		if cl := h.Get("Content-Length"); cl != "" {
			n, err := strconv.ParseInt(cl, 10, 64)
			if err != nil || n < 0 {
				return nil, errors.New("bad content-length")
			}
			st.declared = n
		}
		req.ContentLength = st.declared
		req.Body = &body{c: c, st: st}
		if names := trailerNames(h["Trailer"]); len(names) > 0 {
			st.trailer = http.Header{}
			for _, k := range names {
				st.trailer[k] = nil
			}
			req.Trailer = st.trailer
		}
	} else if cl := h.Get("Content-Length"); cl != "" && cl != "0" {
		return nil, errors.New("content-length on a request without a body")
	}
	return req.WithContext(ctx), nil
}

// answerFast offers a bodiless GET or HEAD to Options.Fast and sends its
// answer. It reports whether it answered.
func (c *conn) answerFast(id uint32, rq *request, regular []hpack.HeaderField) bool {
	fr := FastRequest{Method: rq.method, Authority: rq.authority, Path: rq.path, Fields: regular}
	a := &c.fast
	a.Block, a.Fields, a.Body = a.Block[:0], a.Fields[:0], nil
	if !c.s.opts.Fast(&fr, a) {
		return false
	}
	body := a.Body
	a.Body = nil
	if rq.method == http.MethodHead || len(body) == 0 {
		c.writeHeadersBlock(id, http.StatusOK, a.Fields, a.Block, true)
		c.refused = 0
		return true
	}
	c.writeHeadersBlock(id, http.StatusOK, a.Fields, a.Block, false)
	c.refused = 0
	if n := int64(len(body)); n <= c.peerInitWin && n <= c.sendWin {
		c.writeData(id, body, true)
		c.sendWin -= n
		return true
	}
	// The client's window is smaller than the body: the rest goes as a
	// handler's body does, from a goroutine that waits in sendData for the
	// client's WINDOW_UPDATEs (rare: browsers open megabytes).
	st := c.newStream(id)
	st.remoteEnded = true
	st.handlerRunning = true
	c.handlers.Add(1)
	go func() {
		defer c.handlers.Done()
		err := c.sendData(st, body, true)
		c.handlerDone(st, err == nil)
	}()
	return true
}

// trailerNames is the field names a Trailer header declares, canonical.
func trailerNames(vs []string) []string {
	var names []string
	for _, v := range vs {
		for name := range strings.SplitSeq(v, ",") {
			if name = textproto.TrimString(name); name != "" {
				names = append(names, http.CanonicalHeaderKey(name))
			}
		}
	}
	return names
}

// body is a request body: the DATA the reader buffered for its stream.
type body struct {
	c  *conn
	st *stream
}

func (b *body) Read(p []byte) (int, error) {
	c, st := b.c, b.st
	c.mu.Lock()
	defer c.mu.Unlock()
	for len(st.buf) == 0 {
		switch {
		case st.bodyClosed && !st.closed:
			return 0, errors.New("h2: read on closed body")
		case st.remoteEnded && st.resetErr == nil:
			return 0, io.EOF
		case st.resetErr != nil:
			return 0, st.resetErr
		case c.closed:
			return 0, errConnClosed
		case !st.readDeadline.IsZero() && !time.Now().Before(st.readDeadline):
			return 0, os.ErrDeadlineExceeded
		}
		st.cond.Wait()
	}
	n := copy(p, st.buf)
	st.buf = st.buf[n:]
	if len(st.buf) == 0 {
		st.buf = nil
	}
	// Give the read bytes back to both windows, in batches.
	st.unacked += int64(n)
	if st.unacked >= int64(c.s.opts.StreamWindow)/4 && !st.remoteEnded {
		c.writeWindowUpdate(st.id, uint32(st.unacked))
		st.recvWin += st.unacked
		st.unacked = 0
	}
	c.returnConnWindow(int64(n))
	c.flushLocked()
	return n, nil
}

func (b *body) Close() error {
	c, st := b.c, b.st
	c.mu.Lock()
	defer c.mu.Unlock()
	if !st.bodyClosed {
		st.bodyClosed = true
		if len(st.buf) > 0 {
			c.returnConnWindow(int64(len(st.buf)))
			st.buf = nil
		}
	}
	return nil
}

// canonicalKey is http.CanonicalHeaderKey without an allocation for the
// common fields.
func canonicalKey(lower string) string {
	if k, ok := commonCanonical[lower]; ok {
		return k
	}
	return http.CanonicalHeaderKey(lower)
}

// lowerKey is a header name as HTTP/2 sends it.
func lowerKey(canonical string) string {
	if k, ok := commonLower[canonical]; ok {
		return k
	}
	return strings.ToLower(canonical)
}

// commonCanonical and commonLower map the common header names between
// their two spellings; read-only after init.
var commonCanonical, commonLower = func() (map[string]string, map[string]string) {
	names := []string{"Accept", "Accept-Encoding", "Accept-Language", "Accept-Ranges", "Access-Control-Allow-Origin",
		"Age", "Alt-Svc", "Authorization", "Cache-Control", "Content-Disposition", "Content-Encoding",
		"Content-Language", "Content-Length", "Content-Range", "Content-Type", "Cookie", "Date", "Etag", "Expires",
		"Host", "If-Match", "If-Modified-Since", "If-None-Match", "If-Range", "If-Unmodified-Since", "Last-Modified",
		"Link", "Location", "Origin", "Pragma", "Range", "Referer", "Retry-After", "Server", "Set-Cookie",
		"Strict-Transport-Security", "Te", "Trailer", "User-Agent", "Vary", "Via", "X-Cache", "X-Content-Type-Options",
		"X-Forwarded-For", "X-Forwarded-Proto", "X-Request-Id", "Sec-Fetch-Dest", "Sec-Fetch-Mode", "Sec-Fetch-Site",
		"Priority", "Upgrade-Insecure-Requests", "Dnt"}
	canon, lower := make(map[string]string, len(names)), make(map[string]string, len(names)+1)
	for _, n := range names {
		l := strings.ToLower(n)
		canon[l] = n
		lower[n] = l
	}
	lower["ETag"] = "etag"
	return canon, lower
}()
