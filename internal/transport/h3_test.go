package transport_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/edgenode/edgenode/internal/pubsub"
	"github.com/edgenode/edgenode/internal/testkit"
	"github.com/edgenode/edgenode/internal/transport"
)

// echoApp answers like an app server would, with everything a test may
// compare across protocols (but not the protocol itself).
func echoApp() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			return // the limit already answered
		}
		w.Header().Set("X-App", "yes")
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprintf(w, "%s %s host=%s q=%s len=%d sum=%x", r.Method, r.URL.Path, r.Host, r.URL.RawQuery, len(body), bytes.Count(body, []byte("a")))
	})
}

type answer struct {
	status int
	body   string
	app    string
	altSvc string
}

func do(t *testing.T, c *http.Client, method, url string, body []byte, hdr http.Header) (answer, *http.Response) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	for k, vs := range hdr {
		req.Header[k] = vs
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	b := readAll(t, resp)
	return answer{status: resp.StatusCode, body: b, app: resp.Header.Get("X-App"), altSvc: resp.Header.Get("Alt-Svc")}, resp
}

func TestHTTP3SameAnswersAsHTTP2(t *testing.T) {
	ts := startServer(t, true, echoApp(), nil, func(s *transport.Server) {
		s.Handle("GET /route/{name}", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "route %s", r.PathValue("name"))
		}))
	})
	h2 := h2Client()
	defer h2.CloseIdleConnections()
	h3, h3tr := h3Client()
	defer h3tr.Close()
	base := "https://" + ts.addr
	big := strings.Repeat("a", 100<<10) // over MaxBodyBytes (64 KiB)
	cases := []struct {
		name, method, path string
		body               []byte
		hdr                http.Header
	}{
		{"route", "GET", "/route/abc", nil, nil},
		{"app", "GET", "/some/page?x=1&y=2", nil, nil},
		{"app post", "POST", "/form", []byte(strings.Repeat("a", 1000)), nil},
		{"no route 405", "POST", "/route/abc", nil, nil}, // method not allowed on the route, ServeMux answers
		{"body too large", "POST", "/upload", []byte(big), nil},
		{"header too large", "GET", "/", nil, http.Header{"X-Big": {strings.Repeat("b", 9<<10)}}},
	}
	for _, c := range cases {
		a2, r2 := do(t, h2, c.method, base+c.path, c.body, c.hdr)
		a3, r3 := do(t, h3, c.method, base+c.path, c.body, c.hdr)
		if r2.ProtoMajor != 2 || r3.ProtoMajor != 3 {
			t.Fatalf("%s: protocols %s and %s", c.name, r2.Proto, r3.Proto)
		}
		if a2.status != a3.status || a2.body != a3.body || a2.app != a3.app {
			t.Errorf("%s: h2 %d %q (app %q), h3 %d %q (app %q)", c.name, a2.status, a2.body, a2.app, a3.status, a3.body, a3.app)
		}
		port := ts.addr[strings.LastIndex(ts.addr, ":")+1:]
		if !strings.HasPrefix(a2.altSvc, `h3=":`+port+`"`) {
			t.Errorf("%s: h2 Alt-Svc %q", c.name, a2.altSvc)
		}
		if a3.altSvc != "" {
			t.Errorf("%s: h3 response advertises Alt-Svc %q", c.name, a3.altSvc)
		}
	}
	// HTTP/1.1 also carries Alt-Svc.
	h1 := h1Client()
	defer h1.CloseIdleConnections()
	a1, r1 := do(t, h1, "GET", base+"/route/x", nil, nil)
	if r1.ProtoMajor != 1 || !strings.HasPrefix(a1.altSvc, `h3=":`) || a1.body != "route x" {
		t.Errorf("h1: %s %+v", r1.Proto, a1)
	}
	// Metrics by protocol.
	for proto, want := range map[string]float64{"1.1": 1, "2": float64(len(cases)), "3": float64(len(cases))} {
		got := testkit.Sum(t, ts.srv.Metrics().Requests, "proto", proto)
		if got != want {
			t.Errorf("requests over %s: %v, want %v", proto, got, want)
		}
	}
}

// TestStreamingOverAllProtocols: a handler that flushes is seen chunk by
// chunk over HTTP/1.1, HTTP/2 and HTTP/3 (the second chunk is only written
// after the client has read the first).
func TestStreamingOverAllProtocols(t *testing.T) {
	next := make(chan struct{})
	ts := startServer(t, true, echoApp(), nil, func(s *transport.Server) {
		s.Handle("GET /stream", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/event-stream")
			fmt.Fprint(w, "data: one\n\n")
			if err := http.NewResponseController(w).Flush(); err != nil {
				t.Errorf("flush over %s: %v", r.Proto, err)
				return
			}
			select {
			case <-next:
			case <-r.Context().Done():
				return
			}
			fmt.Fprint(w, "data: two\n\n")
		}))
	})
	h3, h3tr := h3Client()
	defer h3tr.Close()
	for name, c := range map[string]*http.Client{"h1": h1Client(), "h2": h2Client(), "h3": h3} {
		resp, err := c.Get("https://" + ts.addr + "/stream")
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		br := bufio.NewReader(resp.Body)
		line, err := br.ReadString('\n')
		if err != nil || line != "data: one\n" {
			t.Fatalf("%s: first event %q %v", name, line, err)
		}
		next <- struct{}{}
		rest, _ := io.ReadAll(br)
		resp.Body.Close()
		if string(rest) != "\ndata: two\n\n" {
			t.Errorf("%s: rest %q", name, rest)
		}
	}
}

// TestHTTP3DrainClosesWithNoError: an in-flight request finishes during
// Shutdown, new requests are refused, and the connection ends with
// H3_NO_ERROR; Shutdown does not wait for the deadline.
func TestHTTP3DrainClosesWithNoError(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{})
	ts := startServer(t, true, echoApp(), nil, func(s *transport.Server) {
		s.Handle("GET /slow", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			close(started)
			<-release
			fmt.Fprint(w, "done")
		}))
	})
	ctx := context.Background()
	conn, err := quic.DialAddr(ctx, ts.addr, http3.ConfigureTLSConfig(insecureTLS()), nil)
	if err != nil {
		t.Fatal(err)
	}
	tr := &http3.Transport{}
	cc := tr.NewClientConn(conn)
	// A second connection from a client that ignores GOAWAY (plain QUIC
	// with the h3 ALPN, no HTTP/3 client behind it): the server must close
	// it itself.
	idle, err := quic.DialAddr(ctx, ts.addr, http3.ConfigureTLSConfig(insecureTLS()), nil)
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("GET", "https://"+ts.addr+"/route-none", nil)
	if resp, err := cc.RoundTrip(req); err != nil {
		t.Fatal(err)
	} else {
		readAll(t, resp)
	}

	got := make(chan string, 1)
	go func() {
		req, _ := http.NewRequest("GET", "https://"+ts.addr+"/slow", nil)
		resp, err := cc.RoundTrip(req)
		if err != nil {
			got <- "error: " + err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		got <- string(b)
	}()
	<-started
	// Both connections must be in the server's hands before the drain: a
	// handshake that completes as the drain begins is never accepted, and
	// the transport closes it only once the drain is over (on a busy
	// machine the server's accept can lag the client's dial).
	testkit.WaitFor(t, 10*time.Second, "the server to hold 2 QUIC connections", func() bool {
		return testutil.ToFloat64(ts.srv.Metrics().QUICOpen) >= 2
	})
	shutdownDone := make(chan error, 1)
	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	go func() { shutdownDone <- ts.srv.Shutdown(sctx) }()

	// The idle connection is closed by the server with H3_NO_ERROR.
	<-idle.Context().Done()
	assertNoErrorClose(t, "idle", context.Cause(idle.Context()))
	var appErr *quic.ApplicationError
	if errors.As(context.Cause(idle.Context()), &appErr) && !appErr.Remote {
		t.Error("the idle connection was closed by the client, not the server")
	}

	close(release)
	if g := <-got; g != "done" {
		t.Fatalf("in-flight request: %q", g)
	}
	if err := <-shutdownDone; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	<-conn.Context().Done()
	assertNoErrorClose(t, "busy", context.Cause(conn.Context()))
	if sctx.Err() != nil {
		t.Error("Shutdown ran into its deadline")
	}
}

func assertNoErrorClose(t *testing.T, name string, cause error) {
	t.Helper()
	var appErr *quic.ApplicationError
	if !errors.As(cause, &appErr) || appErr.ErrorCode != quic.ApplicationErrorCode(http3.ErrCodeNoError) {
		t.Errorf("%s connection ended with %v, want H3_NO_ERROR", name, cause)
	}
}

// TestHTTP3DrainDeadline: a request that never ends is cut when the drain
// deadline passes, with H3_NO_ERROR, and Shutdown reports the deadline.
func TestHTTP3DrainDeadline(t *testing.T) {
	started := make(chan struct{})
	ts := startServer(t, true, echoApp(), nil, func(s *transport.Server) {
		s.Handle("GET /forever", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(200)
			http.NewResponseController(w).Flush()
			close(started)
			<-r.Context().Done()
		}))
	})
	conn, err := quic.DialAddr(context.Background(), ts.addr, http3.ConfigureTLSConfig(insecureTLS()), nil)
	if err != nil {
		t.Fatal(err)
	}
	cc := (&http3.Transport{}).NewClientConn(conn)
	req, _ := http.NewRequest("GET", "https://"+ts.addr+"/forever", nil)
	resp, err := cc.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	<-started
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := ts.srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown: %v, want deadline exceeded", err)
	}
	<-conn.Context().Done()
	assertNoErrorClose(t, "streaming", context.Cause(conn.Context()))
}

// TestExtendedConnectRefused: websockets over HTTP/3 (RFC 9220) are not
// offered; an extended CONNECT gets 501 and never reaches the app server.
func TestExtendedConnectRefused(t *testing.T) {
	reached := false
	ts := startServer(t, true, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { reached = true }), nil, nil)
	conn, err := quic.DialAddr(context.Background(), ts.addr, http3.ConfigureTLSConfig(insecureTLS()), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseWithError(0, "")
	cc := (&http3.Transport{}).NewClientConn(conn)
	<-cc.ReceivedSettings()
	req, _ := http.NewRequest(http.MethodConnect, "https://"+ts.addr+"/ws", nil)
	req.Proto = "websocket"
	resp, err := cc.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotImplemented || reached {
		t.Errorf("extended CONNECT: %d, reached app: %v", resp.StatusCode, reached)
	}
}

// TestConnsPerIPCountsQUIC: QUIC connections count against the same
// per-address limit as TCP ones.
func TestConnsPerIPCountsQUIC(t *testing.T) {
	ts := startServer(t, true, echoApp(), func(o *transport.Options) { o.Limits.MaxConnsPerIP = 1 }, nil)
	h1 := h1Client()
	defer h1.CloseIdleConnections()
	if a, _ := do(t, h1, "GET", "https://"+ts.addr+"/", nil, nil); a.status != 200 {
		t.Fatalf("first connection: %d", a.status)
	}
	// The h1 connection is kept alive: a QUIC connection is the second.
	h3, tr := h3Client()
	defer tr.Close()
	if a, _ := do(t, h3, "GET", "https://"+ts.addr+"/", nil, nil); a.status != http.StatusTooManyRequests {
		t.Errorf("second connection over QUIC: %d, want 429", a.status)
	}
}

// TestSessionResumptionAcrossServers: with the same ticket keys, a session
// from server A resumes on server B, over TCP and over QUIC; with other
// keys it does not.
func TestSessionResumptionAcrossServers(t *testing.T) {
	a := startServer(t, true, echoApp(), nil, nil)
	b := startServer(t, true, echoApp(), nil, nil)
	c := startServer(t, true, echoApp(), nil, nil)
	shared := [][32]byte{{1, 2, 3}, {4, 5, 6}}
	a.srv.SetSessionTicketKeys(shared)
	b.srv.SetSessionTicketKeys([][32]byte{shared[1], shared[0]}) // B encrypts with another key but decrypts A's
	c.srv.SetSessionTicketKeys([][32]byte{{9, 9, 9}})

	for _, proto := range []string{"tcp", "quic"} {
		cache := tls.NewLRUClientSessionCache(8)
		first := handshake(t, proto, a.addr, cache)
		if first.DidResume {
			t.Fatalf("%s: first handshake resumed", proto)
		}
		if !handshake(t, proto, b.addr, cache).DidResume {
			t.Errorf("%s: session from A did not resume on B", proto)
		}
		cache2 := tls.NewLRUClientSessionCache(8)
		handshake(t, proto, a.addr, cache2)
		if handshake(t, proto, c.addr, cache2).DidResume {
			t.Errorf("%s: session resumed on a server with other keys", proto)
		}
	}
	if v := testutil.ToFloat64(b.srv.Metrics().Resumed.WithLabelValues("tcp")); v < 1 {
		t.Errorf("resumed tcp handshakes on B: %v", v)
	}
}

// handshake connects once (TLS 1.3, so the ticket arrives after the
// handshake: a request makes sure it is read) and returns the state.
func handshake(t *testing.T, proto, addr string, cache tls.ClientSessionCache) tls.ConnectionState {
	t.Helper()
	conf := insecureTLS()
	conf.ClientSessionCache = cache
	switch proto {
	case "tcp":
		conf.NextProtos = []string{"http/1.1"}
		c, err := tls.Dial("tcp", addr, conf)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: example.test\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		readAll(t, resp)
		return c.ConnectionState()
	default:
		conn, err := quic.DialAddr(context.Background(), addr, http3.ConfigureTLSConfig(conf), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.CloseWithError(0, "")
		cc := (&http3.Transport{}).NewClientConn(conn)
		req, _ := http.NewRequest("GET", "https://"+addr+"/", nil)
		resp, err := cc.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		readAll(t, resp)
		return conn.ConnectionState().TLS
	}
}

// TestPubSubSSEOverAllProtocols: the real pubsub mounted on the transport
// streams a published message to SSE subscribers over HTTP/1.1, HTTP/2 and
// HTTP/3.
func TestPubSubSSEOverAllProtocols(t *testing.T) {
	reg := prometheus.NewRegistry()
	ps, err := pubsub.New(pubsub.Options{Tenants: []pubsub.Tenant{{Name: "demo", Public: []string{"*"}}}}, nil, quietLog(), reg)
	if err != nil {
		t.Fatal(err)
	}
	defer ps.Close()
	ts := startServer(t, true, echoApp(), nil, func(s *transport.Server) {
		for pat, h := range ps.Routes() {
			s.Handle(pat, h)
		}
	})
	h3, h3tr := h3Client()
	defer h3tr.Close()
	for _, c := range []struct {
		name   string
		client *http.Client
		major  int
	}{{"h1", h1Client(), 1}, {"h2", h2Client(), 2}, {"h3", h3, 3}} {
		channel := "demo/thread-" + c.name
		resp, err := c.client.Get("https://" + ts.addr + "/sse?channel=" + channel)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if resp.StatusCode != 200 || resp.ProtoMajor != c.major || resp.Header.Get("Content-Type") != "text/event-stream" {
			t.Fatalf("%s: %s %d %v", c.name, resp.Proto, resp.StatusCode, resp.Header)
		}
		br := bufio.NewReader(resp.Body)
		nextData := func() string {
			for {
				line, err := br.ReadString('\n')
				if err != nil {
					t.Fatalf("%s: %v", c.name, err)
				}
				if strings.HasPrefix(line, "data: ") {
					return line
				}
			}
		}
		if d := nextData(); !strings.Contains(d, "subscribed") {
			t.Fatalf("%s: first event %q", c.name, d)
		}
		want := `{"over":"` + c.name + `"}`
		if _, err := ps.Publish(channel, json.RawMessage(want)); err != nil {
			t.Fatal(err)
		}
		if d := nextData(); !strings.Contains(d, want) {
			t.Errorf("%s: got %q, want the message %s", c.name, d, want)
		}
		resp.Body.Close()
	}
}
