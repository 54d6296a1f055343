package transport_test

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/edgenode/edgenode/internal/testkit"
	"github.com/edgenode/edgenode/internal/transport"
)

// wsApp is a real app server behind the node: it upgrades websockets,
// records the handshake headers and every message it receives, and echoes
// them.
type wsApp struct {
	srv *httptest.Server

	mu       sync.Mutex
	headers  []http.Header // one per request (websocket or not)
	remote   []string
	received [][]byte
	ended    chan struct{} // closed when the first websocket handler returns
	endOnce  sync.Once
}

func newWSApp(t *testing.T) *wsApp {
	a := &wsApp{ended: make(chan struct{})}
	up := websocket.Upgrader{CheckOrigin: func(*http.Request) bool { return true }}
	a.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		a.headers = append(a.headers, r.Header.Clone())
		a.remote = append(a.remote, r.RemoteAddr)
		a.mu.Unlock()
		if !websocket.IsWebSocketUpgrade(r) {
			fmt.Fprint(w, "plain")
			return
		}
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer a.endOnce.Do(func() { close(a.ended) })
		defer ws.Close()
		for {
			typ, msg, err := ws.ReadMessage()
			if err != nil {
				return
			}
			a.mu.Lock()
			a.received = append(a.received, msg)
			a.mu.Unlock()
			if string(msg) == "send me 8KiB" {
				msg = bytes.Repeat([]byte("B"), 8<<10)
			}
			if err := ws.WriteMessage(typ, msg); err != nil {
				return
			}
		}
	}))
	t.Cleanup(a.srv.Close)
	return a
}

func startProxied(t *testing.T, app *wsApp, modify func(*transport.Options)) *testServer {
	t.Helper()
	u, err := url.Parse(app.srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	proxy := transport.NewAppProxy(u, quietLog())
	ts := startServer(t, false, proxy, modify, nil)
	proxy.Attach(ts.srv)
	return ts
}

func wsDial(t *testing.T, ts *testServer, hdr http.Header) *websocket.Conn {
	t.Helper()
	conf := insecureTLS()
	conf.NextProtos = nil
	d := websocket.Dialer{TLSClientConfig: conf, HandshakeTimeout: 10 * time.Second}
	ws, _, err := d.Dial("wss://"+ts.addr+"/chat", hdr)
	if err != nil {
		t.Fatalf("websocket through the node: %v", err)
	}
	t.Cleanup(func() { ws.Close() })
	return ws
}

// TestAppWebsocketOversizedMessage plays a client that sends the app a
// websocket message larger than the relay's limit (the default, 1 MiB): it
// gets close 1009 (message too big) and the app never receives the message.
func TestAppWebsocketOversizedMessage(t *testing.T) {
	app := newWSApp(t)
	ts := startProxied(t, app, nil)
	ws := wsDial(t, ts, nil)
	_ = ws.SetReadDeadline(time.Now().Add(30 * time.Second))

	// A normal message goes through (positive signal that the relay works).
	if err := ws.WriteMessage(websocket.TextMessage, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	if _, msg, err := ws.ReadMessage(); err != nil || string(msg) != "hello" {
		t.Fatalf("echo: %q %v", msg, err)
	}

	big := bytes.Repeat([]byte("A"), 2<<20)
	// The relay may close while the message is still being written.
	_ = ws.WriteMessage(websocket.BinaryMessage, big)
	var code int
	for {
		_, msg, err := ws.ReadMessage()
		if err == nil {
			if len(msg) == len(big) {
				t.Errorf("the oversized message came back: the app received and echoed it")
			}
			continue
		}
		var ce *websocket.CloseError
		if errors.As(err, &ce) {
			code = ce.Code
		} else {
			t.Logf("read ended without a close frame: %v", err)
		}
		break
	}
	if code != websocket.CloseMessageTooBig {
		t.Errorf("close code %d, want %d (message too big)", code, websocket.CloseMessageTooBig)
	}
	// The app's side of the relay ends too; then what it received is final.
	select {
	case <-app.ended:
	case <-time.After(30 * time.Second):
		t.Fatal("the app's websocket did not end")
	}
	app.mu.Lock()
	defer app.mu.Unlock()
	for _, m := range app.received {
		if len(m) > 1<<20 {
			t.Errorf("the app received a %d-byte message", len(m))
		}
	}
	if len(app.received) != 1 {
		t.Errorf("the app received %d messages, want 1 (hello)", len(app.received))
	}
}

// TestAppWebsocketMessageLimitConfigured: with a 4 KiB limit, a 4 KiB
// message is relayed both ways, a larger one from the client ends its
// websocket with 1009, and a larger one from the app ends the client's
// with 1011 (the server side failed).
func TestAppWebsocketMessageLimitConfigured(t *testing.T) {
	app := newWSApp(t)
	ts := startProxied(t, app, func(o *transport.Options) { o.Limits.MaxWebsocketMessageBytes = 4 << 10 })
	closeCode := func(ws *websocket.Conn) int {
		t.Helper()
		for {
			_, _, err := ws.ReadMessage()
			var ce *websocket.CloseError
			if errors.As(err, &ce) {
				return ce.Code
			}
			if err != nil {
				t.Fatalf("read ended without a close frame: %v", err)
			}
		}
	}

	ws := wsDial(t, ts, nil)
	_ = ws.SetReadDeadline(time.Now().Add(30 * time.Second))
	exact := bytes.Repeat([]byte("A"), 4<<10)
	if err := ws.WriteMessage(websocket.BinaryMessage, exact); err != nil {
		t.Fatal(err)
	}
	if _, msg, err := ws.ReadMessage(); err != nil || len(msg) != len(exact) {
		t.Fatalf("4 KiB echo: %d bytes, %v", len(msg), err)
	}
	_ = ws.WriteMessage(websocket.BinaryMessage, append(exact, 'A'))
	if code := closeCode(ws); code != websocket.CloseMessageTooBig {
		t.Errorf("client over the limit: close %d, want 1009", code)
	}

	ws = wsDial(t, ts, nil)
	_ = ws.SetReadDeadline(time.Now().Add(30 * time.Second))
	if err := ws.WriteMessage(websocket.TextMessage, []byte("send me 8KiB")); err != nil {
		t.Fatal(err)
	}
	if code := closeCode(ws); code != websocket.CloseInternalServerErr {
		t.Errorf("app over the limit: close %d, want 1011", code)
	}
}

// forged are client-supplied forwarding headers naming an address that is
// not the client's.
var forged = http.Header{
	"X-Forwarded-For": {"203.0.113.66"},
	"Forwarded":       {"for=203.0.113.66;proto=https"},
	"X-Real-Ip":       {"203.0.113.66"},
}

// checkForwarding fails when the app saw the forged address anywhere, or
// when X-Forwarded-For, X-Real-IP and Forwarded do not name the real peer.
func checkForwarding(t *testing.T, h http.Header) {
	t.Helper()
	for k, vs := range h {
		for _, v := range vs {
			if strings.Contains(v, "203.0.113.66") {
				t.Errorf("the app sees the forged address: %s: %s", k, v)
			}
		}
	}
	if got := h.Values("X-Forwarded-For"); len(got) != 1 || got[0] != "127.0.0.1" {
		t.Errorf("X-Forwarded-For %q, want the peer's address only (127.0.0.1)", got)
	}
	if got := h.Values("X-Real-Ip"); len(got) != 1 || got[0] != "127.0.0.1" {
		t.Errorf("X-Real-IP %q, want the peer's address (127.0.0.1)", got)
	}
	if got := h.Values("Forwarded"); len(got) != 1 || !strings.HasPrefix(got[0], "for=127.0.0.1;") {
		t.Errorf("Forwarded %q, want for=127.0.0.1;...", got)
	}
}

// TestAppWebsocketForgedForwardedHeaders plays a client that claims another
// address in X-Forwarded-For, Forwarded and X-Real-IP on a websocket
// upgrade: the app server sees only the real peer's address.
func TestAppWebsocketForgedForwardedHeaders(t *testing.T) {
	app := newWSApp(t)
	ts := startProxied(t, app, nil)
	ws := wsDial(t, ts, forged)
	if err := ws.WriteMessage(websocket.TextMessage, []byte("hi")); err != nil {
		t.Fatal(err)
	}
	_ = ws.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, _, err := ws.ReadMessage(); err != nil {
		t.Fatal(err)
	}
	app.mu.Lock()
	defer app.mu.Unlock()
	if len(app.headers) != 1 {
		t.Fatalf("%d requests reached the app", len(app.headers))
	}
	checkForwarding(t, app.headers[0])
}

// TestAppForgedForwardedHeaders: the same forged headers on a plain request.
func TestAppForgedForwardedHeaders(t *testing.T) {
	app := newWSApp(t)
	ts := startProxied(t, app, nil)
	c := h1Client()
	defer c.CloseIdleConnections()
	if a, _ := do(t, c, "GET", "https://"+ts.addr+"/page", nil, forged); a.status != 200 {
		t.Fatalf("status %d", a.status)
	}
	app.mu.Lock()
	defer app.mu.Unlock()
	if len(app.headers) != 1 {
		t.Fatalf("%d requests reached the app", len(app.headers))
	}
	checkForwarding(t, app.headers[0])
}

// countingConn counts the bytes the server sent.
type countingConn struct {
	net.Conn
	mu   sync.Mutex
	read int
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	c.read += n
	c.mu.Unlock()
	return n, err
}

func (c *countingConn) bytesRead() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.read
}

func handshakeTotal(t *testing.T, ts *testServer) float64 {
	t.Helper()
	m := ts.srv.Metrics()
	return testkit.Sum(t, m.Handshakes, "result", "ok") + testkit.Sum(t, m.Handshakes, "result", "error")
}

// TestConnsPerIPRefusedBeforeHandshake plays a client over its per-address
// connection limit: the extra connection is closed before the server says
// anything (no ServerHello, so no handshake is spent on it), the limit hit
// is counted and the handshake count does not move.
func TestConnsPerIPRefusedBeforeHandshake(t *testing.T) {
	ts := startServer(t, false, echoApp(), func(o *transport.Options) { o.Limits.MaxConnsPerIP = 2 }, nil)
	c := h1Client()
	defer c.CloseIdleConnections()
	// Two kept-alive connections: the address is at its limit.
	var held []*tls.Conn
	for range 2 {
		conf := insecureTLS()
		conf.NextProtos = []string{"http/1.1"}
		tc, err := tls.Dial("tcp", ts.addr, conf)
		if err != nil {
			t.Fatal(err)
		}
		defer tc.Close()
		fmt.Fprintf(tc, "GET / HTTP/1.1\r\nHost: example.test\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("connection within the limit: %v %v", resp, err)
		}
		resp.Body.Close()
		held = append(held, tc)
	}
	connsPerIP := ts.srv.Metrics().LimitHits.WithLabelValues("conns_per_ip")
	hits := testutil.ToFloat64(connsPerIP)
	shakes := handshakeTotal(t, ts)

	for i := range 3 {
		raw, err := net.Dial("tcp", ts.addr)
		if err != nil {
			// On loopback the reset can beat connect(2)'s return.
			if !errors.Is(err, syscall.ECONNRESET) {
				t.Fatal(err)
			}
			continue
		}
		cc := &countingConn{Conn: raw}
		tc := tls.Client(cc, insecureTLS())
		_ = tc.SetDeadline(time.Now().Add(30 * time.Second))
		err = tc.Handshake()
		if err == nil {
			t.Errorf("connection %d over the limit: the TLS handshake completed", i)
			fmt.Fprintf(tc, "GET / HTTP/1.1\r\nHost: example.test\r\n\r\n")
			_, _ = io.Copy(io.Discard, tc)
		}
		if n := cc.bytesRead(); n > 0 {
			t.Errorf("connection %d over the limit: the server sent %d bytes (a ServerHello); want none", i, n)
		}
		tc.Close()
	}
	want := hits + 3
	testkit.WaitFor(t, 20*time.Second, "3 more conns_per_ip limit hits", func() bool { return testutil.ToFloat64(connsPerIP) >= want })
	if got := testutil.ToFloat64(connsPerIP); got != want {
		t.Errorf("conns_per_ip hits %v, want %v", got, want)
	}
	if got := handshakeTotal(t, ts); got != shakes {
		t.Errorf("handshakes counted %v, want %v (unchanged)", got, shakes)
	}
	// The held connections still work; once one closes, a new one is let in.
	held[0].Close()
	testkit.WaitFor(t, 20*time.Second, "a connection admitted after one of the held ones closed", func() bool {
		a, err := tryGet(c, "https://"+ts.addr+"/")
		return err == nil && a == 200
	})
}

func tryGet(c *http.Client, u string) (int, error) {
	resp, err := c.Get(u)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, nil
}
