package h2_test

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgenode/edgenode/internal/h2"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// The attacker's side: a raw HTTP/2 client that sends whatever frames it
// likes, over real TLS. Each test plays one known attack on HTTP/2 servers
// and checks the limit that stops it.

type rawClient struct {
	t      testing.TB
	conn   *tls.Conn
	fr     *http2.Framer
	enc    *hpack.Encoder
	encBuf bytes.Buffer
}

func dialRaw(t testing.TB, addr string, settings ...http2.Setting) *rawClient {
	t.Helper()
	conn, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if conn.ConnectionState().NegotiatedProtocol != "h2" {
		t.Fatal("no h2")
	}
	c := &rawClient{t: t, conn: conn}
	c.fr = http2.NewFramer(conn, conn)
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.enc = hpack.NewEncoder(&c.encBuf)
	if _, err := io.WriteString(conn, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	if err := c.fr.WriteSettings(settings...); err != nil {
		t.Fatal(err)
	}
	return c
}

// headers is the HPACK block of a request for path.
func (c *rawClient) headers(method, path string, extra ...string) []byte {
	c.encBuf.Reset()
	fields := []string{":method", method, ":scheme", "https", ":authority", "example.test", ":path", path}
	fields = append(fields, extra...)
	for i := 0; i < len(fields); i += 2 {
		c.enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
	}
	return bytes.Clone(c.encBuf.Bytes())
}

func (c *rawClient) get(id uint32, path string) {
	c.t.Helper()
	if err := c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.headers("GET", path),
		EndStream: true, EndHeaders: true}); err != nil {
		c.t.Fatal(err)
	}
}

// until reads frames until match says stop, or the connection ends (nil),
// within d.
func (c *rawClient) until(d time.Duration, match func(http2.Frame) bool) http2.Frame {
	c.t.Helper()
	c.conn.SetReadDeadline(time.Now().Add(d))
	defer c.conn.SetReadDeadline(time.Time{})
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				c.t.Fatalf("no matching frame within %v", d)
			}
			return nil
		}
		if match(f) {
			return f
		}
	}
}

func isGoAway(f http2.Frame) bool { _, ok := f.(*http2.GoAwayFrame); return ok }

// TestRapidReset (CVE-2023-44487): a client opens streams and resets each
// at once, faster than handlers can run. A stream holds its place against
// MaxConcurrentStreams until its handler returns, not until the reset, so
// no more handlers run at once than the limit; a client that keeps pushing
// past it is refused, then sent GOAWAY ENHANCE_YOUR_CALM.
func TestRapidReset(t *testing.T) {
	const limit = 8
	var running, peak atomic.Int64
	release := make(chan struct{})
	var once sync.Once
	ts := serve(t, h2.Options{MaxConcurrentStreams: limit, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := running.Add(1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		<-release // a handler slow to notice the reset
		running.Add(-1)
	})})
	// Registered after serve's: runs first, so the server's cleanup does not
	// wait for handlers that were never released.
	t.Cleanup(func() { once.Do(func() { close(release) }) })
	c := dialRaw(t, ts.addr)
	go func() {
		for id := uint32(1); id < 2000; id += 2 {
			// Errors end the flood: the server closes the connection.
			if c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.headers("GET", "/"),
				EndStream: true, EndHeaders: true}) != nil || c.fr.WriteRSTStream(id, http2.ErrCodeCancel) != nil {
				return
			}
		}
	}()
	var refused int
	f := c.until(10*time.Second, func(f http2.Frame) bool {
		if rst, ok := f.(*http2.RSTStreamFrame); ok && rst.ErrCode == http2.ErrCodeRefusedStream {
			refused++
		}
		return isGoAway(f)
	})
	ga, _ := f.(*http2.GoAwayFrame)
	if ga == nil || ga.ErrCode != http2.ErrCodeEnhanceYourCalm {
		t.Fatalf("got %v, want GOAWAY ENHANCE_YOUR_CALM", f)
	}
	if p := peak.Load(); p > limit {
		t.Fatalf("%d handlers ran at once, limit %d", p, limit)
	}
	if refused < limit {
		t.Fatalf("%d streams refused before GOAWAY", refused)
	}
	once.Do(func() { close(release) })
	t.Logf("peak %d handlers, %d refused, GOAWAY after stream %d", peak.Load(), refused, ga.LastStreamID)
}

// TestStreamLimit: past MaxConcurrentStreams a stream is refused
// (REFUSED_STREAM, safe to retry), and the connection serves again once a
// stream ends.
func TestStreamLimit(t *testing.T) {
	release := make(chan struct{})
	ts := serve(t, h2.Options{MaxConcurrentStreams: 2, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			<-release
		}
	})})
	c := dialRaw(t, ts.addr)
	c.get(1, "/slow")
	c.get(3, "/slow")
	c.get(5, "/slow")
	f := c.until(5*time.Second, func(f http2.Frame) bool { _, ok := f.(*http2.RSTStreamFrame); return ok })
	if rst := f.(*http2.RSTStreamFrame); rst.StreamID != 5 || rst.ErrCode != http2.ErrCodeRefusedStream {
		t.Fatalf("got %v, want stream 5 refused", f)
	}
	close(release)
	c.until(5*time.Second, func(f http2.Frame) bool {
		return f.Header().StreamID == 3 && f.Header().Flags.Has(http2.FlagHeadersEndStream)
	})
	c.get(7, "/fast")
	f = c.until(5*time.Second, func(f http2.Frame) bool { return f.Header().StreamID == 7 })
	if mh, ok := f.(*http2.MetaHeadersFrame); !ok || mh.PseudoValue("status") != "200" {
		t.Fatalf("after the slow streams: %v", f)
	}
}

// TestContinuationFlood (CVE-2024-27316 and kin): HEADERS without
// END_HEADERS, then CONTINUATION frames without end. The server must stop
// reading them once the header list is past its limit and end the
// connection, not buffer or decode them forever.
func TestContinuationFlood(t *testing.T) {
	ts := serve(t, h2.Options{MaxHeaderListSize: 16 << 10, Handler: http.NotFoundHandler()})
	c := dialRaw(t, ts.addr)
	// A literal field with a 4 KiB value, repeated: each fragment is valid
	// HPACK, so only the size limit can stop it.
	block := c.headers("GET", "/")
	c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block, EndStream: true})
	c.encBuf.Reset()
	c.enc.WriteField(hpack.HeaderField{Name: "x-flood", Value: strings.Repeat("a", 4000)})
	frag := bytes.Clone(c.encBuf.Bytes())
	var sent atomic.Int64
	go func() {
		for sent.Load() < 64<<20 {
			if c.fr.WriteContinuation(1, false, frag) != nil {
				return
			}
			sent.Add(int64(len(frag)))
		}
	}()
	f := c.until(10*time.Second, isGoAway)
	if f == nil {
		t.Logf("connection closed after %d bytes of CONTINUATION", sent.Load())
	} else if ga := f.(*http2.GoAwayFrame); ga.ErrCode == http2.ErrCodeNo {
		t.Fatalf("GOAWAY %v, want an error", ga.ErrCode)
	}
	if n := sent.Load(); n >= 64<<20 {
		t.Fatalf("the server read %d bytes of one header block", n)
	}
}

// TestHeaderListTooLarge: a request whose header list is past the limit
// gets 431 and does not reach the handler; the connection goes on.
func TestHeaderListTooLarge(t *testing.T) {
	var calls atomic.Int64
	ts := serve(t, h2.Options{MaxHeaderListSize: 4 << 10, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
	})})
	c := dialRaw(t, ts.addr)
	// Fields each within the limit, together past it. (One field longer
	// than the whole limit is a decoding error: the connection ends, as
	// with net/http.)
	v := strings.Repeat("b", 1500)
	big := c.headers("GET", "/", "x-big1", v, "x-big2", v, "x-big3", v, "x-big4", v)
	c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: big, EndStream: true, EndHeaders: true})
	f := c.until(5*time.Second, func(f http2.Frame) bool { _, ok := f.(*http2.MetaHeadersFrame); return ok })
	if st := f.(*http2.MetaHeadersFrame).PseudoValue("status"); st != "431" {
		t.Fatalf("status %s, want 431", st)
	}
	c.get(3, "/")
	f = c.until(5*time.Second, func(f http2.Frame) bool { _, ok := f.(*http2.MetaHeadersFrame); return ok })
	if st := f.(*http2.MetaHeadersFrame).PseudoValue("status"); st != "200" || calls.Load() != 1 {
		t.Fatalf("next request: status %s, %d handler calls", st, calls.Load())
	}
}

// TestControlFrameFlood: a client that sends PINGs (or SETTINGS) without
// reading the answers. The server stops reading while its answers wait, so
// the flood fills the socket buffers and stalls the attacker's own writes,
// instead of growing a queue in the server.
func TestControlFrameFlood(t *testing.T) {
	ts := serve(t, h2.Options{Handler: http.NotFoundHandler()})
	c := dialRaw(t, ts.addr)
	c.conn.SetWriteDeadline(time.Now().Add(3 * time.Second))
	var n int
	var err error
	for n = 0; n < 10_000_000; n++ {
		if err = c.fr.WritePing(false, [8]byte{1}); err != nil {
			break
		}
	}
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("after %d PINGs: %v, want the writes to stall", n, err)
	}
	// Loopback socket buffers hold a few MB at most: a server that queued
	// every answer would have let ten million through.
	t.Logf("writes stalled after %d PINGs (%d KiB)", n, n*17>>10)
}

// TestBodyFlowControl: a client that sends more body than the stream's
// window allows gets FLOW_CONTROL_ERROR for the stream, so what a handler
// that does not read can be made to buffer is bounded by StreamWindow.
func TestBodyFlowControl(t *testing.T) {
	started := make(chan struct{}, 1)
	ts := serve(t, h2.Options{StreamWindow: 64 << 10, ConnWindow: 1 << 20, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			started <- struct{}{}
			<-r.Context().Done() // never reads the body
		}
	})})
	c := dialRaw(t, ts.addr)
	c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: c.headers("POST", "/"), EndHeaders: true})
	<-started
	chunk := make([]byte, 16<<10)
	for range 5 { // 80 KiB against a 64 KiB window
		if err := c.fr.WriteData(1, false, chunk); err != nil {
			t.Fatal(err)
		}
	}
	f := c.until(5*time.Second, func(f http2.Frame) bool { _, ok := f.(*http2.RSTStreamFrame); return ok })
	if rst := f.(*http2.RSTStreamFrame); rst.StreamID != 1 || rst.ErrCode != http2.ErrCodeFlowControl {
		t.Fatalf("got %v, want FLOW_CONTROL_ERROR on stream 1", f)
	}
	// The connection survives, its window given back.
	c.get(3, "/")
	c.until(5*time.Second, func(f http2.Frame) bool { return f.Header().StreamID == 3 })
}

// TestIdleTimeout: a connection that opens no stream (a slowloris holding
// a descriptor) is sent GOAWAY and closed after IdleTimeout; one that
// never sends the preface at all, too.
func TestIdleTimeout(t *testing.T) {
	ts := serve(t, h2.Options{IdleTimeout: 300 * time.Millisecond, Handler: http.NotFoundHandler()})
	c := dialRaw(t, ts.addr)
	start := time.Now()
	f := c.until(5*time.Second, isGoAway)
	if ga, ok := f.(*http2.GoAwayFrame); !ok || ga.ErrCode != http2.ErrCodeNo {
		t.Fatalf("got %v, want GOAWAY NO_ERROR", f)
	}
	if c.until(5*time.Second, func(http2.Frame) bool { return false }) != nil {
		t.Fatal("connection not closed")
	}
	if d := time.Since(start); d > 6*time.Second { // 300 ms idle, then up to 1 s of draining; loose for a loaded machine
		t.Fatalf("closed after %v", d)
	}
	raw, err := tls.Dial("tcp", ts.addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.Copy(io.Discard, raw); err != nil {
		t.Fatalf("silent connection: %v, want closed", err)
	}
}

// TestShutdownGraceful: Shutdown sends GOAWAY; the stream in flight
// finishes whole, a stream opened after the GOAWAY is not served, and the
// connection then ends.
func TestShutdownGraceful(t *testing.T) {
	inFlight := make(chan struct{})
	release := make(chan struct{})
	var calls atomic.Int64
	ts := serve(t, h2.Options{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		if r.URL.Path == "/slow" {
			close(inFlight)
			<-release
		}
		io.WriteString(w, "done")
	})})
	c := dialRaw(t, ts.addr)
	c.get(1, "/slow")
	<-inFlight
	ts.srv.Shutdown()
	f := c.until(5*time.Second, isGoAway)
	if ga := f.(*http2.GoAwayFrame); ga.LastStreamID != 1 || ga.ErrCode != http2.ErrCodeNo {
		t.Fatalf("GOAWAY %v last %d", ga.ErrCode, ga.LastStreamID)
	}
	c.get(3, "/")
	close(release)
	var body []byte
	var ended bool
	c.until(5*time.Second, func(f http2.Frame) bool {
		if d, ok := f.(*http2.DataFrame); ok && d.StreamID == 1 {
			body = append(body, d.Data()...)
			ended = d.StreamEnded()
		}
		return false // read to the connection's end
	})
	if string(body) != "done" || !ended || calls.Load() != 1 {
		t.Fatalf("body %q ended %v, %d handler calls (want 1: stream 3 came after GOAWAY)", body, ended, calls.Load())
	}
}
