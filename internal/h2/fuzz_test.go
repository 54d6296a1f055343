package h2

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// fuzzFastBody is the fast answer's body: larger than a client's initial
// window (64 KiB), so a fast answer can also wait for WINDOW_UPDATEs as a
// pending stream.
var fuzzFastBody = bytes.Repeat([]byte("fast "), 14<<10)

// fuzzPageBody is the handler's body: past what the writer holds back, so
// the handler sends its header before its body and waits for windows.
var fuzzPageBody = bytes.Repeat([]byte("page "), 4<<10)

// fuzzPipeConn is the server's side of two net.Pipes, one each way. With
// one pipe, a client that ends its side also ends the server's writes;
// with two, it closes only the pipe the server reads (the server reads
// EOF) and goes on reading what the server sends: the half-close of a TCP
// connection, without the sockets that a fuzzer's many executions would
// leave in TIME_WAIT.
type fuzzPipeConn struct{ r, w net.Conn }

func (c *fuzzPipeConn) Read(p []byte) (int, error)  { return c.r.Read(p) }
func (c *fuzzPipeConn) Write(p []byte) (int, error) { return c.w.Write(p) }
func (c *fuzzPipeConn) Close() error {
	c.r.Close()
	return c.w.Close()
}
func (c *fuzzPipeConn) LocalAddr() net.Addr                { return c.r.LocalAddr() }
func (c *fuzzPipeConn) RemoteAddr() net.Addr               { return c.r.RemoteAddr() }
func (c *fuzzPipeConn) SetReadDeadline(t time.Time) error  { return c.r.SetReadDeadline(t) }
func (c *fuzzPipeConn) SetWriteDeadline(t time.Time) error { return c.w.SetWriteDeadline(t) }
func (c *fuzzPipeConn) SetDeadline(t time.Time) error {
	c.r.SetDeadline(t)
	return c.w.SetDeadline(t)
}

// fuzzSeed is the frames that build writes, as the bytes that follow the
// client's preface and first SETTINGS. block HPACK-encodes name/value
// pairs, all with one encoder, so the blocks of a seed index each other's
// dynamic table entries as a real client's do.
func fuzzSeed(build func(fr *http2.Framer, block func(fields ...string) []byte)) []byte {
	var out, buf bytes.Buffer
	fr := http2.NewFramer(&out, nil)
	fr.AllowIllegalWrites = true // the bad frames are seeds too
	enc := hpack.NewEncoder(&buf)
	build(fr, func(fields ...string) []byte {
		buf.Reset()
		for i := 0; i+1 < len(fields); i += 2 {
			enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
		}
		return bytes.Clone(buf.Bytes())
	})
	return out.Bytes()
}

// fuzzReq is a request's fields: the pseudo-fields, then extra pairs.
func fuzzReq(method, path string, extra ...string) []string {
	return append([]string{":method", method, ":scheme", "https", ":authority", "example.test", ":path", path}, extra...)
}

func fuzzSeeds() [][]byte {
	type hp = http2.HeadersFrameParam
	return [][]byte{
		// GET to the handler; GET and HEAD answered fast, the GET's body past
		// the initial window; a small fast answer.
		fuzzSeed(func(fr *http2.Framer, block func(...string) []byte) {
			fr.WriteHeaders(hp{StreamID: 1, BlockFragment: block(fuzzReq("GET", "/page")...), EndStream: true, EndHeaders: true})
			fr.WriteHeaders(hp{StreamID: 3, BlockFragment: block(fuzzReq("GET", "/fast")...), EndStream: true, EndHeaders: true})
			fr.WriteHeaders(hp{StreamID: 5, BlockFragment: block(fuzzReq("HEAD", "/fast")...), EndStream: true, EndHeaders: true})
			fr.WriteHeaders(hp{StreamID: 7, BlockFragment: block(fuzzReq("GET", "/small", "accept", "*/*")...), EndStream: true, EndHeaders: true})
		}),
		// The handler's 103 and its Flush and trailer.
		fuzzSeed(func(fr *http2.Framer, block func(...string) []byte) {
			fr.WriteHeaders(hp{StreamID: 1, BlockFragment: block(fuzzReq("GET", "/early")...), EndStream: true, EndHeaders: true})
			fr.WriteHeaders(hp{StreamID: 3, BlockFragment: block(fuzzReq("GET", "/flush")...), EndStream: true, EndHeaders: true})
		}),
		// A header list past MaxHeaderListSize (431), then a request.
		fuzzSeed(func(fr *http2.Framer, block func(...string) []byte) {
			v := strings.Repeat("b", 600)
			fr.WriteHeaders(hp{StreamID: 1, BlockFragment: block(fuzzReq("GET", "/page", "x-a", v, "x-b", v)...), EndStream: true, EndHeaders: true})
			fr.WriteHeaders(hp{StreamID: 3, BlockFragment: block(fuzzReq("GET", "/page")...), EndStream: true, EndHeaders: true})
		}),
		// POST with a declared length, its body in DATA frames (one padded).
		fuzzSeed(func(fr *http2.Framer, block func(...string) []byte) {
			fr.WriteHeaders(hp{StreamID: 1, BlockFragment: block(fuzzReq("POST", "/up", "content-length", "10")...), EndHeaders: true})
			fr.WriteData(1, false, []byte("hello"))
			fr.WriteDataPadded(1, true, []byte("world"), make([]byte, 7))
		}),
		// POST with trailers.
		fuzzSeed(func(fr *http2.Framer, block func(...string) []byte) {
			fr.WriteHeaders(hp{StreamID: 1, BlockFragment: block(fuzzReq("POST", "/up", "trailer", "x-sum", "te", "trailers")...), EndHeaders: true})
			fr.WriteData(1, false, []byte("body"))
			fr.WriteHeaders(hp{StreamID: 1, BlockFragment: block("x-sum", "1"), EndStream: true, EndHeaders: true})
		}),
		// PING, and a PING ack the server never asked for.
		fuzzSeed(func(fr *http2.Framer, block func(...string) []byte) {
			fr.WritePing(false, [8]byte{1, 2, 3, 4, 5, 6, 7, 8})
			fr.WritePing(true, [8]byte{})
		}),
		// A zero initial window: the answers wait for WINDOW_UPDATEs, then
		// a SETTINGS that opens every stream's window at once.
		fuzzSeed(func(fr *http2.Framer, block func(...string) []byte) {
			fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0},
				http2.Setting{ID: http2.SettingMaxFrameSize, Val: 1 << 14},
				http2.Setting{ID: http2.SettingHeaderTableSize, Val: 0})
			fr.WriteHeaders(hp{StreamID: 1, BlockFragment: block(fuzzReq("GET", "/fast")...), EndStream: true, EndHeaders: true})
			fr.WriteHeaders(hp{StreamID: 3, BlockFragment: block(fuzzReq("GET", "/page")...), EndStream: true, EndHeaders: true})
			fr.WriteWindowUpdate(1, 100)
			fr.WriteWindowUpdate(0, 1<<20)
			fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 65535})
			fr.WriteSettingsAck()
		}),
		// A request reset by the client, then WINDOW_UPDATE and DATA on it.
		fuzzSeed(func(fr *http2.Framer, block func(...string) []byte) {
			fr.WriteHeaders(hp{StreamID: 1, BlockFragment: block(fuzzReq("POST", "/up")...), EndHeaders: true})
			fr.WriteRSTStream(1, http2.ErrCodeCancel)
			fr.WriteWindowUpdate(1, 1)
			fr.WriteData(1, true, []byte("late"))
		}),
		// PRIORITY frames, one depending on itself, and HEADERS with a
		// priority.
		fuzzSeed(func(fr *http2.Framer, block func(...string) []byte) {
			fr.WritePriority(1, http2.PriorityParam{StreamDep: 0, Weight: 15})
			fr.WritePriority(3, http2.PriorityParam{StreamDep: 3})
			fr.WriteHeaders(hp{StreamID: 5, BlockFragment: block(fuzzReq("GET", "/page")...), EndStream: true, EndHeaders: true,
				Priority: http2.PriorityParam{StreamDep: 1, Exclusive: true, Weight: 200}})
		}),
		// A header block in HEADERS and two CONTINUATIONs.
		fuzzSeed(func(fr *http2.Framer, block func(...string) []byte) {
			b := block(fuzzReq("GET", "/page", "x-long", strings.Repeat("v", 100), "cookie", "a=1", "cookie", "b=2")...)
			fr.WriteHeaders(hp{StreamID: 1, BlockFragment: b[:10], EndStream: true})
			fr.WriteContinuation(1, false, b[10:40])
			fr.WriteContinuation(1, true, b[40:])
		}),
		// GOAWAY from the client, then a request past it.
		fuzzSeed(func(fr *http2.Framer, block func(...string) []byte) {
			fr.WriteHeaders(hp{StreamID: 1, BlockFragment: block(fuzzReq("GET", "/page")...), EndStream: true, EndHeaders: true})
			fr.WriteGoAway(1, http2.ErrCodeNo, []byte("bye"))
			fr.WriteHeaders(hp{StreamID: 3, BlockFragment: block(fuzzReq("GET", "/page")...), EndStream: true, EndHeaders: true})
		}),
		// More streams than MaxConcurrentStreams, each holding its place
		// with a body that never ends.
		fuzzSeed(func(fr *http2.Framer, block func(...string) []byte) {
			for id := uint32(1); id < 40; id += 2 {
				fr.WriteHeaders(hp{StreamID: id, BlockFragment: block(fuzzReq("POST", "/up")...), EndHeaders: true})
			}
		}),
		// Bad frames: DATA on stream 0, HEADERS on an even stream, a frame
		// longer than the maximum, a SETTINGS of a bad length, garbage HPACK.
		fuzzSeed(func(fr *http2.Framer, block func(...string) []byte) {
			fr.WriteRawFrame(http2.FrameData, 0, 0, []byte("x"))
		}),
		fuzzSeed(func(fr *http2.Framer, block func(...string) []byte) {
			fr.WriteHeaders(hp{StreamID: 2, BlockFragment: block(fuzzReq("GET", "/page")...), EndStream: true, EndHeaders: true})
		}),
		{0x01, 0x00, 0x00, byte(http2.FrameData), 0, 0, 0, 0, 1},
		fuzzSeed(func(fr *http2.Framer, block func(...string) []byte) {
			fr.WriteRawFrame(http2.FrameSettings, 0, 0, []byte{0, 4, 0, 0, 0})
		}),
		fuzzSeed(func(fr *http2.Framer, block func(...string) []byte) {
			fr.WriteHeaders(hp{StreamID: 1, BlockFragment: []byte{0xff, 0xff, 0xff, 0xff}, EndStream: true, EndHeaders: true})
		}),
	}
}

// quietPeriod is how long the client waits, once it has sent everything,
// for the server to send more before it ends its side: long enough for
// handlers to run and answer, short enough for many executions a second.
const quietPeriod = 20 * time.Millisecond

// FuzzConn feeds a connection arbitrary bytes after a valid preface and
// SETTINGS, then a GOAWAY (a client that is done), and ends its side once
// the server has answered with its own GOAWAY or gone quiet. Whatever the
// bytes: the server must not panic, every frame it sends must parse (a
// broken frame or header block would break every client), and ServeConn
// must return, every handler with it, once the client has gone.
func FuzzConn(f *testing.F) {
	for _, s := range fuzzSeeds() {
		f.Add(s)
	}
	var pre, post bytes.Buffer
	io.WriteString(&pre, http2.ClientPreface)
	http2.NewFramer(&pre, nil).WriteSettings()
	http2.NewFramer(&post, nil).WriteGoAway(0, http2.ErrCodeNo, nil)
	// The handler reads the body and answers; two paths take the writer's
	// other ways out (an informational response; Flush and a trailer).
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		switch r.URL.Path {
		case "/early":
			w.Header().Set("Link", "</a.css>; rel=preload")
			w.WriteHeader(http.StatusEarlyHints)
		case "/flush":
			w.Header().Set("Trailer", "X-Sum")
			w.Write([]byte("head"))
			http.NewResponseController(w).Flush()
			w.Header().Set("X-Sum", "1")
		}
		w.Header().Set("Content-Type", "text/plain")
		w.Write(fuzzPageBody)
	})
	fast := func(req *FastRequest, a *FastAnswer) bool {
		switch req.Path {
		case "/fast":
			a.Block = AppendLiteral(a.Block, hpack.HeaderField{Name: "content-type", Value: "text/plain"})
			a.Fields = append(a.Fields, hpack.HeaderField{Name: "x-n", Value: "1"})
			a.Body = fuzzFastBody
			return true
		case "/small":
			a.Body = []byte("small")
			return true
		}
		return false
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		// A server of its own each time, so an input's outcome depends on
		// that input alone. Low limits let short inputs reach what is past
		// them: refused streams, GOAWAY ENHANCE_YOUR_CALM, 431.
		srv := New(Options{Handler: handler, Fast: fast, MaxHeaderListSize: 1 << 10,
			MaxConcurrentStreams: 4, IdleTimeout: 200 * time.Millisecond, WriteTimeout: 2 * time.Second})
		inS, inC := net.Pipe()
		outS, outC := net.Pipe()
		served := make(chan struct{})
		go func() {
			defer close(served)
			srv.ServeConn(&fuzzPipeConn{r: inS, w: outS}, nil) // no TLS: a nil state
		}()
		// net.Pipe is synchronous: the server's writes wait for this reader.
		activity := make(chan struct{}, 1)
		goAway := make(chan struct{})
		readErr := make(chan error, 1)
		go func() { readErr <- fuzzReadFrames(outC, activity, goAway) }()
		msg := slices.Concat(pre.Bytes(), in, fuzzPad(in), post.Bytes())
		wrote := make(chan struct{})
		go func() {
			defer close(wrote)
			defer inC.Close()
			// A server that ended the connection fails this write: one of
			// the outcomes fuzzed, not an error.
			if _, err := inC.Write(msg); err != nil {
				return
			}
			quiet := time.NewTimer(quietPeriod)
			defer quiet.Stop()
			for {
				select {
				case <-activity:
					quiet.Reset(quietPeriod)
					continue
				case <-goAway:
				case <-quiet.C:
				}
				return
			}
		}()
		timeout := time.NewTimer(5 * time.Second)
		defer timeout.Stop()
		for _, ch := range []chan struct{}{served, wrote} {
			select {
			case <-ch:
			case <-timeout.C:
				buf := make([]byte, 1<<20)
				buf = buf[:runtime.Stack(buf, true)]
				t.Fatalf("ServeConn still running 5 s after the input ended (input %d bytes)\n%s", len(in), buf)
			}
		}
		if err := <-readErr; err != nil {
			t.Fatalf("the server sent a bad frame: %v", err)
		}
	})
}

// fuzzPad is the zeros that complete in's last frame when in ends within
// one, so that the GOAWAY after it is read as a frame of its own: without
// them the server would wait for the rest of the frame until the client
// gives up (the quiet period), slowing every execution of such an input.
func fuzzPad(in []byte) []byte {
	for len(in) > 0 {
		var hdr [9]byte // a header cut short ends in zeros
		k := copy(hdr[:], in)
		n := int(hdr[0])<<16 | int(hdr[1])<<8 | int(hdr[2])
		switch {
		case n > peerMaxFrame:
			return nil // the server ends the connection at this header
		case k < 9:
			return make([]byte, 9-k+n)
		case 9+n > len(in):
			return make([]byte, 9+n-len(in))
		}
		in = in[9+n:]
	}
	return nil
}

// fuzzReadFrames reads what the server sends on c, as a client would,
// until the server closes it. It tells activity of each frame and closes
// goAway at the server's GOAWAY. A connection cut within a frame is the
// server closing; any other error is a frame no client could read.
func fuzzReadFrames(c net.Conn, activity chan<- struct{}, goAway chan<- struct{}) error {
	defer c.Close()
	fr := http2.NewFramer(nil, c)
	fr.SetMaxReadFrameSize(1<<24 - 1) // what a client may allow in its SETTINGS
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	sawGoAway := false
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			io.Copy(io.Discard, c) // the server's writes must not wait on this reader
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return nil
			}
			return err
		}
		select {
		case activity <- struct{}{}:
		default:
		}
		if _, ok := f.(*http2.GoAwayFrame); ok && !sawGoAway {
			sawGoAway = true
			close(goAway)
		}
	}
}
