package pubsub

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
)

// testSecret is the HMAC secret of tenant "demo" in tests.
var testSecret = []byte("0123456789abcdef0123456789abcdef")

func testOptions() Options {
	return Options{
		Tenants: []Tenant{
			{Name: "demo", Secret: testSecret, Public: []string{"thread-*", "open"}},
			{Name: "other", Secret: []byte("other-secret-other-secret-000000"), Public: []string{"*"}},
		},
		PingInterval: 10 * time.Second,
	}
}

// node is one PubSub served over real TLS (public routes) and plain HTTP
// (admin routes), like the node does.
type node struct {
	t     testing.TB
	ps    *PubSub
	reg   *prometheus.Registry
	pub   *httptest.Server
	admin *httptest.Server
	tls   *tls.Config
}

func newNode(t *testing.T, opts Options, mesh Mesh) *node { return newNodeTB(t, opts, mesh) }

func newNodeTB(t testing.TB, opts Options, mesh Mesh) *node {
	t.Helper()
	reg := prometheus.NewRegistry()
	ps, err := New(opts, mesh, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	for pat, h := range ps.Routes() {
		mux.Handle(pat, h)
	}
	pub := httptest.NewUnstartedServer(mux)
	pub.EnableHTTP2 = true
	pub.StartTLS()
	amux := http.NewServeMux()
	for pat, h := range ps.AdminRoutes() {
		amux.Handle(pat, h)
	}
	admin := httptest.NewServer(amux)
	n := &node{t: t, ps: ps, reg: reg, pub: pub, admin: admin}
	n.tls = pub.Client().Transport.(*http.Transport).TLSClientConfig.Clone()
	t.Cleanup(n.close)
	return n
}

func (n *node) close() {
	n.ps.Close()
	n.pub.Close()
	n.admin.Close()
}

func (n *node) wsURL(query string) string {
	u := strings.Replace(n.pub.URL, "https://", "wss://", 1) + "/ws"
	if query != "" {
		u += "?" + query
	}
	return u
}

// dial opens a websocket (HTTP/1.1, as browsers do).
func (n *node) dial(query string, hdr http.Header) (*wsClient, *http.Response, error) {
	cfg := n.tls.Clone()
	cfg.NextProtos = nil
	d := websocket.Dialer{TLSClientConfig: cfg, HandshakeTimeout: 10 * time.Second}
	ws, resp, err := d.Dial(n.wsURL(query), hdr)
	if err != nil {
		return nil, resp, err
	}
	c := &wsClient{t: n.t, ws: ws}
	n.t.Cleanup(func() { ws.Close() })
	return c, resp, nil
}

func (n *node) mustDial() *wsClient {
	n.t.Helper()
	c, _, err := n.dial("", nil)
	if err != nil {
		n.t.Fatal(err)
	}
	return c
}

// publish goes through the admin API.
func (n *node) publish(channel string, data any) Position {
	n.t.Helper()
	b, _ := json.Marshal(map[string]any{"channel": channel, "data": data})
	resp, err := http.Post(n.admin.URL+"/v1/publish", "application/json", bytes.NewReader(b))
	if err != nil {
		n.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		n.t.Fatalf("publish %s: %d %s", channel, resp.StatusCode, body)
	}
	var r publishReply
	if err := json.Unmarshal(body, &r); err != nil {
		n.t.Fatal(err)
	}
	return r.Position
}

// frame is any server frame as a client sees it.
type frame struct {
	Type      string          `json:"type"`
	ID        string          `json:"id"`
	Channel   string          `json:"channel"`
	Position  *Position       `json:"position"`
	Recovered *int            `json:"recovered"`
	Count     *int            `json:"count"`
	Code      string          `json:"code"`
	Reason    string          `json:"reason"`
	Data      json.RawMessage `json:"data"`
}

type wsClient struct {
	t  testing.TB
	ws *websocket.Conn
}

func (c *wsClient) send(v any) {
	c.t.Helper()
	var b []byte
	switch x := v.(type) {
	case string:
		b = []byte(x)
	case []byte:
		b = x
	default:
		b, _ = json.Marshal(v)
	}
	if err := c.ws.WriteMessage(websocket.TextMessage, b); err != nil {
		c.t.Fatal(err)
	}
}

// read returns the next frame; a generous deadline only keeps a broken
// test from hanging.
func (c *wsClient) read() (frame, error) {
	_ = c.ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	typ, b, err := c.ws.ReadMessage()
	if err != nil {
		return frame{}, err
	}
	if typ != websocket.TextMessage {
		return frame{}, fmt.Errorf("message type %d", typ)
	}
	var f frame
	if err := json.Unmarshal(b, &f); err != nil {
		return frame{}, fmt.Errorf("bad frame %q: %w", b, err)
	}
	return f, nil
}

func (c *wsClient) mustRead() frame {
	c.t.Helper()
	f, err := c.read()
	if err != nil {
		c.t.Fatal(err)
	}
	return f
}

// expect reads the next frame and checks its type (and code for errors).
func (c *wsClient) expect(typ string, code ...string) frame {
	c.t.Helper()
	f := c.mustRead()
	if f.Type != typ || len(code) > 0 && f.Code != code[0] {
		c.t.Fatalf("got %+v, want type %q %v", f, typ, code)
	}
	return f
}

func (c *wsClient) subscribe(channel, token string, since *Position) frame {
	c.t.Helper()
	m := map[string]any{"type": "subscribe", "channel": channel}
	if token != "" {
		m["token"] = token
	}
	if since != nil {
		m["since"] = since
	}
	c.send(m)
	return c.expect(typeSubscribed)
}

// ping round-trips a protocol ping: everything sent before it has been
// handled when the pong arrives.
func (c *wsClient) sync() {
	c.t.Helper()
	c.send(`{"type":"ping","id":"sync"}`)
	for {
		f := c.mustRead()
		if f.Type == typePong && f.ID == "sync" {
			return
		}
		c.t.Fatalf("unexpected frame before pong: %+v", f)
	}
}

// expectClose reads until the connection ends and returns the close error.
func (c *wsClient) expectClose() *websocket.CloseError {
	c.t.Helper()
	for {
		_, err := c.read()
		if err == nil {
			continue
		}
		var ce *websocket.CloseError
		if ok := asCloseError(err, &ce); ok {
			return ce
		}
		return nil
	}
}

func asCloseError(err error, target **websocket.CloseError) bool {
	ce, ok := err.(*websocket.CloseError)
	if ok {
		*target = ce
	}
	return ok
}

// sseClient reads an event stream.
type sseClient struct {
	t    testing.TB
	resp *http.Response
	br   *bufio.Reader
}

type sseEvent struct {
	id   string
	data string
}

func (n *node) sse(query string, hdr http.Header) (*sseClient, *http.Response) {
	n.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", n.pub.URL+"/sse?"+query, nil)
	for k, v := range hdr {
		req.Header[k] = v
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: n.tls.Clone(), ForceAttemptHTTP2: true}}
	resp, err := client.Do(req)
	if err != nil {
		cancel()
		n.t.Fatal(err)
	}
	n.t.Cleanup(func() { cancel(); resp.Body.Close(); client.CloseIdleConnections() })
	if resp.StatusCode != 200 {
		return nil, resp
	}
	return &sseClient{t: n.t, resp: resp, br: bufio.NewReader(resp.Body)}, resp
}

// next returns the next event (comments and retry lines skipped).
func (s *sseClient) next() (sseEvent, error) {
	var ev sseEvent
	for {
		line, err := s.br.ReadString('\n')
		if err != nil {
			return ev, err
		}
		line = strings.TrimRight(line, "\n")
		switch {
		case line == "":
			if ev.data != "" {
				return ev, nil
			}
		case strings.HasPrefix(line, "id: "):
			ev.id = line[4:]
		case strings.HasPrefix(line, "data: "):
			ev.data = line[6:]
		}
	}
}

func (s *sseClient) expect(typ string) (frame, sseEvent) {
	s.t.Helper()
	ev, err := s.next()
	if err != nil {
		s.t.Fatal(err)
	}
	var f frame
	if err := json.Unmarshal([]byte(ev.data), &f); err != nil {
		s.t.Fatalf("bad event %q: %v", ev.data, err)
	}
	if f.Type != typ {
		s.t.Fatalf("got %+v, want %q", f, typ)
	}
	return f, ev
}

func token(t *testing.T, tenant, channel string, exp time.Time, secret []byte) string {
	t.Helper()
	tok, err := SignHS256(TokenClaims{Tenant: tenant, Channel: channel, Exp: exp.Unix()}, secret)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// settle bounds waits for state reached in the background (never timing).
const settle = 20 * time.Second

// checkGoroutines fails when goroutines started during the test are still
// there once everything is closed.
func checkGoroutines(t *testing.T, base int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		n := runtime.NumGoroutine()
		if n <= base {
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Fatalf("%d goroutines, baseline %d:\n%s", n, base, buf)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

var _ = url.Values{}
var _ net.Conn
