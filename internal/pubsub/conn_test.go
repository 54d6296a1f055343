package pubsub

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/edgenode/edgenode/internal/testkit"
)

// dialSmallBuffer opens a websocket whose socket has a tiny receive buffer,
// so a client that stops reading fills up the server side quickly.
func (n *node) dialSmallBuffer() *websocket.Conn {
	n.t.Helper()
	nd := &net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) {
			_ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 2048)
		})
	}}
	cfg := n.tls.Clone()
	cfg.NextProtos = nil
	d := websocket.Dialer{TLSClientConfig: cfg, NetDialContext: nd.DialContext}
	ws, _, err := d.Dial(n.wsURL(""), nil)
	if err != nil {
		n.t.Fatal(err)
	}
	n.t.Cleanup(func() { ws.Close() })
	return ws
}

// A subscriber that stops reading is cut off as a slow consumer while a
// fast one keeps receiving every message, in order.
func TestSlowReaderCutOffFastReaderServed(t *testing.T) {
	for _, poller := range []bool{true, false} {
		t.Run(fmt.Sprintf("poller=%v", poller), func(t *testing.T) {
			opts := testOptions()
			opts.QueueLen = 16
			opts.DisablePoller = !poller
			n := newNode(t, opts, nil)

			slow := n.dialSmallBuffer()
			if err := slow.WriteMessage(websocket.TextMessage, []byte(`{"type":"subscribe","channel":"demo/thread-1"}`)); err != nil {
				t.Fatal(err)
			}
			fast := n.mustDial()
			fast.subscribe("demo/thread-1", "", nil)
			testkit.WaitFor(t, settle, "both subscribed", func() bool { l, _ := n.ps.Presence("demo/thread-1"); return l == 2 })

			payload := json.RawMessage(`"` + strings.Repeat("x", 16<<10) + `"`)
			var got []uint64
			var received atomic.Int64
			var readErr error
			var readFailed atomic.Bool
			stop := make(chan struct{})
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					f, err := fast.read()
					if err != nil {
						select {
						case <-stop:
						default:
							readErr = err
							readFailed.Store(true)
						}
						return
					}
					if f.Type == typeMessage {
						got = append(got, f.Position.Offset)
						received.Add(1)
					}
				}
			}()
			// The fast reader keeps up: at most 8 messages in flight to it.
			count := 0
			publish := func() {
				for received.Load() < int64(count-8) && !readFailed.Load() {
					time.Sleep(100 * time.Microsecond)
				}
				if _, err := n.ps.Publish("demo/thread-1", payload); err != nil {
					t.Fatal(err)
				}
				count++
			}
			for n.ps.connCount() > 1 && count < 20000 {
				publish()
			}
			if n.ps.connCount() != 1 {
				t.Fatalf("slow reader still connected after %d messages", count)
			}
			for range 10 {
				publish()
			}
			testkit.WaitFor(t, settle, "fast reader has everything", func() bool { return received.Load() == int64(count) || readFailed.Load() })
			close(stop)
			fast.ws.Close()
			wg.Wait()
			if readErr != nil {
				t.Fatalf("fast reader: %v after %d messages", readErr, len(got))
			}
			for i, off := range got {
				if off != uint64(i+1) {
					t.Fatalf("fast reader got offset %d at %d", off, i)
				}
			}
			if got := testutil.ToFloat64(n.ps.met.disconnects.WithLabelValues("slow_consumer")); got != 1 {
				t.Fatalf("slow_consumer disconnects %v", got)
			}
			if got := testutil.ToFloat64(n.ps.met.drops.WithLabelValues("slow_consumer")); got < 1 {
				t.Fatalf("slow_consumer drops %v", got)
			}
		})
	}
}

// Drain: every client is told to reconnect elsewhere and closed; new
// connections are refused; goroutines are back to the baseline after.
func TestDrainSendsReconnectElsewhere(t *testing.T) {
	base := runtime.NumGoroutine()
	func() {
		n := newNode(t, testOptions(), nil)
		defer n.close()
		var wss []*wsClient
		for range 5 {
			c := n.mustDial()
			c.subscribe("demo/thread-1", "", nil)
			wss = append(wss, c)
		}
		s, _ := n.sse("channel=demo/thread-1", nil)
		s.expect(typeSubscribed)
		// One client never reads: Drain still ends (close grace, then cut).
		silent := n.dialSmallBuffer()
		// The server registers a websocket just after the handshake the
		// client has seen: wait for it, or Drain may start before it.
		testkit.WaitFor(t, settle, "six websockets registered", func() bool {
			return testutil.ToFloat64(n.ps.met.connsWS) == 6
		})

		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		errc := make(chan error, 1)
		go func() { errc <- n.ps.Drain(ctx) }()
		for _, c := range wss {
			f := c.expect(typeReconnect)
			if f.Reason == "" {
				t.Fatalf("reconnect frame %+v", f)
			}
			ce := c.expectClose()
			if ce == nil || ce.Code != websocket.CloseServiceRestart {
				t.Fatalf("close %+v", ce)
			}
		}
		s.expect(typeReconnect)
		if _, err := s.next(); err != io.EOF && !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("sse after reconnect: %v", err)
		}
		if err := <-errc; err != nil {
			t.Fatalf("drain: %v", err)
		}
		if _, resp, err := n.dial("", nil); err == nil || resp.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("dial while draining: %v", err)
		}
		if got := testutil.ToFloat64(n.ps.met.disconnects.WithLabelValues("drain")); got != 7 {
			t.Fatalf("drain disconnects %v", got)
		}
		for _, c := range wss {
			c.ws.Close()
		}
		silent.Close()
	}()
	checkGoroutines(t, base)
}

// Drain bounded by its context cuts whoever is left.
func TestDrainTimeoutCuts(t *testing.T) {
	opts := testOptions()
	opts.CloseGrace = time.Hour // the silent client would hold the drain forever
	n := newNode(t, opts, nil)
	silent := n.dialSmallBuffer()
	_ = silent
	testkit.WaitFor(t, settle, "connected", func() bool { return n.ps.connCount() == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := n.ps.Drain(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("drain: %v", err)
	}
	if n.ps.connCount() != 0 {
		t.Fatal("connections left after drain timeout")
	}
}

// rawWS is a websocket client speaking bytes, for frames gorilla refuses
// to send.
type rawWS struct {
	t testing.TB
	c *tls.Conn
}

func (n *node) rawDial() *rawWS {
	n.t.Helper()
	cfg := n.tls.Clone()
	cfg.NextProtos = []string{"http/1.1"}
	c, err := tls.Dial("tcp", strings.TrimPrefix(n.pub.URL, "https://"), cfg)
	if err != nil {
		n.t.Fatal(err)
	}
	n.t.Cleanup(func() { c.Close() })
	req := "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
	if _, err := c.Write([]byte(req)); err != nil {
		n.t.Fatal(err)
	}
	buf := make([]byte, 0, 512)
	for !strings.Contains(string(buf), "\r\n\r\n") {
		b := make([]byte, 1)
		if _, err := c.Read(b); err != nil {
			n.t.Fatal(err)
		}
		buf = append(buf, b[0])
	}
	if !strings.HasPrefix(string(buf), "HTTP/1.1 101") {
		n.t.Fatalf("handshake: %q", buf)
	}
	return &rawWS{t: n.t, c: c}
}

// frame builds a client frame; mask=false makes an illegal unmasked one.
func mkFrame(b0 byte, payload []byte, mask bool) []byte {
	out := []byte{b0}
	m := byte(0)
	if mask {
		m = 0x80
	}
	switch n := len(payload); {
	case n < 126:
		out = append(out, m|byte(n))
	case n <= 0xFFFF:
		out = append(out, m|126, byte(n>>8), byte(n))
	default:
		out = append(out, m|127)
		out = binary.BigEndian.AppendUint64(out, uint64(n))
	}
	if !mask {
		return append(out, payload...)
	}
	key := [4]byte{1, 2, 3, 4}
	out = append(out, key[:]...)
	for i, c := range payload {
		out = append(out, c^key[i&3])
	}
	return out
}

func (r *rawWS) write(b []byte) {
	if _, err := r.c.Write(b); err != nil {
		r.t.Fatal(err)
	}
}

// readFrame reads one server frame: opcode and payload.
func (r *rawWS) readFrame() (byte, []byte, error) {
	_ = r.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var h [2]byte
	if _, err := io.ReadFull(r.c, h[:]); err != nil {
		return 0, nil, err
	}
	n := int(h[1] & 0x7F)
	switch n {
	case 126:
		var e [2]byte
		io.ReadFull(r.c, e[:])
		n = int(binary.BigEndian.Uint16(e[:]))
	case 127:
		var e [8]byte
		io.ReadFull(r.c, e[:])
		n = int(binary.BigEndian.Uint64(e[:]))
	}
	p := make([]byte, n)
	_, err := io.ReadFull(r.c, p)
	return h[0] & 0x0F, p, err
}

// expectClose reads until a close frame and returns its code.
func (r *rawWS) expectClose() int {
	r.t.Helper()
	for {
		op, p, err := r.readFrame()
		if err != nil {
			r.t.Fatalf("no close frame: %v", err)
		}
		if op == opClose {
			if len(p) < 2 {
				return closeNoStatus
			}
			return int(binary.BigEndian.Uint16(p))
		}
	}
}

func (r *rawWS) expectError(code string) {
	r.t.Helper()
	op, p, err := r.readFrame()
	if err != nil || op != opText {
		r.t.Fatalf("frame %d %q %v", op, p, err)
	}
	var f frame
	if json.Unmarshal(p, &f); f.Type != typeError || f.Code != code {
		r.t.Fatalf("got %s, want error %s", p, code)
	}
}

// Bad input gets an error frame or a close with a reason, never a panic,
// and leaves no goroutine behind.
func TestBadClientInput(t *testing.T) {
	base := runtime.NumGoroutine()
	func() {
		opts := testOptions()
		n := newNode(t, opts, nil)
		defer n.close()

		r := n.rawDial()
		for _, bad := range []struct {
			frame, code string
		}{
			{`not json`, codeBadFrame},
			{`{"type":"subscribe"`, codeBadFrame},
			{`[]`, codeBadFrame},
			{`{"type":42}`, codeBadFrame},
			{`{"type":"subscribe","channel":["demo/x"]}`, codeBadFrame},
			{`{"type":"subscribe","channel":"demo/x","since":{"epoch":"NOT VALID","offset":1}}`, codeBadFrame},
			{`{"type":"subscribe","channel":"demo/x","since":{"epoch":"abc","offset":-1}}`, codeBadFrame},
			{`{"type":"publish","channel":"demo/x","data":1}`, codeUnknownType},
			{`{"type":"subscribe"}`, codeBadChannel},
			{`{"type":"unsubscribe","channel":"demo/thread-1"}`, codeNotSubscribed},
			{`{"type":"ping","id":"` + strings.Repeat("i", 100) + `"}`, codeBadFrame},
		} {
			r.write(mkFrame(0x81, []byte(bad.frame), true))
			r.expectError(bad.code)
		}
		// Binary frame: an error frame, connection kept.
		r.write(mkFrame(0x82, []byte{1, 2, 3}, true))
		r.expectError(codeBinary)
		// A fragmented text message works.
		r.write(mkFrame(0x01, []byte(`{"type":"pi`), true))
		r.write(mkFrame(0x89, []byte("hi"), true)) // a ping in between
		r.write(mkFrame(0x80, []byte(`ng","id":"frag"}`), true))
		if op, p, _ := r.readFrame(); op != opPong || string(p) != "hi" {
			t.Fatalf("pong %d %q", op, p)
		}
		if op, p, _ := r.readFrame(); op != opText || !strings.Contains(string(p), `"frag"`) {
			t.Fatalf("frame %d %q", op, p)
		}

		closes := []struct {
			name  string
			frame []byte
			code  int
		}{
			{"huge frame", mkFrame(0x81, []byte(strings.Repeat("x", 5000)), true), closeTooBig},
			{"huge announced length", []byte{0x81, 0xFF, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF}, closeTooBig},
			{"unmasked", mkFrame(0x81, []byte(`{"type":"ping"}`), false), closeProtocolError},
			{"reserved bits", mkFrame(0xC1, []byte(`{}`), true), closeProtocolError},
			{"reserved opcode", mkFrame(0x83, []byte(`{}`), true), closeProtocolError},
			{"continuation first", mkFrame(0x80, []byte(`{}`), true), closeProtocolError},
			{"long ping", mkFrame(0x89, make([]byte, 126), true), closeProtocolError},
			{"bad utf-8", mkFrame(0x81, []byte{'"', 0xff, 0xfe, '"'}, true), closeInvalidPayload},
			{"client close", mkFrame(0x88, []byte{0x03, 0xe8}, true), closeNormal},
		}
		for _, tc := range closes {
			r := n.rawDial()
			r.write(tc.frame)
			if got := r.expectClose(); got != tc.code {
				t.Errorf("%s: close %d, want %d", tc.name, got, tc.code)
			}
			r.c.Close()
		}
		// Too many errors end the connection.
		r2 := n.rawDial()
		for range maxClientErrors {
			r2.write(mkFrame(0x81, []byte(`?`), true))
		}
		if got := r2.expectClose(); got != closePolicy {
			t.Fatalf("too many errors: close %d", got)
		}
		r2.c.Close()
		r.c.Close()
		testkit.WaitFor(t, settle, "connections gone", func() bool { return n.ps.connCount() == 0 })
		if got := testutil.ToFloat64(n.ps.met.disconnects.WithLabelValues("protocol_error")); got != 8 {
			t.Fatalf("protocol_error disconnects %v", got)
		}
	}()
	checkGoroutines(t, base)
}

// A websocket that answers nothing (no pong) is found dead and freed; one
// that answers pings stays.
func TestDeadConnectionFreed(t *testing.T) {
	opts := testOptions()
	opts.PingInterval = 100 * time.Millisecond
	n := newNode(t, opts, nil)
	alive := n.mustDial()
	alive.subscribe("demo/thread-1", "", nil)
	done := make(chan struct{})
	go func() { // gorilla answers pings while reading
		defer close(done)
		for {
			if _, _, err := alive.ws.ReadMessage(); err != nil {
				return
			}
		}
	}()
	dead := n.dialSmallBuffer()
	_ = dead
	testkit.WaitFor(t, settle, "dead connection freed", func() bool {
		return testutil.ToFloat64(n.ps.met.disconnects.WithLabelValues("ping_timeout")) == 1
	})
	if n.ps.connCount() != 1 {
		t.Fatalf("%d connections, want the live one", n.ps.connCount())
	}
	alive.ws.Close()
	<-done
}

func TestLimits(t *testing.T) {
	opts := testOptions()
	opts.MaxConnsPerIP = 2
	opts.MaxSubsPerConn = 2
	opts.MaxMessageBytes = 100
	n := newNode(t, opts, nil)
	c := n.mustDial()
	n.sse("channel=demo/thread-1", nil)
	if _, resp, err := n.dial("", nil); err == nil || resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("third connection: %v", err)
	}
	if _, resp := n.sse("channel=demo/thread-1", nil); resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("third sse: %d", resp.StatusCode)
	}
	c.subscribe("demo/thread-1", "", nil)
	c.subscribe("demo/thread-2", "", nil)
	c.subscribe("demo/thread-2", "", nil) // already: confirmed, not counted
	c.send(`{"type":"subscribe","channel":"demo/thread-3"}`)
	c.expect(typeError, codeTooManySubs)
	c.send(`{"type":"unsubscribe","channel":"demo/thread-2","id":"u"}`)
	if f := c.expect(typeUnsubscribed); f.ID != "u" {
		t.Fatalf("%+v", f)
	}
	c.subscribe("demo/thread-3", "", nil)

	post := func(body string) int {
		resp, err := http.Post(n.admin.URL+"/v1/publish", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for body, want := range map[string]int{
		`{"channel":"demo/thread-1","data":"` + strings.Repeat("x", 200) + `"}`:       http.StatusRequestEntityTooLarge,
		`{"channel":"demo/thread-1","data":{"a":` + strings.Repeat(" ", 5000) + `1}}`: http.StatusRequestEntityTooLarge,
		`{"channel":"demo/thread-1","data":{"a":  1}}`:                                http.StatusOK, // compacted: fits
		`{"channel":"demo/thread-1"}`:                                                 http.StatusBadRequest,
		`{"channel":"demo/thread-1","data":nope}`:                                     http.StatusBadRequest,
		`{"channel":"demo/../x","data":1}`:                                            http.StatusBadRequest,
		`{"channel":"nosuch/x","data":1}`:                                             http.StatusNotFound,
		`not json`:                                                                    http.StatusBadRequest,
	} {
		if got := post(body); got != want {
			t.Errorf("publish %.60s: %d, want %d", body, got, want)
		}
	}
	if f := c.expect(typeMessage); string(f.Data) != `{"a":1}` {
		t.Fatalf("%s", f.Data)
	}
	if _, resp := n.sse("", nil); resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("sse without channel: %d", resp.StatusCode)
	}
}
