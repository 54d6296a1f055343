package transport_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/edgenode/edgenode/internal/h2"
	"github.com/edgenode/edgenode/internal/transport"
	"golang.org/x/net/http2/hpack"
)

// objHandler serves "obj:"+path for GET and HEAD of /obj/..., from
// ServeHTTP or, except for paths ending in /slow, from AppendFast, with
// the same fields either way; it counts which path answered.
type objHandler struct {
	fast, slow atomic.Int64
	sawTLS     atomic.Int64 // ServeHTTP calls that saw Request.TLS
}

func (h *objHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.slow.Add(1)
	if r.TLS != nil && r.TLS.HandshakeComplete && r.TLS.ServerName == "example.test" {
		h.sawTLS.Add(1)
	}
	body := "obj:" + r.URL.Path
	w.Header().Set("Content-Type", "text/plain")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	if r.Method != http.MethodHead {
		io.WriteString(w, body)
	}
}

func (h *objHandler) AppendFast(dst []byte, method, path string) ([]byte, []byte, bool) {
	if strings.HasSuffix(path, "/slow") {
		return dst, nil, false
	}
	h.fast.Add(1)
	body := "obj:" + path
	dst = append(dst, "Content-Length: "+strconv.Itoa(len(body))+"\r\nContent-Type: text/plain\r\n"...)
	return dst, []byte(body), true
}

func (h *objHandler) AppendFastBlock(dst []byte, method, path string) ([]byte, []byte, bool) {
	if strings.HasSuffix(path, "/slow") {
		return dst, nil, false
	}
	h.fast.Add(1)
	body := "obj:" + path
	dst = h2.AppendLiteral(dst, hpack.HeaderField{Name: "content-length", Value: strconv.Itoa(len(body))})
	dst = h2.AppendLiteral(dst, hpack.HeaderField{Name: "content-type", Value: "text/plain"})
	return dst, []byte(body), true
}

type fastEnv struct {
	addr string
	srv  *transport.Server
	obj  *objHandler
	reg  *prometheus.Registry
	done chan error
}

func startFast(t *testing.T, limits func(*transport.Limits)) *fastEnv {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := &fastEnv{addr: ln.Addr().String(), obj: &objHandler{}, reg: prometheus.NewRegistry(), done: make(chan error, 1)}
	opts := transport.Options{Listener: ln, Certs: selfSignedStore(t), App: e.obj, Limits: defaultLimits()}
	if limits != nil {
		limits(&opts.Limits)
	}
	e.srv, err = transport.New(opts, quietLog(), e.reg)
	if err != nil {
		t.Fatal(err)
	}
	e.srv.Handle("GET /obj/{p...}", e.obj)
	go func() { e.done <- e.srv.Serve() }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		e.srv.Shutdown(ctx)
		if err := <-e.done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return e
}

// shutdownWithin shuts the server down and fails unless that took less
// than d (the limits at play here are 10 s or more).
func (e *fastEnv) shutdownWithin(t *testing.T, d time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 4*d)
	defer cancel()
	start := time.Now()
	if err := e.srv.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if took := time.Since(start); took > d {
		t.Fatalf("Shutdown took %v", took)
	}
}

func (e *fastEnv) dial(t *testing.T) (*tls.Conn, *bufio.Reader) {
	t.Helper()
	c, err := tls.Dial("tcp", e.addr, &tls.Config{InsecureSkipVerify: true, ServerName: "example.test", NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return c, bufio.NewReader(c)
}

func readResp(t *testing.T, br *bufio.Reader, method string) (int, string) {
	t.Helper()
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// TestFastPathPipelinedHandOff: pipelined requests on one connection are
// answered in order: by the fast path until one is declined, then by
// net/http with the bytes the fast path had already read; the handler then
// still sees the connection's TLS state, and every request is counted.
func TestFastPathPipelinedHandOff(t *testing.T) {
	e := startFast(t, nil)
	c, br := e.dial(t)
	reqs := "GET /obj/a HTTP/1.1\r\nHost: x\r\n\r\n" +
		"HEAD /obj/b HTTP/1.1\r\nHost: x\r\n\r\n" +
		"GET /obj/c/slow HTTP/1.1\r\nHost: x\r\n\r\n" +
		"GET /obj/d HTTP/1.1\r\nHost: x\r\n\r\n" +
		"POST /other HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
	if _, err := io.WriteString(c, reqs); err != nil {
		t.Fatal(err)
	}
	for _, want := range []struct {
		method, body string
	}{{"GET", "obj:/obj/a"}, {"HEAD", ""}, {"GET", "obj:/obj/c/slow"}, {"GET", "obj:/obj/d"}, {"POST", "obj:/other"}} {
		if code, body := readResp(t, br, want.method); code != 200 || body != want.body {
			t.Fatalf("%s: %d %q, want 200 %q", want.method, code, body, want.body)
		}
	}
	if f, s, tl := e.obj.fast.Load(), e.obj.slow.Load(), e.obj.sawTLS.Load(); f != 2 || s != 3 || tl != 3 {
		t.Fatalf("fast %d, net/http %d (with TLS state %d); want 2, 3, 3", f, s, tl)
	}
	m := e.srv.Metrics()
	route := func(method string) float64 {
		return testutil.ToFloat64(m.Requests.WithLabelValues("GET /obj/{p...}", method, "200", "1.1"))
	}
	if g, h := route("GET"), route("HEAD"); g != 3 || h != 1 {
		t.Fatalf("requests counted: GET %v, HEAD %v; want 3, 1", g, h)
	}
	answers := testutil.ToFloat64(m.FastAnswers)
	handoffs := testutil.ToFloat64(m.FastHandoffs.WithLabelValues("handler"))
	if answers != 2 || handoffs != 1 {
		t.Fatalf("fast answers %v, hand-offs by the handler %v; want 2, 1", answers, handoffs)
	}
}

// TestFastPathRequestSmuggling plays the attacker: a request whose body is
// shaped like a second request. The fast path must not answer it nor the
// "request" inside its body: net/http frames it (Content-Length, then
// chunked), and exactly one response comes back for each real request.
func TestFastPathRequestSmuggling(t *testing.T) {
	inner := "GET /obj/smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
	for name, req := range map[string]string{
		"content-length": "GET /obj/a HTTP/1.1\r\nHost: x\r\nContent-Length: " + strconv.Itoa(len(inner)) + "\r\n\r\n" + inner,
		"chunked": "GET /obj/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" +
			strconv.FormatInt(int64(len(inner)), 16) + "\r\n" + inner + "\r\n0\r\n\r\n",
	} {
		t.Run(name, func(t *testing.T) {
			e := startFast(t, nil)
			c, br := e.dial(t)
			io.WriteString(c, req+"GET /obj/after HTTP/1.1\r\nHost: x\r\n\r\n")
			for _, want := range []string{"obj:/obj/a", "obj:/obj/after"} {
				if code, body := readResp(t, br, "GET"); code != 200 || body != want {
					t.Fatalf("%d %q, want %q", code, body, want)
				}
			}
			if e.obj.fast.Load() != 0 {
				t.Fatalf("the fast path answered %d requests", e.obj.fast.Load())
			}
			if n := testutil.ToFloat64(e.srv.Metrics().FastHandoffs.WithLabelValues("head")); n != 1 {
				t.Fatalf("hand-offs for the head: %v, want 1", n)
			}
			c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			if b, err := br.ReadByte(); err == nil {
				t.Fatalf("a third response began (%q): the body was taken for a request", b)
			}
		})
	}
}

// TestFastPathHeadLimits: a head too long for the fast path's buffer goes
// to net/http, which answers it within MaxHeaderBytes and refuses it past
// them, as before.
func TestFastPathHeadLimits(t *testing.T) {
	e := startFast(t, nil) // MaxHeaderBytes 8 KiB
	c, br := e.dial(t)
	io.WriteString(c, "GET /obj/a HTTP/1.1\r\nHost: x\r\nX-Pad: "+strings.Repeat("p", 6<<10)+"\r\n\r\n")
	if code, body := readResp(t, br, "GET"); code != 200 || body != "obj:/obj/a" {
		t.Fatalf("6 KiB head: %d %q", code, body)
	}
	io.WriteString(c, "GET /obj/a HTTP/1.1\r\nHost: x\r\nX-Pad: "+strings.Repeat("p", 10<<10)+"\r\n\r\n")
	if code, _ := readResp(t, br, "GET"); code != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("10 KiB head: %d, want 431", code)
	}
	if e.obj.fast.Load() != 0 {
		t.Fatalf("the fast path answered %d", e.obj.fast.Load())
	}
	if n := testutil.ToFloat64(e.srv.Metrics().FastHandoffs.WithLabelValues("long")); n != 1 {
		t.Fatalf("hand-offs for a long head: %v, want 1", n)
	}

	// MaxHeaderBytes below the fast path's buffer: the fast path defers to
	// it too.
	small := startFast(t, func(l *transport.Limits) { l.MaxHeaderBytes = 100 })
	c, br = small.dial(t)
	io.WriteString(c, "GET /obj/a HTTP/1.1\r\nHost: x\r\nX-Pad: "+strings.Repeat("p", 200)+"\r\n\r\n")
	if code, _ := readResp(t, br, "GET"); code != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("head over a 100-byte limit: %d, want 431", code)
	}
}

// TestFastPathSlowHead: a client that sends part of a head and stops is
// cut at ReadHeaderTimeout and counted; one that sends nothing after a
// response is cut at IdleTimeout.
func TestFastPathSlowHead(t *testing.T) {
	e := startFast(t, func(l *transport.Limits) {
		l.ReadHeaderTimeout = 300 * time.Millisecond
		l.IdleTimeout = 600 * time.Millisecond
	})
	c, br := e.dial(t)
	io.WriteString(c, "GET /obj/a HTTP/1.1\r\nHo")
	start := time.Now()
	if _, err := br.ReadByte(); err == nil {
		t.Fatal("a response to half a head")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("cut after %v", d)
	}
	hits := testutil.ToFloat64(e.srv.Metrics().LimitHits.WithLabelValues("read_header_timeout"))
	if hits != 1 {
		t.Fatalf("read_header_timeout hits %v, want 1", hits)
	}

	c, br = e.dial(t)
	io.WriteString(c, "GET /obj/a HTTP/1.1\r\nHost: x\r\n\r\n")
	readResp(t, br, "GET")
	if _, err := br.ReadByte(); err == nil {
		t.Fatal("idle connection got bytes")
	}
}

// TestFastPathShutdown: Shutdown closes idle fast-path connections at once
// (it does not wait for their idle timeout) and returns.
func TestFastPathShutdown(t *testing.T) {
	e := startFast(t, nil) // IdleTimeout 1 minute
	c, br := e.dial(t)
	io.WriteString(c, "GET /obj/a HTTP/1.1\r\nHost: x\r\n\r\n")
	readResp(t, br, "GET")
	e.shutdownWithin(t, 5*time.Second)
	if _, err := br.ReadByte(); !errors.Is(err, io.EOF) {
		t.Fatalf("idle connection after Shutdown: %v, want EOF", err)
	}
	if _, err := tls.Dial("tcp", e.addr, &tls.Config{InsecureSkipVerify: true}); err == nil {
		t.Fatal("a new connection after Shutdown")
	}
}

// TestShutdownEndsStalledHandshakes: a client that opens a TCP connection
// and never completes its TLS handshake does not hold Shutdown for the
// handshake timeout (10 s here).
func TestShutdownEndsStalledHandshakes(t *testing.T) {
	e := startFast(t, nil)
	raw, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	// Make sure the server has accepted it and is in the handshake.
	io.WriteString(raw, "\x16\x03\x01")
	time.Sleep(100 * time.Millisecond)
	e.shutdownWithin(t, 5*time.Second)
}

// TestFastPathNoIdleTimeout: without an IdleTimeout an idle connection
// stays open, also after a head that came in pieces (whose
// ReadHeaderTimeout deadline must not outlive it).
func TestFastPathNoIdleTimeout(t *testing.T) {
	// The head's second piece comes 50 ms after its first, well within
	// the 1 s ReadHeaderTimeout even on a loaded machine; the idle wait
	// after it outlasts that deadline.
	e := startFast(t, func(l *transport.Limits) {
		l.ReadHeaderTimeout = time.Second
		l.IdleTimeout = 0
	})
	c, br := e.dial(t)
	io.WriteString(c, "GET /obj/a HTTP/1.1\r\nHo")
	time.Sleep(50 * time.Millisecond)
	io.WriteString(c, "st: x\r\n\r\n")
	if code, _ := readResp(t, br, "GET"); code != 200 {
		t.Fatalf("first: %d", code)
	}
	time.Sleep(1300 * time.Millisecond)
	io.WriteString(c, "GET /obj/b HTTP/1.1\r\nHost: x\r\n\r\n")
	if code, body := readResp(t, br, "GET"); code != 200 || body != "obj:/obj/b" {
		t.Fatalf("after an idle wait: %d %q", code, body)
	}
}
