// Package h2 serves HTTP/2 (RFC 9113) on connections that the caller has
// accepted and handshaken with ALPN "h2": the transport's own server for the
// protocol, instead of net/http's.
//
// Why a server of its own: net/http's HTTP/2 server runs every request on a
// goroutine of its own and hands each response to the connection's serve
// loop frame by frame (HEADERS, DATA, the empty DATA that ends the stream),
// a third of its CPU per small response (docs/https-edge-profile.md). Here
// the connection's goroutine reads frames and answers the requests that
// Options.Fast holds ready (the CDN's memory tier) in place, without a
// goroutine, a header map or a hand-off: a batch of requests read together
// is answered with one write(2). Every other request runs Options.Handler
// on a goroutine, with a ResponseWriter that does what net/http's does
// (Flush, trailers, Content-Length and Content-Type when the handler sets
// none, deadlines through http.ResponseController).
//
// The connection is a small state machine under one mutex (conn.mu) that
// is never held across network I/O: the frames to send gather in an output
// buffer, and whichever goroutine finds no one writing becomes the writer
// until the buffer is empty (conn.flushLocked). The reader stops reading
// while the buffer is full, so a peer that floods control frames without
// reading the answers holds nothing but its own connection.
//
// Limits against the known attacks: concurrent streams are counted until
// their handler returns, not until the peer resets them (rapid reset,
// CVE-2023-44487), and a peer that keeps opening streams past the limit is
// sent GOAWAY ENHANCE_YOUR_CALM; header lists are bounded while they are
// decoded, CONTINUATION floods included (x/net's Framer); receive windows
// bound what a peer can make the server buffer; an idle connection is closed
// after IdleTimeout and a stalled write after WriteTimeout.
package h2

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Defaults for zero Options fields.
const (
	DefaultMaxConcurrentStreams = 128
	DefaultStreamWindow         = 256 << 10
	DefaultConnWindow           = 1 << 20
	DefaultWriteTimeout         = 30 * time.Second
)

// Options configure a Server. Handler and MaxHeaderListSize are required.
type Options struct {
	Handler http.Handler
	// Fast, when set, is offered each GET or HEAD request that came without
	// a body before Handler is: see FastFunc.
	Fast FastFunc
	// MaxHeaderListSize bounds a request's header list (RFC 9113
	// SETTINGS_MAX_HEADER_LIST_SIZE: names, values and 32 bytes per field);
	// a larger one gets 431 without reaching Handler.
	MaxHeaderListSize uint32
	// MaxConcurrentStreams is advertised to clients and enforced.
	MaxConcurrentStreams uint32
	// StreamWindow and ConnWindow are the receive windows for request
	// bodies: what a client may send before the handler reads it.
	StreamWindow, ConnWindow int32
	// IdleTimeout closes a connection with no open stream (0: never);
	// it also bounds the wait for the client's connection preface.
	IdleTimeout time.Duration
	// WriteTimeout bounds one write to the connection.
	WriteTimeout time.Duration
	// Date returns the Date header's value for a handler's response that
	// has none (a cached, once-a-second string); nil formats it each time.
	Date func() string
	// ConnContext, when set, derives each connection's base context (the
	// parent of its requests' contexts).
	ConnContext func(ctx context.Context, c net.Conn) context.Context
	// OnConnError, when set, is told why the server ended a connection with
	// an error (the GOAWAY code), for metrics.
	OnConnError func(code http2.ErrCode)
	Log         *slog.Logger
}

// FastFunc answers a GET or HEAD request that came without a body from
// memory, or declines it (ok false) and the request goes to Handler. It
// must not block. It fills in a (whose slices it may reuse: the connection
// hands the same FastAnswer back, emptied). The answer is a 200; HEAD
// sends no body.
type FastFunc func(req *FastRequest, a *FastAnswer) (ok bool)

// FastAnswer is a fast answer's header and body.
type FastAnswer struct {
	// Block is header fields already HPACK-encoded without the dynamic
	// table (AppendLiteral), so that they can be made once per object and
	// sent on any connection as they are: no encoding per request.
	Block []byte
	// Fields are header fields (lowercase names) that change between
	// answers (Date): the connection's encoder encodes them.
	Fields []hpack.HeaderField
	// Body is only read, and must not change while the connection sends
	// it (it may be held while the client's flow-control window is closed).
	Body []byte
}

// AppendLiteral appends f to dst as an HPACK "literal header field
// without indexing" with a literal name (RFC 7541 §6.2.2), Huffman-coded:
// a representation that neither reads nor changes any dynamic table, for
// FastAnswer.Block. f.Name must be lowercase.
func AppendLiteral(dst []byte, f hpack.HeaderField) []byte {
	dst = append(dst, 0x00)
	dst = appendString(dst, f.Name)
	return appendString(dst, f.Value)
}

// appendString is an HPACK string literal, Huffman-coded when shorter.
func appendString(dst []byte, s string) []byte {
	if n := hpack.HuffmanEncodeLength(s); n < uint64(len(s)) {
		dst = appendInt(dst, 0x80, n)
		return hpack.AppendHuffmanString(dst, s)
	}
	dst = appendInt(dst, 0, uint64(len(s)))
	return append(dst, s...)
}

// appendInt is an HPACK integer with a 7-bit prefix (RFC 7541 §5.1);
// flag is the prefix byte's first bit.
func appendInt(dst []byte, flag byte, n uint64) []byte {
	if n < 127 {
		return append(dst, flag|byte(n))
	}
	dst = append(dst, flag|127)
	n -= 127
	for n >= 128 {
		dst = append(dst, byte(n&0x7f|0x80))
		n >>= 7
	}
	return append(dst, byte(n))
}

// FastRequest is a request offered to Options.Fast. Its strings are valid
// only for the call.
type FastRequest struct {
	Method, Authority, Path string
	// Fields are the regular header fields, names lowercase.
	Fields []hpack.HeaderField
}

// Server serves HTTP/2 connections. Its zero value is not usable: use New.
type Server struct {
	opts Options
	log  *slog.Logger

	mu       sync.Mutex
	conns    map[*conn]struct{}
	shutdown bool

	bufs     sync.Pool // *[]byte: output buffers of connections that are writing
	copyBufs sync.Pool // *[]byte: ResponseWriter.ReadFrom's
}

func (s *Server) copyBuf() *[]byte {
	if p, ok := s.copyBufs.Get().(*[]byte); ok {
		return p
	}
	b := make([]byte, dataChunk) // each Write one DATA frame, one TLS record
	return &b
}

// Corker is what ServeConn's connection may also implement (the
// transport's does) to gather the TLS records of one Write into a single
// system call: Cork before the Write, Uncork (which sends) after.
type Corker interface {
	Cork()
	Uncork() error
}

func (s *Server) getBuf() []byte {
	if p, ok := s.bufs.Get().(*[]byte); ok {
		return (*p)[:0]
	}
	return make([]byte, 0, 16<<10)
}

func (s *Server) putBuf(b []byte) {
	if b != nil && cap(b) <= 4*outHigh {
		b = b[:0]
		s.bufs.Put(&b)
	}
}

// New returns a Server for opts, with defaults for its zero fields.
func New(opts Options) *Server {
	if opts.MaxConcurrentStreams == 0 {
		opts.MaxConcurrentStreams = DefaultMaxConcurrentStreams
	}
	if opts.StreamWindow <= 0 {
		opts.StreamWindow = DefaultStreamWindow
	}
	if opts.ConnWindow <= 0 {
		opts.ConnWindow = DefaultConnWindow
	}
	if opts.ConnWindow < opts.StreamWindow {
		opts.ConnWindow = opts.StreamWindow
	}
	if opts.WriteTimeout <= 0 {
		opts.WriteTimeout = DefaultWriteTimeout
	}
	if opts.MaxHeaderListSize == 0 {
		opts.MaxHeaderListSize = 64 << 10
	}
	if opts.Date == nil {
		opts.Date = func() string { return time.Now().UTC().Format(http.TimeFormat) }
	}
	lg := opts.Log
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	return &Server{opts: opts, log: lg, conns: map[*conn]struct{}{}}
}

// ServeConn serves c, whose handshake is done (state is its TLS state),
// until the connection ends and every handler it started has returned.
// It closes c.
func (s *Server) ServeConn(c net.Conn, state *tls.ConnectionState) {
	cn := newConn(s, c, state)
	s.mu.Lock()
	if s.shutdown {
		s.mu.Unlock()
		cn.cancel()
		_ = c.Close()
		return
	}
	s.conns[cn] = struct{}{}
	s.mu.Unlock()
	cn.serve()
	s.mu.Lock()
	delete(s.conns, cn)
	s.mu.Unlock()
}

// Shutdown sends GOAWAY on every connection: each ends once its streams
// have (the caller waits for its ServeConn calls to return). Connections
// served after it are closed at once.
func (s *Server) Shutdown() {
	for _, c := range s.stop() {
		c.goAway()
	}
}

// Close ends every connection now.
func (s *Server) Close() {
	for _, c := range s.stop() {
		c.closeNow()
	}
}

// stop refuses connections from now on and returns those being served.
func (s *Server) stop() []*conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.shutdown = true
	out := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		out = append(out, c)
	}
	return out
}
