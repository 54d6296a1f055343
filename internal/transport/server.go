// Package transport terminates TLS for the public listener and routes each
// request: parts register routes with Server.Handle (http.ServeMux
// patterns); everything no part claims goes to the application server
// through a reverse proxy (or to a fallback page when there is none). It knows TLS, routing and limits, never what a
// handler does; handlers know nothing about TLS.
//
// Protocols: HTTP/1.1 and HTTP/2 on the TCP listener, HTTP/3 (quic-go) on
// an optional UDP socket, all through the same ServeHTTP (routes, limits,
// metrics); TCP responses carry Alt-Svc so browsers move to HTTP/3.
//
// Websockets stay HTTP/1.1 upgrades, on purpose. Websockets over HTTP/2
// (RFC 8441) and HTTP/3 (RFC 9220) use an extended CONNECT: Go 1.26's
// net/http only accepts it when the whole process runs with
// GODEBUG=http2xconnect=1 (read once at start, for every server in the
// process), and then advertises SETTINGS_ENABLE_CONNECT_PROTOCOL on every
// HTTP/2 connection, so browsers would send all their websockets that way;
// gorilla/websocket v1.5.3 (the app proxy's relay) only upgrades a hijacked
// HTTP/1.1 GET and cannot serve them (golang/go#71128 is this very
// problem). quic-go's HTTP/3 server always advertises extended CONNECT;
// such requests get 501 here. Browsers open websockets over HTTP/1.1 when
// the server does not offer extended CONNECT on HTTP/2, which is what they
// get, and streaming responses (SSE, long polls) work over all three.
//
// Connections: the TCP listener's own accept loop does the TLS handshakes
// (accept.go). HTTP/2 connections go to internal/h2, the server of our own,
// which answers GET and HEAD requests that a FastHandler (the CDN's memory
// tier) holds ready on the connection's goroutine (fast2.go) and runs
// ServeHTTP for the rest (Options.NetHTTP2 sends them to net/http's
// instead). HTTP/1.1 ones start on the fast path (fast.go), which answers
// the same requests, and hands the connection with the bytes it read to
// net/http at the first request it does not answer. Every request that is
// not a fast answer goes through ServeHTTP, whichever server read it.
//
// Speed (docs/https-edge-profile.md has the profiles): a system call costs
// more than anything else per small response, so the connection under TLS
// gathers writes. On HTTP/1.1 it is corked for the length of one
// ResponseWriter Write (the TLS records net/http makes of it leave in one
// write(2)); internal/h2 corks each batch of frames it writes (h2Conn); on
// net/http's HTTP/2 a writer goroutine, running only while there is
// something to write, sends everything gathered since its last write(2).
// The Date header is formatted once a second.
package transport

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgenode/edgenode/internal/h2"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/http2"
)

// Limits protect the listener; zero values mean "no limit" except where noted.
type Limits struct {
	MaxHeaderBytes    int           // > 0; larger headers get 431
	MaxBodyBytes      int64         // larger bodies get 413
	ReadHeaderTimeout time.Duration // > 0; also bounds the TLS handshake
	IdleTimeout       time.Duration
	// MaxConnsPerIP bounds the connections of one client: an IPv4 address,
	// or an IPv6 /64. A TCP connection beyond it is closed before the TLS
	// handshake; a QUIC one is answered 429 (see overLimit).
	MaxConnsPerIP int
	// MaxWebsocketMessageBytes bounds one websocket message relayed to or
	// from the app server (the relay holds a whole message in memory); a
	// larger one ends the websocket with close 1009. 0 means
	// DefaultMaxWebsocketMessageBytes: this one always has a limit.
	MaxWebsocketMessageBytes int64
}

// DefaultMaxWebsocketMessageBytes is Limits.MaxWebsocketMessageBytes when
// unset.
const DefaultMaxWebsocketMessageBytes = 1 << 20

// Options configure a Server.
type Options struct {
	Listener net.Listener // bound TCP listener; the Server wraps it in TLS
	Certs    *CertStore
	// App handles every request no route claims: the app server's reverse
	// proxy, or a built-in page.
	App    http.Handler
	Limits Limits

	// UDPConn, when set, serves HTTP/3 (QUIC) on it with the same routes,
	// limits and certificates, and TCP responses advertise it in Alt-Svc.
	// Normally bound to the same port number as Listener. Once New has
	// succeeded the Server owns it and closes it at Shutdown (or when
	// Serve fails).
	UDPConn net.PacketConn
	// AltSvcPort is the UDP port announced in Alt-Svc; 0 means UDPConn's
	// own port (set it when a firewall maps a public port elsewhere).
	AltSvcPort int
	// AltSvcMaxAge is how long clients may remember the Alt-Svc entry;
	// 0 means 24h.
	AltSvcMaxAge time.Duration

	// NetHTTP2 serves HTTP/2 with net/http's server instead of edgenode's
	// own (internal/h2), which answers memory-tier hits without a
	// goroutine per request. A way back, should the own server misbehave.
	NetHTTP2 bool

	// ACME, when set, is asked first at every TLS handshake (certificates
	// managed for the fleet, TLS-ALPN-01 challenges); when it returns no
	// certificate and no error, Certs answers. It also makes the TCP
	// listener accept the "acme-tls/1" ALPN protocol.
	ACME CertificateGetter
}

// CertificateGetter is what tls.Config.GetCertificate needs. A nil
// certificate with a nil error means "not mine": the next source answers.
type CertificateGetter interface {
	GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error)
}

// acmeTLS1 is the ALPN protocol of TLS-ALPN-01 challenges (RFC 8737).
const acmeTLS1 = "acme-tls/1"

// Server is the public HTTPS listener.
type Server struct {
	opts    Options
	log     *slog.Logger
	metrics *metrics
	mux     *http.ServeMux
	srv     *http.Server
	ln      *limitListener
	lim     atomic.Pointer[Limits] // opts.Limits as SetLimits last changed them

	// Hijacked connections (websockets) are not tracked by http.Server, so
	// their goroutines register here and Shutdown waits for them.
	mu       sync.Mutex
	draining bool
	drainers map[int]func()
	nextID   int
	hijacked sync.WaitGroup

	// ticketConf only holds session-ticket keys: both the TCP and the QUIC
	// TLS configs encrypt and decrypt tickets through it, so one
	// SetSessionTicketKeys reaches every listener (and every clone that
	// quic-go makes of the config).
	ticketConf *tls.Config
	h3         *h3State // nil without UDPConn

	date dateCache

	// The TCP listener's own accept loop (acceptLoop) does the TLS
	// handshakes; HTTP/2 connections go to net/http through httpLn,
	// HTTP/1.1 ones to the fast path first (fast.go), which hands them to
	// net/http through httpLn when it declines a request.
	tlsConf     *tls.Config
	h2          *h2.Server // nil with Options.NetHTTP2
	httpLn      *connListener
	fast        map[string]*fastRoute // by ServeMux pattern; written only before Serve
	routes      *routeCache           // the fast paths' ServeMux lookups
	closing     atomic.Bool           // Shutdown or a failed Serve began
	fastConns   sync.WaitGroup        // handshaking and fast-path connections
	fastMu      sync.Mutex
	h1conns     map[*h1conn]struct{}
	handshaking map[net.Conn]struct{}
}

// connKey is the request context key of the connection under TLS (a
// *countedConn), for HTTP/1.1 responses to cork it.
type connKey struct{}

// replayKey is the request context key of a connection the fast path
// handed to net/http (a *replayConn), whose TLS state ServeHTTP restores.
type replayKey struct{}

// New builds a Server; Serve starts it.
func New(opts Options, logger *slog.Logger, reg prometheus.Registerer) (*Server, error) {
	if opts.Listener == nil || opts.Certs == nil || opts.App == nil {
		return nil, errors.New("transport: Listener, Certs and App are required")
	}
	if opts.Limits.MaxHeaderBytes <= 0 || opts.Limits.ReadHeaderTimeout <= 0 {
		return nil, errors.New("transport: MaxHeaderBytes and ReadHeaderTimeout must be positive")
	}
	met, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	s := &Server{opts: opts, log: logger, metrics: met, mux: http.NewServeMux(), drainers: map[int]func(){},
		ticketConf: &tls.Config{}, httpLn: newConnListener(opts.Listener.Addr()), fast: map[string]*fastRoute{},
		h1conns: map[*h1conn]struct{}{}, handshaking: map[net.Conn]struct{}{}, routes: newRouteCache()}
	opts.Certs.onLoad = func(ok bool) {
		if ok {
			s.metrics.certLoads.WithLabelValues("ok").Inc()
		} else {
			s.metrics.certLoads.WithLabelValues("error").Inc()
		}
	}
	s.mux.Handle("/", opts.App)
	s.lim.Store(&opts.Limits)
	s.ln = newLimitListener(opts.Listener, opts.Limits.MaxConnsPerIP, s.metrics)
	tlsConf := &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: s.getCertificate,
		// Forward-secret AEAD suites only; TLS 1.3 suites are not
		// configurable and all good.
		CipherSuites: []uint16{
			tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
			tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
			tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
		},
		NextProtos: []string{"h2", "http/1.1"},
		WrapSession: func(cs tls.ConnectionState, ss *tls.SessionState) ([]byte, error) {
			return s.ticketConf.EncryptTicket(cs, ss)
		},
		UnwrapSession: func(identity []byte, cs tls.ConnectionState) (*tls.SessionState, error) {
			return s.ticketConf.DecryptTicket(identity, cs)
		},
	}
	if opts.ACME != nil {
		tlsConf.NextProtos = append(tlsConf.NextProtos, acmeTLS1)
	}
	s.tlsConf = tlsConf
	s.srv = &http.Server{
		Handler:           s,
		TLSConfig:         tlsConf,
		ReadHeaderTimeout: opts.Limits.ReadHeaderTimeout,
		IdleTimeout:       opts.Limits.IdleTimeout,
		// net/http answers 431 by itself past MaxHeaderBytes (plus its own
		// 4 KiB slack) without telling anyone; ServeHTTP checks the real
		// limit so that each hit is also counted. The server-side limit is a
		// backstop at twice that.
		MaxHeaderBytes: 2 * opts.Limits.MaxHeaderBytes,
		ConnState:      s.connState,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if rc, ok := c.(*replayConn); ok {
				ctx = context.WithValue(ctx, replayKey{}, rc)
				c = rc.Conn
			}
			if tc, ok := c.(*tls.Conn); ok {
				if cc, ok := tc.NetConn().(*countedConn); ok {
					return context.WithValue(ctx, connKey{}, cc)
				}
			}
			return ctx
		},
		ErrorLog: log.New(&serverErrorLog{s: s}, "", 0),
	}
	s.srv.RegisterOnShutdown(s.drainHijacked)
	// A TLS-ALPN-01 validator only wants the handshake; there is no HTTP
	// on such a connection.
	s.srv.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){
		acmeTLS1: func(_ *http.Server, c *tls.Conn, _ http.Handler) { c.Close() },
	}
	// Setting TLSNextProto disables net/http's automatic HTTP/2; Protocols
	// turns it back on explicitly.
	s.srv.Protocols = new(http.Protocols)
	s.srv.Protocols.SetHTTP1(true)
	s.srv.Protocols.SetHTTP2(true)
	if opts.UDPConn != nil {
		s.h3 = newH3(s, tlsConf)
	}
	if !opts.NetHTTP2 {
		s.h2 = h2.New(h2.Options{
			Handler: s,
			Fast:    s.answerH2,
			// As net/http's: twice the limit, which ServeHTTP checks and
			// counts (431).
			MaxHeaderListSize: uint32(2 * opts.Limits.MaxHeaderBytes),
			IdleTimeout:       opts.Limits.IdleTimeout,
			Date:              func() string { return s.date.get(time.Now())[0] },
			OnConnError: func(code http2.ErrCode) {
				s.metrics.h2Errors.WithLabelValues(code.String()).Inc()
			},
			Log: logger,
		})
	}
	return s, nil
}

func (s *Server) getCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	if s.opts.ACME != nil {
		c, err := s.opts.ACME.GetCertificate(hello)
		if c != nil || err != nil {
			return c, err
		}
	}
	return s.opts.Certs.GetCertificate(hello)
}

// SetSessionTicketKeys replaces the keys that encrypt and decrypt TLS
// session tickets on every listener of this Server (TCP and QUIC). The first
// key encrypts new tickets; all of them decrypt. Nodes given the same keys
// resume each other's sessions. Without a call, each Server rotates its own
// keys automatically (crypto/tls's default).
func (s *Server) SetSessionTicketKeys(keys [][32]byte) {
	if len(keys) == 0 {
		return
	}
	s.ticketConf.SetSessionTicketKeys(keys)
	s.metrics.ticketSet.Inc()
}

// UDPAddr is the HTTP/3 address, or nil without one.
func (s *Server) UDPAddr() net.Addr {
	if s.opts.UDPConn == nil {
		return nil
	}
	return s.opts.UDPConn.LocalAddr()
}

// Handle registers a route, with http.ServeMux patterns ("GET /media/{key...}").
// Routes must be registered before Serve. A FastHandler also answers from
// the HTTP/1.1 fast path (fast.go).
func (s *Server) Handle(pattern string, h http.Handler) {
	s.mux.Handle(pattern, h)
	if fh, ok := h.(FastHandler); ok {
		route := &fastRoute{h: fh, requests: map[[2]string]prometheus.Counter{},
			duration: s.metrics.duration.WithLabelValues(pattern)}
		for _, p := range []string{"1.1", "2"} {
			for _, m := range []string{http.MethodGet, http.MethodHead} {
				route.requests[[2]string{p, m}] = s.metrics.requests.WithLabelValues(pattern, m, "200", p)
			}
		}
		s.fast[pattern] = route
	}
}

// Addr is the listening address.
func (s *Server) Addr() net.Addr { return s.opts.Listener.Addr() }

// Serve accepts connections (TCP, and QUIC when configured) until
// Shutdown; it returns nil after a Shutdown. When one listener fails, the
// other is closed and the error returned.
func (s *Server) Serve() error {
	n := 2
	errc := make(chan error, 3)
	go func() {
		err := s.srv.Serve(s.httpLn)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		errc <- err
	}()
	go func() { errc <- s.acceptLoop() }()
	if s.h3 != nil {
		n++
		go func() { errc <- s.h3.serve() }()
	}
	var first error
	for range n {
		if err := <-errc; err != nil && first == nil {
			first = err
			s.closing.Store(true)
			s.ln.Close()
			s.srv.Close()
			s.closeFast()
			if s.h3 != nil {
				s.h3.close()
			}
		}
	}
	return first
}

// Shutdown stops accepting, lets in-flight requests finish and asks
// websockets to reconnect elsewhere; when ctx ends first, the remaining
// connections are closed.
func (s *Server) Shutdown(ctx context.Context) error {
	h3done := make(chan error, 1)
	if s.h3 != nil {
		go func() { h3done <- s.h3.shutdown(ctx) }()
	} else {
		h3done <- nil
	}
	s.closing.Store(true)
	s.ln.Close() // the accept loop ends; net/http's Shutdown closes httpLn
	s.fastMu.Lock()
	for h := range s.h1conns {
		h.wakeIdle()
	}
	s.closeHandshakesLocked()
	s.fastMu.Unlock()
	if s.h2 != nil {
		s.h2.Shutdown()
	}
	err := s.srv.Shutdown(ctx)
	done := make(chan struct{})
	go func() { s.hijacked.Wait(); s.fastConns.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		if err == nil {
			err = ctx.Err()
		}
	}
	if err != nil {
		s.srv.Close()
		s.closeFast()
	}
	if herr := <-h3done; err == nil {
		err = herr
	}
	return err
}

// TrackHijacked registers a hijacked connection (a websocket): onDrain is
// called once when the server starts draining (it should send a close frame
// and return quickly); done must be called when the connection has ended.
// ok is false when the server is already draining: the caller should close.
func (s *Server) TrackHijacked(onDrain func()) (done func(), ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining {
		return func() {}, false
	}
	id := s.nextID
	s.nextID++
	s.drainers[id] = onDrain
	s.hijacked.Add(1)
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			delete(s.drainers, id)
			s.mu.Unlock()
			s.hijacked.Done()
		})
	}, true
}

func (s *Server) drainHijacked() {
	s.mu.Lock()
	s.draining = true
	fns := make([]func(), 0, len(s.drainers))
	for _, f := range s.drainers {
		fns = append(fns, f)
	}
	s.mu.Unlock()
	for _, f := range fns {
		f()
	}
}

// ServeHTTP applies the limits, routes, and records metrics.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	proto := "1.1"
	switch r.ProtoMajor {
	case 3:
		proto = "3"
		if qc, ok := r.Context().Value(quicConnKey{}).(*quicConn); ok {
			qc.begin()
			defer qc.end()
		}
	case 2:
		proto = "2"
	}
	if r.ProtoMajor >= 2 {
		// HTTP/2 and HTTP/3 run each request on a new goroutine.
		growStack(0)
	} else if r.TLS == nil {
		// net/http fills TLS in only for a *tls.Conn, and a connection the
		// fast path handed over is a *replayConn.
		if rc, ok := r.Context().Value(replayKey{}).(*replayConn); ok {
			r.TLS = &rc.state
		}
	}
	if s.h3 != nil && r.ProtoMajor < 3 {
		if v := s.h3.altSvcValue(); v != "" {
			w.Header().Set("Alt-Svc", v)
		}
	}
	rw := &statusWriter{ResponseWriter: w, code: http.StatusOK, date: &s.date}
	if r.ProtoMajor == 1 {
		rw.cc, _ = r.Context().Value(connKey{}).(*countedConn)
	}
	// Recorded in a defer: a handler that aborts its response (panic with
	// http.ErrAbortHandler, e.g. the CDN when an origin download breaks
	// off) is counted too, as code "aborted".
	finished := false
	defer func() {
		route := r.Pattern
		if route == "/" {
			route = "app"
		}
		code := strconv.Itoa(rw.code)
		if !finished {
			code = "aborted"
		}
		s.metrics.requests.WithLabelValues(route, r.Method, code, proto).Inc()
		s.metrics.duration.WithLabelValues(route).Observe(time.Since(start).Seconds())
	}()
	maxBody := s.lim.Load().MaxBodyBytes // SetLimits may change it
	switch {
	case r.Method == http.MethodConnect:
		// Plain CONNECT is for forward proxies, which this is not. Extended
		// CONNECT (websockets over HTTP/2 or HTTP/3, RFC 8441/9220) is not
		// supported: see the package documentation. Clients then use an
		// HTTP/1.1 upgrade.
		code := http.StatusMethodNotAllowed
		if r.Header.Get(":protocol") != "" || (r.ProtoMajor == 3 && r.Proto != "HTTP/3.0") {
			code = http.StatusNotImplemented
		}
		http.Error(rw, http.StatusText(code), code)
		r.Pattern = "connect"
	case overLimit(r.Context()):
		// Counted as a limit hit once, when the connection was.
		closeAfter(rw, r)
		rw.Header().Set("Retry-After", "1")
		http.Error(rw, "too many connections from your address", http.StatusTooManyRequests)
		r.Pattern = "limit"
	case headerSize(r) > s.opts.Limits.MaxHeaderBytes:
		s.metrics.limitHits.WithLabelValues("header_size").Inc()
		closeAfter(rw, r)
		http.Error(rw, "request header fields too large", http.StatusRequestHeaderFieldsTooLarge)
		r.Pattern = "limit"
	case maxBody > 0 && r.ContentLength > maxBody:
		s.metrics.limitHits.WithLabelValues("body_size").Inc()
		closeAfter(rw, r)
		http.Error(rw, "request body too large", http.StatusRequestEntityTooLarge)
		r.Pattern = "limit"
	default:
		if maxBody > 0 && r.Body != nil && r.Body != http.NoBody {
			r.Body = &limitedBody{ReadCloser: http.MaxBytesReader(rw, r.Body, maxBody), m: s.metrics}
		}
		s.mux.ServeHTTP(rw, r)
	}
	finished = true
}

// closeAfter ends the connection after this response: HTTP/1.1 closes it,
// net/http's HTTP/2 turns the header into a GOAWAY (and strips it). HTTP/3
// has no Connection header (it is a protocol error there), so QUIC
// connections stay up.
func closeAfter(w http.ResponseWriter, r *http.Request) {
	if r.ProtoMajor < 3 {
		w.Header().Set("Connection", "close")
	}
}

// limitedBody counts body-limit hits where the handler reads past the limit.
type limitedBody struct {
	io.ReadCloser
	m    *metrics
	once sync.Once
}

func (b *limitedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	var mbe *http.MaxBytesError
	if err != nil && errors.As(err, &mbe) {
		b.once.Do(func() { b.m.limitHits.WithLabelValues("body_size").Inc() })
	}
	return n, err
}

// connState starts an HTTP/2 connection's writer (see startAsync). net/http's
// HTTP/2 server reports its connection active as it starts, before its
// first frame; only HTTP/2 connections reach net/http as a *tls.Conn (the
// fast path hands HTTP/1.1 ones over as a *replayConn).
func (s *Server) connState(c net.Conn, st http.ConnState) {
	tc, ok := c.(*tls.Conn)
	if !ok || st != http.StateActive {
		return
	}
	cc, ok := tc.NetConn().(*countedConn)
	if !ok || !cc.asyncStarted.CompareAndSwap(false, true) {
		return
	}
	if tc.ConnectionState().NegotiatedProtocol == "h2" {
		cc.startAsync()
	}
}

// serverErrorLog turns net/http's error log lines into slog records at debug
// level (TLS handshake noise from scanners is normal on a public port) and
// counts the header timeouts.
type serverErrorLog struct{ s *Server }

func (l *serverErrorLog) Write(p []byte) (int, error) {
	msg := strings.TrimSpace(string(p))
	if strings.Contains(msg, "i/o timeout") || strings.Contains(msg, "deadline exceeded") {
		l.s.metrics.limitHits.WithLabelValues("read_header_timeout").Inc()
	}
	l.s.log.Debug("http server", "msg", msg)
	return len(p), nil
}

// statusWriter records the status code. It keeps Flush and Hijack working
// (streaming and websockets pass through it) and unwraps for
// http.ResponseController.
//
// It also does two things for speed, invisible to handlers: it sets the
// Date header from a value formatted once a second (net/http's HTTP/2
// formats one per response, on the handler's goroutine, whose stack then
// grows past its first 8 KiB: a tenth of the server's CPU time at 10 KiB
// responses), and on HTTP/1.1 it corks the connection for the length of
// one Write or Flush, so that the TLS records net/http makes of it leave in
// one system call (see countedConn.cork).
type statusWriter struct {
	http.ResponseWriter
	code        int
	wroteHeader bool
	date        *dateCache
	cc          *countedConn // HTTP/1.1 only
}

func (w *statusWriter) setDate() {
	h := w.ResponseWriter.Header()
	if _, ok := h["Date"]; !ok {
		h["Date"] = w.date.get(time.Now())
	}
}

func (w *statusWriter) WriteHeader(code int) {
	if !w.wroteHeader {
		w.setDate()
	}
	if !w.wroteHeader && code >= 200 {
		w.code, w.wroteHeader = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(p []byte) (int, error) {
	if !w.wroteHeader {
		w.setDate()
		w.wroteHeader = true
	}
	if w.cc == nil {
		return w.ResponseWriter.Write(p)
	}
	return w.corkedWrite(p)
}

func (w *statusWriter) corkedWrite(p []byte) (n int, err error) {
	w.cc.cork()
	defer func() { // deferred: a panic must not leave the connection corked
		if uerr := w.cc.uncork(); err == nil && uerr != nil {
			n, err = 0, uerr
		}
	}()
	return w.ResponseWriter.Write(p)
}

func (w *statusWriter) Flush() {
	if !w.wroteHeader {
		w.setDate()
		w.wroteHeader = true
	}
	if w.cc != nil {
		w.cc.cork()
		defer w.cc.uncork()
	}
	_ = http.NewResponseController(w.ResponseWriter).Flush()
}

func (w *statusWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err == nil {
		w.code = http.StatusSwitchingProtocols
	}
	return c, brw, err
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// growStack gives the calling goroutine a stack of 8 KiB at once, while it
// is still shallow. HTTP/2 and HTTP/3 serve every request on a goroutine
// of its own, which starts with a small stack (2 KiB, or the runtime's
// running average) and would otherwise grow it step by step deep in
// net/http's response writer, each step copying and adjusting every frame
// below: a tenth of the server's CPU time at 10 KiB responses over HTTP/2.
// Growing here copies a handful of frames once.
//
//go:noinline
func growStack(i int) byte {
	var b [5 << 10]byte
	b[i&(len(b)-1)] = byte(i)
	return b[(i*7)&(len(b)-1)]
}

// dateCache is the Date header's value, formatted at most once a second.
// The slice is shared by every response of that second and never mutated.
type dateCache struct{ p atomic.Pointer[httpDate] }

type httpDate struct {
	sec int64
	v   []string
}

func (d *dateCache) get(now time.Time) []string {
	sec := now.Unix()
	if h := d.p.Load(); h != nil && h.sec == sec {
		return h.v
	}
	h := &httpDate{sec: sec, v: []string{now.UTC().Format(http.TimeFormat)}}
	d.p.Store(h)
	return h.v
}

// headerSize approximates the request head's size on the wire as net/http
// counts it for MaxHeaderBytes: the request line and every header line.
func headerSize(r *http.Request) int {
	n := len(r.Method) + len(r.RequestURI) + len(r.Proto) + 4
	for k, vs := range r.Header {
		for _, v := range vs {
			n += len(k) + len(v) + 4
		}
	}
	return n
}

// BenchLimits are the embedded node's default limits without the
// per-address connection cap: load tools open many connections from one
// address.
var BenchLimits = Limits{MaxHeaderBytes: 64 << 10, MaxBodyBytes: 10 << 20, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 120 * time.Second}

// NewFromFiles builds a Server on ln with one certificate from PEM files
// and BenchLimits, nothing routed but what the caller adds. The load tools
// (transportbench, cdnbench, edgebench) use it to measure the real
// transport.
func NewFromFiles(ln net.Listener, certFile, keyFile string, log *slog.Logger, reg prometheus.Registerer) (*Server, error) {
	certs, err := NewCertStore([]CertSource{{CertFile: certFile, KeyFile: keyFile}}, log)
	if err != nil {
		return nil, err
	}
	return New(Options{Listener: ln, Certs: certs, App: http.NotFoundHandler(), Limits: BenchLimits}, log, reg)
}

// SetLimits changes the limits a config reload may change while the server
// runs: MaxBodyBytes, MaxConnsPerIP and MaxWebsocketMessageBytes, each from
// its next check (a lower MaxConnsPerIP refuses new connections beyond it
// and closes none). l's other fields are the http.Server's, fixed once it
// serves: they need a restart and are ignored.
func (s *Server) SetLimits(l Limits) {
	cur := *s.lim.Load()
	cur.MaxBodyBytes, cur.MaxConnsPerIP, cur.MaxWebsocketMessageBytes = l.MaxBodyBytes, l.MaxConnsPerIP, l.MaxWebsocketMessageBytes
	s.lim.Store(&cur)
	s.ln.setPerIP(l.MaxConnsPerIP)
}
