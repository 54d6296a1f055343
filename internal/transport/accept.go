package transport

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"time"
)

// acceptLoop accepts TCP connections (within the per-address limits) and
// gives each a goroutine for its TLS handshake. It returns nil once the
// server is closing, or the listener's error.
func (s *Server) acceptLoop() error {
	var delay time.Duration
	for {
		c, err := s.ln.Accept()
		if err != nil {
			if s.closing.Load() {
				return nil
			}
			if transientAccept(err) {
				// Out of descriptors or memory for a moment: back off as
				// net/http does, rather than spin or give up.
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				s.log.Warn("https accept", "err", err, "retry_in", delay)
				time.Sleep(delay)
				continue
			}
			return err
		}
		delay = 0
		s.fastConns.Add(1)
		go s.serveConn(c)
	}
}

func transientAccept(err error) bool {
	for _, e := range []error{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// serveConn does the TLS handshake within ReadHeaderTimeout (as net/http
// did) and dispatches on the protocol chosen by ALPN: HTTP/2 to net/http,
// HTTP/1.1 to the fast path, a TLS-ALPN-01 validator to nothing (the
// handshake was all it wanted). The goroutine running it is counted in
// fastConns until the connection is closed or handed to net/http.
func (s *Server) serveConn(c net.Conn) {
	defer s.fastConns.Done()
	if !s.track(c, true) {
		_ = c.Close()
		return
	}
	tc := tls.Server(c, s.tlsConf)
	_ = tc.SetDeadline(time.Now().Add(s.opts.Limits.ReadHeaderTimeout))
	err := tc.Handshake()
	s.track(c, false)
	if err != nil {
		s.handshakeFailed(c, err)
		_ = tc.Close()
		return
	}
	_ = tc.SetDeadline(time.Time{})
	cs := tc.ConnectionState()
	s.metrics.handshakes.WithLabelValues(tls.VersionName(cs.Version), "ok").Inc()
	if cs.DidResume {
		s.metrics.resumed.WithLabelValues("tcp").Inc()
	}
	switch cs.NegotiatedProtocol {
	case acmeTLS1:
		_ = tc.Close()
		return
	case "h2":
		if s.h2 != nil {
			s.h2.ServeConn(&h2Conn{Conn: tc, cc: c.(*countedConn)}, &cs)
			return
		}
		if !s.httpLn.push(tc) {
			_ = tc.Close()
		}
		return
	}
	h := &h1conn{s: s, tc: tc, cc: c.(*countedConn), buf: make([]byte, readBufSize)}
	s.fastMu.Lock()
	if s.closing.Load() {
		s.fastMu.Unlock()
		_ = tc.Close()
		return
	}
	s.h1conns[h] = struct{}{}
	s.fastMu.Unlock()
	h.serve()
}

// handshakeFailed counts and logs a failed handshake. A plain HTTP request
// on the TLS port gets the same short answer net/http gives it.
func (s *Server) handshakeFailed(c net.Conn, err error) {
	s.metrics.handshakes.WithLabelValues("unknown", "error").Inc()
	if errors.Is(err, os.ErrDeadlineExceeded) {
		s.metrics.limitHits.WithLabelValues("read_header_timeout").Inc()
	}
	var re tls.RecordHeaderError
	if errors.As(err, &re) && re.Conn != nil && looksLikeHTTP(re.RecordHeader) {
		_ = re.Conn.SetWriteDeadline(time.Now().Add(time.Second))
		_, _ = io.WriteString(re.Conn, "HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n")
	}
	s.log.Debug("http server", "msg", "TLS handshake error", "remote", c.RemoteAddr().String(), "err", err)
}

func looksLikeHTTP(hdr [5]byte) bool {
	switch string(hdr[:]) {
	case "GET /", "HEAD ", "POST ", "PUT /", "OPTIO":
		return true
	}
	return false
}

// track adds a connection to, or removes it from, the set of handshakes
// in progress, which Shutdown closes: a handshake stalled by its client
// must not hold a shutdown for ReadHeaderTimeout. Adding fails once the
// server is closing.
func (s *Server) track(c net.Conn, add bool) bool {
	s.fastMu.Lock()
	defer s.fastMu.Unlock()
	if !add {
		delete(s.handshaking, c)
		return true
	}
	if s.closing.Load() {
		return false
	}
	s.handshaking[c] = struct{}{}
	return true
}

// closeFast closes every connection the fast path holds (Shutdown past its
// deadline, or a failed Serve).
func (s *Server) closeFast() {
	s.fastMu.Lock()
	conns := make([]*h1conn, 0, len(s.h1conns))
	for h := range s.h1conns {
		conns = append(conns, h)
	}
	s.closeHandshakesLocked()
	s.fastMu.Unlock()
	for _, h := range conns {
		h.close()
	}
	if s.h2 != nil {
		s.h2.Close()
	}
}

// closeHandshakesLocked ends the handshakes in progress (their goroutines
// then count a failed handshake and return). Called with fastMu held.
func (s *Server) closeHandshakesLocked() {
	for c := range s.handshaking {
		_ = c.Close()
	}
}

// h2Conn is an HTTP/2 connection as the h2 server gets it: its writes can
// be corked (h2.Corker), so the TLS records of one batch of frames leave
// in one system call.
type h2Conn struct {
	*tls.Conn
	cc *countedConn
}

func (c *h2Conn) Cork()         { c.cc.cork() }
func (c *h2Conn) Uncork() error { return c.cc.uncork() }
