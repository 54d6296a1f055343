package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// h3State is the HTTP/3 side of a Server: a QUIC listener on the UDP socket
// and quic-go's http3.Server calling the same ServeHTTP as TCP.
//
// Lifecycle (guarded by mu): idle -> serving (serve made the listener) ->
// closed (shutdown or close ran; serve after that returns at once). The
// UDP socket is closed exactly once, when the state reaches closed and the
// http3 server has finished.
type h3State struct {
	s      *Server
	srv    *http3.Server
	tlsCfg *tls.Config
	quic   *quic.Config
	altSvc atomic.Value // string; "" while draining

	mu       sync.Mutex
	closed   bool
	tr       *quic.Transport
	ln       *quic.Listener
	conns    map[*quicConn]struct{}
	udpOnce  sync.Once
	serveEnd chan struct{} // closed when serve returns; nil before serve
}

// quicConn is what the server knows about one QUIC connection: whether it
// is over the per-address limit, and how many requests it carries (so a
// draining server closes it once it is idle).
type quicConn struct {
	h         *h3State
	conn      *quic.Conn
	addr      netip.Addr
	overLimit bool

	mu      sync.Mutex
	active  int
	lastEnd time.Time
}

type quicConnKey struct{}

func newH3(s *Server, base *tls.Config) *h3State {
	h := &h3State{s: s, conns: map[*quicConn]struct{}{}}
	// ConfigureTLSConfig clones base (keeping GetCertificate and the ticket
	// hooks, so certificates and shared ticket keys are the same as on TCP)
	// and sets the ALPN to h3. QUIC is TLS 1.3 only.
	h.tlsCfg = http3.ConfigureTLSConfig(base)
	h.tlsCfg.MinVersion = tls.VersionTLS13
	h.quic = &quic.Config{
		HandshakeIdleTimeout: s.opts.Limits.ReadHeaderTimeout,
		MaxIdleTimeout:       s.opts.Limits.IdleTimeout,
		// No 0-RTT: early data can be replayed, and the routes behind this
		// listener (the app server) are not all idempotent.
		Allow0RTT: false,
	}
	h.srv = &http3.Server{
		Handler:        s,
		MaxHeaderBytes: 2 * s.opts.Limits.MaxHeaderBytes, // same backstop as TCP; ServeHTTP checks the real limit
		IdleTimeout:    s.opts.Limits.IdleTimeout,
		ConnContext:    h.connContext,
		Logger:         s.log.With("proto", "h3"),
	}
	port := s.opts.AltSvcPort
	if port == 0 {
		if ua, ok := s.opts.UDPConn.LocalAddr().(*net.UDPAddr); ok {
			port = ua.Port
		}
	}
	maxAge := s.opts.AltSvcMaxAge
	if maxAge <= 0 {
		maxAge = 24 * time.Hour
	}
	if port > 0 {
		h.altSvc.Store(`h3=":` + strconv.Itoa(port) + `"; ma=` + strconv.Itoa(int(maxAge.Seconds())))
	} else {
		h.altSvc.Store("")
	}
	return h
}

func (h *h3State) altSvcValue() string { return h.altSvc.Load().(string) }

// serve runs until shutdown or close; nil after those.
func (h *h3State) serve() error {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		h.closeUDP()
		return nil
	}
	h.serveEnd = make(chan struct{})
	defer close(h.serveEnd)
	h.tr = &quic.Transport{Conn: h.s.opts.UDPConn}
	ln, err := h.tr.Listen(h.tlsCfg, h.quic)
	if err != nil {
		h.mu.Unlock()
		return fmt.Errorf("http3: listen on %s: %w", h.s.opts.UDPConn.LocalAddr(), err)
	}
	h.ln = ln
	h.mu.Unlock()
	err = h.srv.ServeListener(ln)
	if errors.Is(err, http.ErrServerClosed) || errors.Is(err, quic.ErrServerClosed) {
		return nil
	}
	return fmt.Errorf("http3: %w", err)
}

// connContext runs once per QUIC connection, before its first request.
func (h *h3State) connContext(ctx context.Context, c *quic.Conn) context.Context {
	var addr netip.Addr
	if ua, ok := c.RemoteAddr().(*net.UDPAddr); ok {
		addr, _ = netip.AddrFromSlice(ua.IP)
		addr = addr.Unmap()
	}
	qc := &quicConn{h: h, conn: c, addr: addr, overLimit: h.s.ln.acquire(addr)}
	m := h.s.metrics
	m.quicOpen.Inc()
	m.handshakes.WithLabelValues("QUIC", "ok").Inc()
	if c.ConnectionState().TLS.DidResume {
		m.resumed.WithLabelValues("quic").Inc()
	}
	h.mu.Lock()
	h.conns[qc] = struct{}{}
	h.mu.Unlock()
	context.AfterFunc(c.Context(), func() {
		h.mu.Lock()
		delete(h.conns, qc)
		h.mu.Unlock()
		h.s.ln.forget(addr)
		m.quicOpen.Dec()
	})
	return context.WithValue(ctx, quicConnKey{}, qc)
}

func (qc *quicConn) begin() {
	qc.mu.Lock()
	qc.active++
	qc.mu.Unlock()
}

func (qc *quicConn) end() {
	qc.mu.Lock()
	qc.active--
	qc.lastEnd = time.Now()
	qc.mu.Unlock()
}

// idleSince reports whether no request runs on the connection and none
// ended after t minus grace, i.e. its last response had time to leave.
func (qc *quicConn) idleSince(t time.Time, grace time.Duration) bool {
	qc.mu.Lock()
	defer qc.mu.Unlock()
	return qc.active == 0 && time.Since(t) >= grace && time.Since(qc.lastEnd) >= grace
}

// closeNoError ends the connection the way RFC 9114 §5.2 asks for a
// graceful shutdown: CONNECTION_CLOSE with H3_NO_ERROR.
func (qc *quicConn) closeNoError() {
	_ = qc.conn.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeNoError), "server draining")
}

// drainGrace is how long a draining server lets an idle connection be
// before closing it itself: quic-go has sent GOAWAY and a well-behaved
// client closes on its own, but one that keeps an idle connection open
// would otherwise hold the drain until its deadline. The grace also lets
// the last response's data reach the client before CONNECTION_CLOSE.
const drainGrace = time.Second

// shutdown sends GOAWAY on every connection (quic-go's Shutdown), waits for
// running requests and closes connections idle for drainGrace with
// H3_NO_ERROR; when ctx ends first, everything left is closed the same way.
func (h *h3State) shutdown(ctx context.Context) error {
	start := time.Now()
	h.mu.Lock()
	h.closed = true
	h.altSvc.Store("")
	h.mu.Unlock()
	errc := make(chan error, 1)
	go func() { errc <- h.srv.Shutdown(ctx) }()
	tick := time.NewTicker(drainGrace / 4)
	defer tick.Stop()
	var err error
wait:
	for {
		select {
		case err = <-errc:
			break wait
		case <-tick.C:
			h.mu.Lock()
			var idle []*quicConn
			for qc := range h.conns {
				if qc.idleSince(start, drainGrace) {
					idle = append(idle, qc)
				}
			}
			h.mu.Unlock()
			for _, qc := range idle {
				qc.closeNoError()
			}
		}
	}
	h.finish()
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("http3 drain: %w", err)
	}
	return err
}

// close stops at once (CONNECTION_CLOSE with H3_NO_ERROR to every client).
func (h *h3State) close() {
	h.mu.Lock()
	h.closed = true
	h.altSvc.Store("")
	h.mu.Unlock()
	_ = h.srv.Close()
	h.finish()
}

// finish releases the listener, the QUIC transport and the socket, after
// serve has returned.
func (h *h3State) finish() {
	h.mu.Lock()
	ln, tr, end := h.ln, h.tr, h.serveEnd
	h.mu.Unlock()
	if ln != nil {
		_ = ln.Close()
	}
	if end != nil {
		<-end
	}
	if tr != nil {
		_ = tr.Close()
	}
	h.closeUDP()
}

func (h *h3State) closeUDP() {
	h.udpOnce.Do(func() { _ = h.s.opts.UDPConn.Close() })
}
