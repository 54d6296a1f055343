package transport

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"time"

	"github.com/gorilla/websocket"
)

// AppProxy forwards requests to the application server: the forwarding
// headers set by the proxy alone (see setForwarded), streaming responses
// flushed as they come, and websockets relayed message by message, each
// message bounded (Limits.MaxWebsocketMessageBytes), so that a draining
// node can tell each client to reconnect elsewhere (close code 1012,
// "service restart").
type AppProxy struct {
	target *url.URL
	srv    *Server
	log    *slog.Logger
	rp     *httputil.ReverseProxy
	dialer *websocket.Dialer
	up     websocket.Upgrader
}

// NewAppProxy returns a handler forwarding to target. srv is the Server it
// is mounted on (for websocket draining); it may be set later with Attach.
func NewAppProxy(target *url.URL, log *slog.Logger) *AppProxy {
	p := &AppProxy{target: target, log: log}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.MaxIdleConnsPerHost = 256
	transport.ResponseHeaderTimeout = 0 // long polls and streams are the app's business
	p.rp = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			setForwarded(pr.Out.Header, pr.In)
			pr.Out.Host = pr.In.Host
		},
		Transport:     transport,
		FlushInterval: -1, // flush after every write: comment streams must not sit in a buffer
		ErrorHandler:  p.proxyError,
		ErrorLog:      nil,
	}
	p.dialer = &websocket.Dialer{HandshakeTimeout: 10 * time.Second, Proxy: nil}
	p.up = websocket.Upgrader{
		HandshakeTimeout: 10 * time.Second,
		// The app server decides about origins: it sees the Origin header
		// in the handshake we forward and refuses if it wants to.
		CheckOrigin: func(*http.Request) bool { return true },
	}
	return p
}

// Attach connects the proxy to the server it is mounted on.
func (p *AppProxy) Attach(s *Server) { p.srv = s }

func (p *AppProxy) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		http.Error(w, "request body too large", http.StatusRequestEntityTooLarge)
	case errors.Is(err, context.Canceled):
		// The client went away; nobody is left to answer.
		w.WriteHeader(499)
	default:
		p.log.Warn("app server unreachable", "url", r.URL.String(), "err", err)
		http.Error(w, "app server unavailable", http.StatusBadGateway)
	}
}

func (p *AppProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if websocket.IsWebSocketUpgrade(r) {
		p.relayWebsocket(w, r)
		return
	}
	p.rp.ServeHTTP(w, r)
}

// hop-by-hop and handshake headers the dialer sets itself.
var wsSkipHeaders = map[string]bool{
	"Upgrade": true, "Connection": true, "Sec-Websocket-Key": true, "Sec-Websocket-Version": true,
	"Sec-Websocket-Extensions": true, "Sec-Websocket-Protocol": true, "Host": true,
}

func (p *AppProxy) relayWebsocket(w http.ResponseWriter, r *http.Request) {
	u := *p.target
	u.Scheme = strings.Replace(strings.Replace(u.Scheme, "https", "wss", 1), "http", "ws", 1)
	u.Path = singleJoin(u.Path, r.URL.Path)
	u.RawQuery = r.URL.RawQuery
	h := http.Header{}
	for k, vs := range r.Header {
		if !wsSkipHeaders[k] {
			h[k] = vs
		}
	}
	setForwarded(h, r)
	d := *p.dialer
	d.Subprotocols = websocket.Subprotocols(r)
	back, resp, err := d.DialContext(r.Context(), u.String(), h)
	if err != nil {
		if resp != nil {
			// The app refused the handshake: pass its answer on.
			p.log.Debug("app server refused websocket", "status", resp.StatusCode)
			http.Error(w, resp.Status, resp.StatusCode)
			return
		}
		p.log.Warn("app server websocket unreachable", "url", u.String(), "err", err)
		http.Error(w, "app server unavailable", http.StatusBadGateway)
		return
	}
	var respHdr http.Header
	if proto := back.Subprotocol(); proto != "" {
		respHdr = http.Header{"Sec-Websocket-Protocol": {proto}}
	}
	up := p.up
	up.Subprotocols = nil
	front, err := up.Upgrade(w, r, respHdr)
	if err != nil {
		back.Close()
		return // Upgrade has answered the client
	}
	done, ok := func() (func(), bool) {
		if p.srv == nil {
			return func() {}, true
		}
		return p.srv.TrackHijacked(func() {
			// Ask the browser to reconnect (it will resolve to a live node);
			// tell the app this end is going away.
			deadline := time.Now().Add(time.Second)
			_ = front.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseServiceRestart, "node draining, reconnect"), deadline)
			_ = back.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseGoingAway, "proxy draining"), deadline)
			// Give both sides a moment for their close frames, then cut.
			time.AfterFunc(2*time.Second, func() { front.Close(); back.Close() })
		})
	}()
	if !ok {
		_ = front.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseServiceRestart, "node draining, reconnect"), time.Now().Add(time.Second))
		front.Close()
		back.Close()
		return
	}
	defer done()
	if p.srv != nil {
		p.srv.metrics.websockets.Inc()
		defer p.srv.metrics.websockets.Dec()
	}
	// Each pump holds one whole message in memory: both reads are bounded.
	// Past the limit gorilla/websocket answers the sender with close 1009
	// (message too big) before reading the message, so nothing of it is
	// relayed.
	limit := p.messageLimit()
	front.SetReadLimit(limit)
	back.SetReadLimit(limit)
	// Two pumps; when either side ends, the other is closed so its pump
	// ends too. The relay owns both goroutines and waits for them.
	type result struct {
		fromClient bool
		err        error
	}
	resc := make(chan result, 2)
	// Client to app: after an oversized client message the app is told the
	// client is going away. App to client: an app that sends too much is a
	// server-side failure to the client.
	go func() { resc <- result{true, pump(back, front, websocket.CloseGoingAway)} }()
	go func() { resc <- result{false, pump(front, back, websocket.CloseInternalServerErr)} }()
	res := <-resc
	back.Close()
	if res.fromClient && errors.Is(res.err, websocket.ErrReadLimit) {
		lingerClose(front.NetConn())
	}
	front.Close()
	<-resc
}

// messageLimit is the largest websocket message relayed.
func (p *AppProxy) messageLimit() int64 {
	if p.srv != nil {
		if n := p.srv.lim.Load().MaxWebsocketMessageBytes; n > 0 {
			return n
		}
	}
	return DefaultMaxWebsocketMessageBytes
}

// lingerTime bounds how long a client that was sent a close frame in the
// middle of its message may keep sending before the connection is cut.
const lingerTime = time.Second

// lingerClose reads and discards what the client still sends (the rest of
// an oversized message, then its close frame) for a moment: closing a
// socket with unread data resets the connection, and a reset can make the
// client lose the close frame that tells it why.
func lingerClose(nc net.Conn) {
	_ = nc.SetReadDeadline(time.Now().Add(lingerTime))
	_, _ = io.Copy(io.Discard, nc)
}

// pump copies messages from src to dst, including a close frame. When src
// sends a message over its read limit (gorilla/websocket has then sent src
// close 1009), dst is closed with overCode.
func pump(dst, src *websocket.Conn, overCode int) error {
	for {
		typ, msg, err := src.ReadMessage()
		if err != nil {
			var ce *websocket.CloseError
			switch {
			case errors.As(err, &ce):
				code := ce.Code
				if code == websocket.CloseNoStatusReceived {
					code = websocket.CloseNormalClosure
				}
				_ = dst.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, ce.Text), time.Now().Add(time.Second))
			case errors.Is(err, websocket.ErrReadLimit):
				_ = dst.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(overCode, "peer message over the relay's size limit"), time.Now().Add(time.Second))
			}
			return err
		}
		if err := dst.WriteMessage(typ, msg); err != nil {
			return err
		}
	}
}

// Client-address headers. Whatever a client sends under these names is its
// own claim (this node is the edge: nothing in front of it vouches for
// anything), so the proxy removes them all and sets the standard ones
// itself, to the TCP peer's address.
var clientAddrHeaders = []string{
	"Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "X-Forwarded-Port",
	"X-Forwarded-Server", "X-Real-Ip", "X-Client-Ip", "True-Client-Ip", "Cf-Connecting-Ip",
	"Fastly-Client-Ip", "X-Cluster-Client-Ip", "X-Original-Forwarded-For",
}

// setForwarded replaces the client-address headers of h, the outbound
// request of r: X-Forwarded-For and X-Real-IP are the peer's address,
// X-Forwarded-Host and -Proto the request's host and "https" (every
// listener of the node is TLS), and Forwarded (RFC 7239) says the same.
func setForwarded(h http.Header, r *http.Request) {
	for _, k := range clientAddrHeaders {
		delete(h, k)
	}
	ip, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		ip = ""
	}
	fwd := ""
	if ip != "" {
		h["X-Forwarded-For"] = []string{ip}
		h["X-Real-Ip"] = []string{ip}
		if strings.Contains(ip, ":") {
			fwd = `for="[` + ip + `]";`
		} else {
			fwd = "for=" + ip + ";"
		}
	}
	if r.Host != "" {
		h["X-Forwarded-Host"] = []string{r.Host}
		fwd += "host=" + quoteForwarded(r.Host) + ";"
	}
	h["X-Forwarded-Proto"] = []string{"https"}
	h["Forwarded"] = []string{fwd + "proto=https"}
}

// quoteForwarded is s as an RFC 7239 value: a quoted-string unless it is a
// token (a host with a port is not).
func quoteForwarded(s string) string {
	token := true
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			token = false
			break
		}
	}
	if token {
		return s
	}
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		if c := s[i]; c == '"' || c == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(s[i])
	}
	b.WriteByte('"')
	return b.String()
}

func singleJoin(a, b string) string {
	switch {
	case strings.HasSuffix(a, "/") && strings.HasPrefix(b, "/"):
		return a + b[1:]
	case !strings.HasSuffix(a, "/") && !strings.HasPrefix(b, "/"):
		return a + "/" + b
	}
	return a + b
}
