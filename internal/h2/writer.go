package h2

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// bufSize is how much of a response the writer holds before it sends the
// header: a response that fits goes out in one piece with a Content-Length.
const bufSize = 8 << 10

// sniffLen is how much of a body http.DetectContentType looks at.
const sniffLen = 512

// runHandler runs the Handler for st on its own goroutine.
func (c *conn) runHandler(st *stream, req *http.Request) {
	defer c.handlers.Done()
	w := &responseWriter{c: c, st: st, req: req, hdr: http.Header{}}
	completed := false
	defer func() {
		if !completed {
			if e := recover(); e != nil && e != http.ErrAbortHandler {
				buf := make([]byte, 64<<10)
				buf = buf[:runtime.Stack(buf, false)]
				c.s.log.Error("http2 handler panic", "remote", c.remote, "path", req.URL.Path, "panic", fmt.Sprint(e), "stack", string(buf))
			}
		}
		c.handlerDone(st, completed)
	}()
	c.s.opts.Handler.ServeHTTP(w, req)
	w.finish()
	completed = true
}

// handlerDone ends st after its handler returned: an aborted response is
// reset, a request body the handler did not read to its end is refused
// with RST_STREAM NO_ERROR (RFC 9113 §8.1).
func (c *conn) handlerDone(st *stream, completed bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	st.handlerRunning = false
	for i, t := range st.timers {
		if t != nil {
			t.Stop()
			st.timers[i] = nil
		}
	}
	switch {
	case st.closed:
		c.streamGone()
	case !completed || !st.localEnded:
		c.resetStream(st.id, http2.ErrCodeInternal)
	case !st.remoteEnded:
		c.resetStream(st.id, http2.ErrCodeNo)
	default:
		c.closeStream(st)
	}
	c.refused = 0
	if st.cancel != nil {
		st.cancel()
	}
	c.flushLocked()
}

// responseWriter is the http.ResponseWriter of a handler. It is used by
// the handler's goroutine only; what it shares with the connection is
// under conn.mu.
type responseWriter struct {
	c   *conn
	st  *stream
	req *http.Request
	hdr http.Header
	// snap is hdr as it was at WriteHeader: what the response's HEADERS
	// carry. As with net/http, later changes only reach the trailers.
	snap http.Header

	code        int
	wroteHeader bool // WriteHeader called (or implied)
	sentHeader  bool // the HEADERS frame is out
	buf         []byte
	written     int64
	declared    int64 // the handler's Content-Length, or -1
	closeConn   bool  // the handler asked for Connection: close
	trailers    []string
	headSniff   []byte // a HEAD response's first bytes, for Content-Type
}

func (w *responseWriter) Header() http.Header { return w.hdr }

func (w *responseWriter) WriteHeader(code int) {
	if code < 100 || code > 999 {
		panic(fmt.Sprintf("invalid WriteHeader code %v", code))
	}
	if w.wroteHeader {
		return
	}
	if code <= 199 && code != http.StatusSwitchingProtocols {
		// An informational response (103 Early Hints): sent now, with the
		// fields set so far.
		c := w.c
		c.mu.Lock()
		if c.sendErr(w.st) == nil {
			c.writeHeaders(w.st.id, code, w.fields(nil, false), false)
			c.flushLocked()
		}
		c.mu.Unlock()
		return
	}
	w.wroteHeader = true
	w.code = code
	w.declared = -1
	if cl := w.hdr.Get("Content-Length"); cl != "" {
		if n, err := strconv.ParseInt(cl, 10, 64); err == nil && n >= 0 {
			w.declared = n
		} else {
			w.hdr.Del("Content-Length")
		}
	}
	w.snap = w.hdr.Clone()
	w.trailers = trailerNames(w.hdr["Trailer"])
	w.closeConn = strings.EqualFold(w.hdr.Get("Connection"), "close")
}

func (w *responseWriter) bodyAllowed() bool {
	return (w.code < 100 || w.code > 199) && w.code != http.StatusNoContent && w.code != http.StatusNotModified
}

func (w *responseWriter) Write(p []byte) (int, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if !w.bodyAllowed() {
		return 0, http.ErrBodyNotAllowed
	}
	if w.declared >= 0 && w.written+int64(len(p)) > w.declared {
		return 0, http.ErrContentLength
	}
	w.written += int64(len(p))
	if w.req.Method == http.MethodHead {
		if n := min(len(p), sniffLen-len(w.headSniff)); n > 0 {
			w.headSniff = append(w.headSniff, p[:n]...)
		}
		return len(p), nil
	}
	if !w.sentHeader && len(w.buf)+len(p) <= bufSize {
		if w.buf == nil {
			w.buf = make([]byte, 0, bufSize)
		}
		w.buf = append(w.buf, p...)
		return len(p), nil
	}
	if err := w.send(false, p); err != nil {
		return 0, err
	}
	if err := w.c.sendData(w.st, p, false); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (w *responseWriter) WriteString(s string) (int, error) { return w.Write([]byte(s)) }

// ReadFrom copies r to the response through a buffer from the server's
// pool, a DATA frame's worth at a time: io.Copy (http.ServeContent's, the
// CDN's) would otherwise make a 32 KiB buffer for every response, and
// write frames that do not fill TLS records.
func (w *responseWriter) ReadFrom(r io.Reader) (int64, error) {
	bp := w.c.s.copyBuf()
	defer w.c.s.copyBufs.Put(bp)
	buf := *bp
	var n int64
	for {
		k, err := r.Read(buf)
		if k > 0 {
			if _, werr := w.Write(buf[:k]); werr != nil {
				return n, werr
			}
			n += int64(k)
		}
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

// Flush sends the header and whatever is held.
func (w *responseWriter) Flush() { _ = w.FlushError() }

// FlushError is Flush with its error (http.ResponseController uses it).
func (w *responseWriter) FlushError() error {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	return w.send(false, nil)
}

// send sends the header if it has not gone, then the held body; end ends
// the stream with them (the handler has returned). next is what the caller
// sends right after, for Content-Type when nothing is held.
func (w *responseWriter) send(end bool, next []byte) error {
	c, st := w.c, w.st
	body := w.buf
	w.buf = w.buf[:0]
	if w.sentHeader {
		if len(body) == 0 && !end {
			return nil
		}
		return c.sendData(st, body, end)
	}
	w.sentHeader = true
	c.mu.Lock()
	if err := c.sendErr(st); err != nil {
		c.mu.Unlock()
		return err
	}
	sniff := body
	switch {
	case w.req.Method == http.MethodHead:
		sniff = w.headSniff
	case len(sniff) == 0:
		sniff = next
	}
	headOnly := end && len(body) == 0 && len(w.trailers) == 0
	c.writeHeaders(st.id, w.code, w.fields(sniff, end), headOnly)
	if headOnly {
		st.localEnded = true
		if st.remoteEnded {
			c.closeStream(st)
		}
	}
	if w.closeConn {
		c.goAwayLocked(http2.ErrCodeNo)
	}
	if headOnly {
		c.flushLocked()
		c.mu.Unlock()
		return nil
	}
	c.mu.Unlock()
	return c.sendData(st, body, end)
}

// finish completes the response after the handler returned.
func (w *responseWriter) finish() {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	hasTrailers := len(w.trailers) > 0 || w.hasPrefixedTrailers()
	if !hasTrailers {
		_ = w.send(true, nil)
		return
	}
	if err := w.send(false, nil); err != nil {
		return
	}
	var fields []hpack.HeaderField
	for _, k := range w.trailers {
		for _, v := range w.hdr[k] {
			fields = appendField(fields, k, v)
		}
	}
	for k, vs := range w.hdr {
		if name, ok := strings.CutPrefix(k, http.TrailerPrefix); ok {
			for _, v := range vs {
				fields = appendField(fields, name, v)
			}
		}
	}
	c, st := w.c, w.st
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sendErr(st) != nil {
		return
	}
	c.writeTrailers(st.id, fields)
	st.localEnded = true
	if st.remoteEnded {
		c.closeStream(st)
	}
	c.flushLocked()
}

func (w *responseWriter) hasPrefixedTrailers() bool {
	for k := range w.hdr {
		if strings.HasPrefix(k, http.TrailerPrefix) {
			return true
		}
	}
	return false
}

// fields is the response's header fields: the handler's, less what
// HTTP/2 forbids, plus Content-Type (sniffed from body, as net/http does),
// Content-Length (when the whole body is known) and Date.
func (w *responseWriter) fields(sniff []byte, end bool) []hpack.HeaderField {
	h := w.snap
	if !w.wroteHeader {
		h = w.hdr // an informational response: the fields set so far
	}
	fields := make([]hpack.HeaderField, 0, len(h)+3)
	for k, vs := range h {
		switch k {
		case "Connection", "Proxy-Connection", "Keep-Alive", "Transfer-Encoding", "Upgrade":
			continue
		}
		if strings.HasPrefix(k, http.TrailerPrefix) {
			continue
		}
		for _, v := range vs {
			fields = appendField(fields, k, v)
		}
	}
	if !w.wroteHeader {
		return fields // an informational response
	}
	if _, ok := h["Content-Type"]; !ok && w.bodyAllowed() && len(sniff) > 0 {
		fields = append(fields, hpack.HeaderField{Name: "content-type", Value: http.DetectContentType(sniff)})
	}
	if end && w.declared < 0 && w.bodyAllowed() && len(w.trailers) == 0 &&
		(w.req.Method != http.MethodHead || w.written > 0) {
		fields = append(fields, hpack.HeaderField{Name: "content-length", Value: strconv.FormatInt(w.written, 10)})
	}
	if _, ok := h["Date"]; !ok {
		fields = append(fields, hpack.HeaderField{Name: "date", Value: w.c.s.opts.Date()})
	}
	return fields
}

// appendField adds one response field, dropping what is not a valid
// field (as net/http does) rather than break the connection's HPACK state.
func appendField(fields []hpack.HeaderField, k, v string) []hpack.HeaderField {
	if !httpguts.ValidHeaderFieldName(k) || !httpguts.ValidHeaderFieldValue(v) {
		return fields
	}
	name := lowerKey(k)
	return append(fields, hpack.HeaderField{Name: name, Value: v, Sensitive: name == "set-cookie"})
}

// sendData sends p on st as the windows allow, waiting for them (and for
// room in the output buffer); end ends the stream with the last frame.
func (c *conn) sendData(st *stream, p []byte, end bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for len(p) > 0 || end {
		if err := c.sendErr(st); err != nil {
			return err
		}
		if !st.writeDeadline.IsZero() && !time.Now().Before(st.writeDeadline) {
			c.resetStream(st.id, http2.ErrCodeCancel)
			return os.ErrDeadlineExceeded
		}
		if len(c.out) >= outHigh {
			if !c.writing {
				c.flushLocked()
				continue
			}
			c.cond.Wait()
			continue
		}
		n := min(int64(len(p)), st.sendWin, c.sendWin, int64(outHigh))
		if n <= 0 && len(p) > 0 {
			if len(c.out) > 0 && !c.writing {
				// What went before must leave before this waits: the
				// client may be waiting for it to open its window.
				c.flushLocked()
				continue
			}
			if c.sendWin <= 0 {
				c.cond.Wait()
			} else {
				st.cond.Wait()
			}
			continue
		}
		last := end && n == int64(len(p))
		c.writeData(st.id, p[:n], last)
		st.sendWin -= n
		c.sendWin -= n
		p = p[n:]
		if last {
			end = false
			st.localEnded = true
			if st.remoteEnded {
				c.closeStream(st)
			}
		}
	}
	c.flushLocked()
	return nil
}

// SetWriteDeadline and SetReadDeadline bound the handler's waits for the
// client's flow-control window and for its request body
// (http.ResponseController finds them).
func (w *responseWriter) SetWriteDeadline(t time.Time) error { return w.setDeadline(writeDL, t) }
func (w *responseWriter) SetReadDeadline(t time.Time) error  { return w.setDeadline(readDL, t) }

func (w *responseWriter) setDeadline(which int, t time.Time) error {
	c, st := w.c, w.st
	c.mu.Lock()
	defer c.mu.Unlock()
	if which == readDL {
		st.readDeadline = t
	} else {
		st.writeDeadline = t
	}
	if st.timers[which] != nil {
		st.timers[which].Stop()
		st.timers[which] = nil
	}
	if !t.IsZero() {
		st.timers[which] = time.AfterFunc(time.Until(t), func() {
			c.mu.Lock()
			st.cond.Broadcast()
			c.cond.Broadcast()
			c.mu.Unlock()
		})
	}
	return nil
}

// EnableFullDuplex: HTTP/2 is always full duplex.
func (w *responseWriter) EnableFullDuplex() error { return nil }

var _ interface {
	http.Flusher
	FlushError() error
} = (*responseWriter)(nil)
