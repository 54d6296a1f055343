// Package transport terminates TLS for the public listener and routes each
// request: parts register routes into its Router; everything no part claims
// goes to the application server through a reverse proxy (or to a fallback
// page when there is none). It knows TLS, routing and limits, never what a
// handler does; handlers know nothing about TLS.
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
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Limits protect the listener; zero values mean "no limit" except where noted.
type Limits struct {
	MaxHeaderBytes    int           // > 0; larger headers get 431
	MaxBodyBytes      int64         // larger bodies get 413
	ReadHeaderTimeout time.Duration // > 0; also bounds the TLS handshake
	IdleTimeout       time.Duration
	MaxConnsPerIP     int // beyond it: 429 and the connection is closed
}

// Options configure a Server.
type Options struct {
	Listener net.Listener // bound TCP listener; the Server wraps it in TLS
	Certs    *CertStore
	// App handles every request no route claims: the app server's reverse
	// proxy, or a built-in page.
	App    http.Handler
	Limits Limits
}

// Server is the public HTTPS listener.
type Server struct {
	opts    Options
	log     *slog.Logger
	metrics *metrics
	mux     *http.ServeMux
	srv     *http.Server
	ln      *limitListener

	// Hijacked connections (websockets) are not tracked by http.Server, so
	// their goroutines register here and Shutdown waits for them.
	mu       sync.Mutex
	draining bool
	drainers map[int]func()
	nextID   int
	hijacked sync.WaitGroup

	handshakeSeen sync.Map // *tls.Conn -> struct{}; conns whose handshake was counted
}

// New builds a Server; Serve starts it.
func New(opts Options, logger *slog.Logger, reg prometheus.Registerer) (*Server, error) {
	if opts.Listener == nil || opts.Certs == nil || opts.App == nil {
		return nil, errors.New("transport: Listener, Certs and App are required")
	}
	if opts.Limits.MaxHeaderBytes <= 0 || opts.Limits.ReadHeaderTimeout <= 0 {
		return nil, errors.New("transport: MaxHeaderBytes and ReadHeaderTimeout must be positive")
	}
	s := &Server{opts: opts, log: logger, metrics: newMetrics(reg), mux: http.NewServeMux(), drainers: map[int]func(){}}
	opts.Certs.onLoad = func(ok bool) {
		if ok {
			s.metrics.certLoads.WithLabelValues("ok").Inc()
		} else {
			s.metrics.certLoads.WithLabelValues("error").Inc()
		}
	}
	s.mux.Handle("/", opts.App)
	s.ln = newLimitListener(opts.Listener, opts.Limits.MaxConnsPerIP, s.metrics)
	tlsConf := &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: opts.Certs.GetCertificate,
		// Forward-secret AEAD suites only; TLS 1.3 suites are not
		// configurable and all good.
		CipherSuites: []uint16{
			tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
			tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
			tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
		},
		NextProtos: []string{"h2", "http/1.1"},
	}
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
		ConnContext:    connContext,
		ConnState:      s.connState,
		ErrorLog:       log.New(&serverErrorLog{s: s}, "", 0),
	}
	s.srv.RegisterOnShutdown(s.drainHijacked)
	return s, nil
}

// Handle registers a route, with http.ServeMux patterns ("GET /media/{key...}").
// Routes must be registered before Serve.
func (s *Server) Handle(pattern string, h http.Handler) { s.mux.Handle(pattern, h) }

// Addr is the listening address.
func (s *Server) Addr() net.Addr { return s.opts.Listener.Addr() }

// Serve accepts connections until Shutdown; it returns nil after a Shutdown.
func (s *Server) Serve() error {
	err := s.srv.ServeTLS(s.ln, "", "")
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops accepting, lets in-flight requests finish and asks
// websockets to reconnect elsewhere; when ctx ends first, the remaining
// connections are closed.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.srv.Shutdown(ctx)
	done := make(chan struct{})
	go func() { s.hijacked.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		if err == nil {
			err = ctx.Err()
		}
	}
	if err != nil {
		s.srv.Close()
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
	rw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
	switch {
	case overLimit(r.Context()):
		s.metrics.limitHits.WithLabelValues("conns_per_ip").Inc()
		rw.Header().Set("Connection", "close")
		rw.Header().Set("Retry-After", "1")
		http.Error(rw, "too many connections from your address", http.StatusTooManyRequests)
		r.Pattern = "limit"
	case headerSize(r) > s.opts.Limits.MaxHeaderBytes:
		s.metrics.limitHits.WithLabelValues("header_size").Inc()
		rw.Header().Set("Connection", "close")
		http.Error(rw, "request header fields too large", http.StatusRequestHeaderFieldsTooLarge)
		r.Pattern = "limit"
	case s.opts.Limits.MaxBodyBytes > 0 && r.ContentLength > s.opts.Limits.MaxBodyBytes:
		s.metrics.limitHits.WithLabelValues("body_size").Inc()
		rw.Header().Set("Connection", "close")
		http.Error(rw, "request body too large", http.StatusRequestEntityTooLarge)
		r.Pattern = "limit"
	default:
		if s.opts.Limits.MaxBodyBytes > 0 && r.Body != nil && r.Body != http.NoBody {
			r.Body = &limitedBody{ReadCloser: http.MaxBytesReader(rw, r.Body, s.opts.Limits.MaxBodyBytes), m: s.metrics}
		}
		s.mux.ServeHTTP(rw, r)
	}
	route := r.Pattern
	if route == "/" {
		route = "app"
	}
	s.metrics.requests.WithLabelValues(route, r.Method, strconv.Itoa(rw.code)).Inc()
	s.metrics.duration.WithLabelValues(route).Observe(time.Since(start).Seconds())
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

// connState counts handshakes once per connection: when the connection first
// carries a request, or when it closes without ever having done so.
func (s *Server) connState(c net.Conn, st http.ConnState) {
	tc, ok := c.(*tls.Conn)
	if !ok {
		return
	}
	switch st {
	case http.StateActive, http.StateClosed, http.StateHijacked:
		if _, seen := s.handshakeSeen.LoadOrStore(tc, struct{}{}); !seen {
			cs := tc.ConnectionState()
			if cs.HandshakeComplete {
				s.metrics.handshakes.WithLabelValues(tls.VersionName(cs.Version), "ok").Inc()
			} else {
				s.metrics.handshakes.WithLabelValues("unknown", "error").Inc()
			}
		}
		if st != http.StateActive {
			s.handshakeSeen.Delete(tc)
		}
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
type statusWriter struct {
	http.ResponseWriter
	code        int
	wroteHeader bool
}

func (w *statusWriter) WriteHeader(code int) {
	if !w.wroteHeader && code >= 200 {
		w.code, w.wroteHeader = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(p []byte) (int, error) {
	w.wroteHeader = true
	return w.ResponseWriter.Write(p)
}

func (w *statusWriter) Flush() {
	w.wroteHeader = true
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
