package transport

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"time"

	"github.com/gorilla/websocket"
)

// AppProxy forwards requests to the application server: X-Forwarded-For,
// -Host and -Proto set, streaming responses flushed as they come, and
// websockets relayed message by message so that a draining node can tell
// each client to reconnect elsewhere (close code 1012, "service restart").
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
			pr.SetXForwarded() // X-Forwarded-For/-Host, and -Proto "https" since the inbound request is TLS
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
	if ip, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		if prior := r.Header.Get("X-Forwarded-For"); prior != "" {
			ip = prior + ", " + ip
		}
		h.Set("X-Forwarded-For", ip)
	}
	h.Set("X-Forwarded-Proto", "https")
	h.Set("X-Forwarded-Host", r.Host)
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
	// Two pumps; when either side ends, the other is closed so its pump
	// ends too. The relay owns both goroutines and waits for them.
	errc := make(chan error, 2)
	go func() { errc <- pump(back, front) }()
	go func() { errc <- pump(front, back) }()
	<-errc
	front.Close()
	back.Close()
	<-errc
}

// pump copies messages from src to dst, including a close frame.
func pump(dst, src *websocket.Conn) error {
	for {
		typ, msg, err := src.ReadMessage()
		if err != nil {
			var ce *websocket.CloseError
			if errors.As(err, &ce) {
				code := ce.Code
				if code == websocket.CloseNoStatusReceived {
					code = websocket.CloseNormalClosure
				}
				_ = dst.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, ce.Text), time.Now().Add(time.Second))
			}
			return err
		}
		if err := dst.WriteMessage(typ, msg); err != nil {
			return err
		}
	}
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
