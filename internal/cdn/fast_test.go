package cdn

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/edgenode/edgenode/internal/testkit"
	"github.com/edgenode/edgenode/internal/transport"
)

// slowOnly hides AppendFast: the transport then serves the cache through
// net/http and ServeHTTP only.
type slowOnly struct{ http.Handler }

// TestFastPathSameAnswer: a memory-tier hit answered by the transport's
// HTTP/1.1 fast path (AppendFast) carries the same status, header fields
// and body as ServeHTTP gives the same request through net/http, for GET
// and HEAD, passive and active content types, with and without
// Cache-Control; and requests the fast path must not answer (Range,
// conditionals, a stale entry) still get ServeHTTP's answers on the same
// connection.
func TestFastPathSameAnswer(t *testing.T) {
	for _, cc := range []string{"", "public, max-age=60"} {
		c, _, dir := newDirCache(t, func(o *Options) { o.MemoryBytes = 1 << 20; o.CacheControl = cc })
		os.MkdirAll(filepath.Join(dir, "f"), 0o755)
		os.WriteFile(filepath.Join(dir, "f/a.png"), randBytes(10<<10), 0o644)
		os.WriteFile(filepath.Join(dir, "f/b.svg"), []byte("<svg xmlns='http://www.w3.org/2000/svg'/>"), 0o644)
		fast := serveCache(t, c, true)
		slow := serveCache(t, c, false)
		for _, key := range []string{"f/a.png", "f/b.svg"} {
			// Miss, then a hit that reads the object into the memory tier.
			for range 2 {
				roundTrip(t, slow, "GET /media/"+key+" HTTP/1.1\r\nHost: x\r\n\r\n")
				testkit.WaitFor(t, settleTimeout, "fill", func() bool { return c.running.Load() == 0 })
			}
		}
		// Each protocol's fast answer (AppendFast over HTTP/1.1,
		// AppendFastBlock over HTTP/2) against ServeHTTP's, field for field.
		h2c := h2Client()
		for _, p := range []struct {
			name  string
			fetch func(method, addr, key string) rawResp
		}{
			{"HTTP/1.1", func(method, addr, key string) rawResp {
				return roundTrip(t, addr, method+" /media/"+key+" HTTP/1.1\r\nHost: example.test\r\nUser-Agent: t\r\n\r\n")
			}},
			{"HTTP/2", func(method, addr, key string) rawResp { return h2RoundTrip(t, h2c, method, addr, key) }},
		} {
			for _, key := range []string{"f/a.png", "f/b.svg"} {
				for _, method := range []string{"GET", "HEAD"} {
					before := testutil.ToFloat64(c.m.memHits)
					want := p.fetch(method, slow, key)
					got := p.fetch(method, fast, key)
					if n := testutil.ToFloat64(c.m.memHits) - before; n != 2 {
						t.Fatalf("%s %s %s: %v memory hits, want 2 (one per path)", p.name, method, key, n)
					}
					if want.status != 200 || got.status != want.status || !bytes.Equal(got.body, want.body) {
						t.Fatalf("%s %s %s: fast %d (%d bytes), handler %d (%d bytes)", p.name, method, key, got.status, len(got.body), want.status, len(want.body))
					}
					if !slices.Equal(got.fields, want.fields) {
						t.Fatalf("%s %s %s (Cache-Control %q):\nfast:    %q\nhandler: %q", p.name, method, key, cc, got.fields, want.fields)
					}
				}
			}
		}
		// One connection: a fast hit, then requests the fast path declines,
		// then a hit again (net/http's, since the connection was handed over).
		conn := dialH1(t, fast)
		etag := roundTripOn(t, conn, "GET /media/f/a.png HTTP/1.1\r\nHost: x\r\n\r\n").header("Etag")
		for _, tc := range []struct {
			req    string
			status int
		}{
			{"GET /media/f/a.png HTTP/1.1\r\nHost: x\r\nRange: bytes=0-9\r\n\r\n", 206},
			{"GET /media/f/a.png HTTP/1.1\r\nHost: x\r\nIf-None-Match: " + etag + "\r\n\r\n", 304},
			{"GET /media/f/a.png HTTP/1.1\r\nHost: x\r\n\r\n", 200},
		} {
			if r := roundTripOn(t, conn, tc.req); r.status != tc.status {
				t.Fatalf("%q: %d, want %d", tc.req, r.status, tc.status)
			}
		}
		conn.Close()
	}
}

// serveCache serves the cache's routes on a real transport (TLS on
// 127.0.0.1); with fast false, through net/http only.
func serveCache(t *testing.T, c *Cache, fast bool) string {
	t.Helper()
	dir := t.TempDir()
	log := slog.New(slog.DiscardHandler)
	certFile, keyFile, err := transport.EnsureSelfSigned(dir, []string{"example.test"}, log)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := transport.NewFromFiles(ln, certFile, keyFile, log, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	for p, h := range c.Routes() {
		if !fast {
			h = slowOnly{h}
		}
		srv.Handle(p, h)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve() }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return ln.Addr().String()
}

// h2Client is an HTTP/2-only client that trusts any certificate.
func h2Client() *http.Client {
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, ForceAttemptHTTP2: true}
	tr.Protocols = new(http.Protocols)
	tr.Protocols.SetHTTP2(true)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// h2RoundTrip fetches /media/key over HTTP/2: the status, the header fields
// (Date left out, "Name: value" sorted) and the body.
func h2RoundTrip(t *testing.T, c *http.Client, method, addr, key string) rawResp {
	t.Helper()
	req, _ := http.NewRequest(method, "https://"+addr+"/media/"+key, nil)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.ProtoMajor != 2 {
		t.Fatalf("%s", resp.Proto)
	}
	r := rawResp{status: resp.StatusCode}
	if r.body, err = io.ReadAll(resp.Body); err != nil {
		t.Fatal(err)
	}
	for k, vs := range resp.Header {
		if k == "Date" {
			continue
		}
		for _, v := range vs {
			r.fields = append(r.fields, k+": "+v)
		}
	}
	if resp.ContentLength >= 0 { // the client moves Content-Length out of Header
		r.fields = append(r.fields, "Content-Length: "+strconv.FormatInt(resp.ContentLength, 10))
	}
	slices.Sort(r.fields)
	return r
}

type rawResp struct {
	status int
	fields []string // "Name: value" as sent, Date left out, sorted
	body   []byte
}

func (r rawResp) header(name string) string {
	for _, f := range r.fields {
		if n, v, _ := bytes.Cut([]byte(f), []byte(": ")); http.CanonicalHeaderKey(string(n)) == name {
			return string(v)
		}
	}
	return ""
}

type h1conn struct {
	net.Conn
	br *bufio.Reader
}

func dialH1(t *testing.T, addr string) *h1conn {
	t.Helper()
	c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	return &h1conn{Conn: c, br: bufio.NewReader(c)}
}

func roundTrip(t *testing.T, addr, req string) rawResp {
	t.Helper()
	c := dialH1(t, addr)
	defer c.Close()
	return roundTripOn(t, c, req)
}

// roundTripOn sends a raw request and reads the raw response: the header
// fields exactly as written (http.ReadResponse would canonicalize them).
func roundTripOn(t *testing.T, c *h1conn, req string) rawResp {
	t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	var r rawResp
	line, err := c.br.ReadString('\n')
	if err != nil {
		t.Fatalf("status line: %v", err)
	}
	if _, err := fmt.Sscanf(line, "HTTP/1.1 %d", &r.status); err != nil {
		t.Fatalf("status line %q: %v", line, err)
	}
	length := -1
	for {
		l, err := c.br.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		l = l[:len(l)-2]
		if l == "" {
			break
		}
		name, value, _ := bytes.Cut([]byte(l), []byte(": "))
		switch http.CanonicalHeaderKey(string(name)) {
		case "Date":
			continue
		case "Content-Length":
			length, _ = strconv.Atoi(string(value))
		}
		r.fields = append(r.fields, l)
	}
	slices.Sort(r.fields)
	if !bytes.HasPrefix([]byte(req), []byte("HEAD ")) && r.status != 304 && length > 0 {
		r.body = make([]byte, length)
		if _, err := io.ReadFull(c.br, r.body); err != nil {
			t.Fatal(err)
		}
	}
	return r
}
