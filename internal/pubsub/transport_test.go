package pubsub

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/edgenode/edgenode/internal/transport"
)

// Mounted on the real transport (TLS with a self-signed certificate, its
// limits and wrappers), the way the node does it: a websocket over
// HTTP/1.1 and an SSE stream over HTTP/2 receive a publish; Drain then
// Shutdown end everything.
func TestThroughTransport(t *testing.T) {
	base := runtime.NumGoroutine()
	func() {
		dir := t.TempDir()
		quiet := slog.New(slog.DiscardHandler)
		certFile, keyFile, err := transport.EnsureSelfSigned(dir, nil, quiet)
		if err != nil {
			t.Fatal(err)
		}
		certs, err := transport.NewCertStore([]transport.CertSource{{CertFile: certFile, KeyFile: keyFile}}, quiet)
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		reg := prometheus.NewRegistry()
		srv, err := transport.New(transport.Options{Listener: ln, Certs: certs, App: http.NotFoundHandler(),
			Limits: transport.Limits{MaxHeaderBytes: 16 << 10, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: time.Minute, MaxBodyBytes: 1 << 20}},
			quiet, reg)
		if err != nil {
			t.Fatal(err)
		}
		ps, err := New(testOptions(), nil, nil, reg)
		if err != nil {
			t.Fatal(err)
		}
		for pat, h := range ps.Routes() {
			srv.Handle(pat, h)
		}
		served := make(chan error, 1)
		go func() { served <- srv.Serve() }()
		addr := ln.Addr().String()

		d := websocket.Dialer{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}
		ws, _, err := d.Dial("wss://"+addr+"/ws", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer ws.Close()
		c := &wsClient{t: t, ws: ws}
		c.subscribe("demo/thread-1", "", nil)
		for _, cc := range ps.snapshotConns() {
			// The transport's connection wrapper exposes NetConn, so the
			// websocket is on the poller (TestPollerUnderWrappedConn
			// asserts that; without NetConn it would get a reader
			// goroutine instead).
			t.Logf("websocket on the poller: %v", cc.raw != nil)
		}

		hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, ForceAttemptHTTP2: true}}
		defer hc.CloseIdleConnections()
		resp, err := hc.Get("https://" + addr + "/sse?channel=demo/thread-1")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.ProtoMajor != 2 || resp.Header.Get("Content-Type") != "text/event-stream" {
			t.Fatalf("sse response %s %v", resp.Proto, resp.Header)
		}
		s := &sseClient{t: t, resp: resp, br: bufio.NewReader(resp.Body)}
		s.expect(typeSubscribed)

		if _, err := ps.Publish("demo/thread-1", json.RawMessage(`{"hello":"transport"}`)); err != nil {
			t.Fatal(err)
		}
		if f := c.expect(typeMessage); string(f.Data) != `{"hello":"transport"}` {
			t.Fatalf("ws got %s", f.Data)
		}
		if f, _ := s.expect(typeMessage); string(f.Data) != `{"hello":"transport"}` {
			t.Fatalf("sse got %s", f.Data)
		}
		// Plain GET on /ws: not a websocket.
		if r, err := hc.Get("https://" + addr + "/ws"); err != nil || r.StatusCode != http.StatusUpgradeRequired {
			t.Fatalf("GET /ws: %v %v", err, r)
		} else {
			r.Body.Close()
		}

		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := ps.Drain(ctx); err != nil {
			t.Fatal(err)
		}
		c.expect(typeReconnect)
		s.expect(typeReconnect)
		if err := srv.Shutdown(ctx); err != nil {
			t.Fatal(err)
		}
		if err := <-served; err != nil {
			t.Fatal(err)
		}
		ps.Close()
		if testutil.ToFloat64(ps.met.disconnects.WithLabelValues("drain")) != 2 {
			t.Fatal("drain disconnects not counted")
		}
	}()
	checkGoroutines(t, base)
}

// wrapListener wraps accepted connections the way a limiting listener does
// (internal/transport counts connections per address this way).
type wrapListener struct{ net.Listener }

type wrappedConn struct{ net.Conn }

// NetConn exposes the socket, as the poller needs.
func (c *wrappedConn) NetConn() net.Conn { return c.Conn }

func (l wrapListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &wrappedConn{c}, nil
}

// The poller finds the socket under TLS and wrappers that expose NetConn.
func TestPollerUnderWrappedConn(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("epoll poller is Linux-only")
	}
	ps, err := New(testOptions(), nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ps.Close()
	mux := http.NewServeMux()
	for pat, h := range ps.Routes() {
		mux.Handle(pat, h)
	}
	srv := httptest.NewUnstartedServer(mux)
	srv.Listener = wrapListener{srv.Listener}
	srv.StartTLS()
	defer srv.Close()
	cfg := srv.Client().Transport.(*http.Transport).TLSClientConfig.Clone()
	cfg.NextProtos = nil
	d := websocket.Dialer{TLSClientConfig: cfg}
	ws, _, err := d.Dial(strings.Replace(srv.URL, "https", "wss", 1)+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	c := &wsClient{t: t, ws: ws}
	c.subscribe("demo/thread-1", "", nil)
	for _, cc := range ps.snapshotConns() {
		if cc.raw == nil {
			t.Fatal("websocket not on the poller")
		}
	}
	ps.Publish("demo/thread-1", json.RawMessage(`1`))
	c.expect(typeMessage)
	c.sync()
}
