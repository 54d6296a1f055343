package transport

import (
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// FastHandler is a route handler that can answer some requests from memory
// without net/http (the CDN's memory tier). Server.Handle notices it; on
// HTTP/1.1 connections, a GET or HEAD that ServeMux routes to the handler
// and that parseFastHead accepts is answered by AppendFast when it says ok,
// with the transport's own fields (Date, Alt-Svc) added; on HTTP/2
// connections (internal/h2), one that came without a body and without the
// same fields is answered by AppendFastBlock (fast2.go). Everything else
// goes through ServeHTTP as before.
//
// AppendFast appends the response's header fields ("Name: value\r\n" each;
// no status line, no Date, no final CRLF) to dst and returns them with the
// body; the answer is a 200 and must be exactly what ServeHTTP would send
// for the same request, which has no Range, conditional, body or upgrade
// fields. The body is only read, never changed: HTTP/2 may hold it while
// the client's flow-control window is closed. AppendFastBlock is the same
// answer with its fields as an HPACK block that uses no table state
// (h2.AppendLiteral: lowercase names), which can be made once per object.
type FastHandler interface {
	http.Handler
	AppendFast(dst []byte, method, path string) (head, body []byte, ok bool)
	AppendFastBlock(dst []byte, method, path string) (block, body []byte, ok bool)
}

// Why a fast path: net/http spends most of an HTTP/1.1 10 KiB cache hit
// parsing the request into maps, writing the header map back out, and
// allocating (docs/https-edge-profile.md: ~33 µs of server CPU per request
// against nginx's ~15). A loop that reads the head into a fixed buffer,
// checks it and writes precomputed bytes pays only TLS and one write(2).
// It is deliberately narrow: whatever it is unsure of goes to net/http,
// with the bytes it read, on the same connection (handOff), and the
// connection stays there.

// fastRoute is one route with a FastHandler, and its metrics resolved once.
type fastRoute struct {
	h        FastHandler
	requests map[[2]string]prometheus.Counter // by proto ("1.1", "2") and method, code 200
	duration prometheus.Observer
}

// answered counts a fast answer over proto, as ServeHTTP counts an answer,
// and in edgenode_http_fast_answers_total.
func (r *fastRoute) answered(m *metrics, proto, method string, start time.Time) {
	r.requests[[2]string{proto, method}].Inc()
	r.duration.Observe(time.Since(start).Seconds())
	m.fastAnswers[proto].Inc()
}

// readBufSize bounds a head the fast path reads; a longer one goes to
// net/http (which has its own limit, MaxHeaderBytes).
const readBufSize = 4 << 10

// h1conn is an HTTP/1.1 connection served by the fast path until it hands
// off. Its goroutine (started by the accept loop) owns it; Shutdown reaches
// it only through mu.
type h1conn struct {
	s  *Server
	tc *tls.Conn
	cc *countedConn

	mu    sync.Mutex
	state h1State

	buf  []byte // read buffer: buf[r:w] is unread
	r, w int
}

// outBufs hold responses while they are written. Pooled, not kept per
// connection: an idle connection holds only its 4 KiB read buffer, as
// net/http's do, even after a 64 KiB answer.
var outBufs = sync.Pool{New: func() any { b := make([]byte, 0, 16<<10); return &b }}

// h1State is the connection's place in its loop, for Shutdown: only an
// idle connection (waiting for a request) may be closed under it.
type h1State int

const (
	h1Active h1State = iota // between reading a head and finishing its response
	h1Idle                  // waiting for request bytes
	h1Done                  // closed or handed off
)

// serve answers requests until one is declined (then net/http takes over),
// the client goes away, a timeout passes, or the server shuts down.
func (h *h1conn) serve() {
	for {
		fh, res, err := h.readHead()
		if err != nil {
			h.close()
			return
		}
		if res != headOK {
			h.handOff(res.reason())
			return
		}
		declined, err := h.answer(&fh)
		if err != nil {
			// Answered as far as the client let us.
			h.close()
			return
		}
		if declined != "" {
			h.handOff(declined)
			return
		}
		h.r += fh.n
		if h.r == h.w {
			h.r, h.w = 0, 0
		}
	}
}

// readHead reads until buf holds a complete head. The connection is idle
// while nothing of the next request has arrived (IdleTimeout), then has
// ReadHeaderTimeout from the first byte.
func (h *h1conn) readHead() (fastHead, headResult, error) {
	lim := h.s.opts.Limits
	partial := false
	for {
		if h.r < h.w {
			fh, res := parseFastHead(h.buf[h.r:h.w])
			if res != headMore {
				if res == headOK && fh.n > lim.MaxHeaderBytes {
					res = headTooLong // net/http answers 431 and counts it
				}
				return fh, res, nil
			}
			if h.w == len(h.buf) {
				if h.r == 0 {
					return fastHead{}, headTooLong, nil // too long for the fast path
				}
				h.w = copy(h.buf, h.buf[h.r:h.w])
				h.r = 0
			}
		}
		// One deadline per wait that changes it: the idle wait's (none
		// without an IdleTimeout, which also clears a head's), then the
		// head's from its first byte on.
		var dl time.Time
		set := false
		switch {
		case h.r < h.w && !partial:
			partial, set = true, true
			dl = time.Now().Add(lim.ReadHeaderTimeout)
		case h.r == h.w:
			set = true
			if lim.IdleTimeout > 0 {
				dl = time.Now().Add(lim.IdleTimeout)
			}
		}
		if !h.setState(h1Idle, set, dl) {
			return fastHead{}, 0, net.ErrClosed
		}
		n, err := h.tc.Read(h.buf[h.w:])
		h.w += n
		if !h.setState(h1Active, false, time.Time{}) {
			return fastHead{}, 0, net.ErrClosed
		}
		if err != nil {
			if partial && errors.Is(err, os.ErrDeadlineExceeded) && !h.s.closing.Load() {
				h.s.metrics.limitHits.WithLabelValues("read_header_timeout").Inc()
			}
			return fastHead{}, 0, err
		}
	}
}

// setState moves the connection to st; with set it also sets the read
// deadline to dl (zero: none), under mu so that a Shutdown's deadline
// cannot be overwritten by a later one. It reports false when the
// connection would wait for more bytes while the server drains: requests
// already read are answered, no new ones are waited for.
func (h *h1conn) setState(st h1State, set bool, dl time.Time) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.state == h1Done {
		return false
	}
	if st == h1Idle && h.s.closing.Load() {
		return false
	}
	h.state = st
	if set {
		_ = h.tc.SetReadDeadline(dl)
	}
	return true
}

// answer writes the response to fh if its route has a FastHandler that
// answers it; otherwise it writes nothing and says why. An error is the
// write's.
func (h *h1conn) answer(fh *fastHead) (handoffReason, error) {
	start := time.Now()
	method := http.MethodGet
	if string(fh.method) == http.MethodHead {
		method = http.MethodHead
	}
	path := string(fh.path)
	route := h.s.fastRouteFor(method, string(fh.host), path)
	if route == nil {
		return handoffRoute, nil
	}
	bp := outBufs.Get().(*[]byte)
	defer func() {
		if cap(*bp) <= 128<<10 {
			outBufs.Put(bp)
		}
	}()
	out := append((*bp)[:0], "HTTP/1.1 200 OK\r\n"...)
	out, body, ok := route.h.AppendFast(out, method, path)
	if !ok {
		return handoffHandler, nil
	}
	if h.s.h3 != nil {
		if v := h.s.h3.altSvcValue(); v != "" {
			out = append(append(append(out, "Alt-Svc: "...), v...), "\r\n"...)
		}
	}
	out = append(append(append(out, "Date: "...), h.s.date.get(start)[0]...), "\r\n\r\n"...)
	if method == http.MethodGet {
		out = append(out, body...)
	}
	h.cc.cork()
	_, err := h.tc.Write(out)
	if uerr := h.cc.uncork(); err == nil {
		err = uerr
	}
	*bp = out[:0]
	route.answered(h.s.metrics, "1.1", method, start)
	return "", err
}

// handOff gives the connection, with the bytes read and not answered, to
// net/http. From here on net/http owns it, as if it had accepted it.
func (h *h1conn) handOff(why handoffReason) {
	if !h.finish() {
		return
	}
	h.s.metrics.handoff[why].Inc()
	_ = h.tc.SetReadDeadline(time.Time{})
	rc := &replayConn{Conn: h.tc, state: h.tc.ConnectionState()}
	if h.r < h.w {
		rc.buf = append([]byte(nil), h.buf[h.r:h.w]...)
	}
	h.buf = nil
	if !h.s.httpLn.push(rc) {
		_ = h.tc.Close()
	}
}

// close ends the connection.
func (h *h1conn) close() {
	if h.finish() {
		_ = h.tc.Close()
	}
}

// finish takes the connection out of the fast path's hands once; false if
// Shutdown already did.
func (h *h1conn) finish() bool {
	h.mu.Lock()
	if h.state == h1Done {
		h.mu.Unlock()
		return false
	}
	h.state = h1Done
	h.mu.Unlock() // not held with fastMu: Shutdown takes them the other way round
	h.s.fastMu.Lock()
	delete(h.s.h1conns, h)
	h.s.fastMu.Unlock()
	return true
}

// wakeIdle makes an idle connection's read return now (Shutdown): its loop
// then sees the server draining and closes it. A busy one finishes its
// response first and closes before reading the next.
func (h *h1conn) wakeIdle() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.state == h1Idle {
		_ = h.tc.SetReadDeadline(time.Now())
	}
}

// replayConn is a connection handed to net/http after the fast path read
// from it: Read returns the bytes already read first. NetConn is the TLS
// connection (handlers that take over a socket find it through NetConn);
// ServeHTTP restores Request.TLS from state, which net/http only fills in
// for a *tls.Conn.
type replayConn struct {
	*tls.Conn
	buf   []byte
	state tls.ConnectionState
}

func (c *replayConn) Read(p []byte) (int, error) {
	if len(c.buf) > 0 {
		n := copy(p, c.buf)
		c.buf = c.buf[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// NetConn is the TLS connection underneath.
func (c *replayConn) NetConn() net.Conn { return c.Conn }

// connListener hands net/http the connections the accept loop gives it:
// HTTP/2 ones straight after their handshake, HTTP/1.1 ones when the fast
// path declines a request.
type connListener struct {
	addr  net.Addr
	conns chan net.Conn
	once  sync.Once
	done  chan struct{} // closed by Close
}

func newConnListener(addr net.Addr) *connListener {
	return &connListener{addr: addr, conns: make(chan net.Conn), done: make(chan struct{})}
}

// push waits for net/http to accept c; false once the listener is closed.
func (l *connListener) push(c net.Conn) bool {
	select {
	case l.conns <- c:
		return true
	case <-l.done:
		return false
	}
}

func (l *connListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *connListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *connListener) Addr() net.Addr { return l.addr }
