package h2

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

const (
	prefaceLen = len(http2.ClientPreface)
	// outHigh is how much output may gather before writers wait for it to
	// drain and the reader stops reading: a bound on what one connection
	// holds, and the back-pressure against control-frame floods.
	outHigh = 64 << 10
	// maxWindow is the largest flow-control window (2^31-1).
	maxWindow = 1<<31 - 1
	// peerMaxFrame is the frame size a client accepts until it says more
	// (RFC 9113 SETTINGS_MAX_FRAME_SIZE's initial value).
	peerMaxFrame = 16 << 10
)

// errConnClosed is what a handler's Write returns once the connection is
// gone.
var errConnClosed = errors.New("h2: connection closed")

// errStreamReset is what a handler's Write or a body's Read returns once
// the client has reset the stream.
var errStreamReset = errors.New("h2: stream reset by the client")

// conn is one HTTP/2 connection. Its serve goroutine reads and handles
// every frame; handler goroutines only send (through the output buffer)
// and read request bodies (from their stream's buffer). Everything they
// share is under mu.
type conn struct {
	s      *Server
	nc     net.Conn
	tls    *tls.ConnectionState
	remote string
	ctx    context.Context
	cancel context.CancelFunc

	// Read side: the serve goroutine only.
	br         *bufio.Reader
	fr         *http2.Framer
	lastStream uint32     // highest client stream opened
	refused    int        // streams refused since the last one completed
	fast       FastAnswer // reused by every fast answer
	deadline   time.Time  // read deadline in force (zero: none)

	handlers sync.WaitGroup

	mu   sync.Mutex
	cond *sync.Cond // connection-wide changes: output drained, conn window, closed
	// streams holds the open and half-closed streams; active counts them
	// plus the reset ones whose handler still runs (the concurrency limit).
	streams map[uint32]*stream
	active  int

	sendWin     int64 // connection send window
	peerInitWin int64 // the client's SETTINGS_INITIAL_WINDOW_SIZE
	maxFrame    int   // the client's SETTINGS_MAX_FRAME_SIZE
	recvWin     int64 // connection receive window left
	recvUnacked int64 // consumed, not yet returned with WINDOW_UPDATE

	enc    *hpack.Encoder
	encBuf bytes.Buffer

	out     []byte // frames to send (nil: none, a pool buffer on first use)
	cork    Corker // nc, when it can gather the TLS records of a write
	writing bool   // a goroutine is writing out
	werr    error  // the first write error; then nothing more is sent
	closed  bool   // the connection is closed (or closing): no more frames

	goingAway bool // GOAWAY sent (or being sent): no new streams
	peerGone  bool // the client sent GOAWAY
}

func newConn(s *Server, nc net.Conn, state *tls.ConnectionState) *conn {
	c := &conn{s: s, nc: nc, tls: state, remote: nc.RemoteAddr().String(),
		streams: map[uint32]*stream{}, sendWin: 65535, peerInitWin: 65535, maxFrame: peerMaxFrame,
		recvWin: int64(s.opts.ConnWindow)}
	c.cond = sync.NewCond(&c.mu)
	c.cork, _ = nc.(Corker)
	ctx := context.Background()
	if s.opts.ConnContext != nil {
		ctx = s.opts.ConnContext(ctx, nc)
	}
	c.ctx, c.cancel = context.WithCancel(ctx)
	// 4 KiB, like net/http's: it stays with an idle connection, and a DATA
	// frame larger than it is read past it, straight into the Framer's buffer.
	c.br = bufio.NewReaderSize(nc, 4<<10)
	c.fr = http2.NewFramer(nil, c.br)
	c.fr.SetReuseFrames()
	c.fr.SetMaxReadFrameSize(peerMaxFrame) // the default we advertise
	c.fr.MaxHeaderListSize = s.opts.MaxHeaderListSize
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.enc = hpack.NewEncoder(&c.encBuf)
	return c
}

// serve runs the connection: the preface, then frames until the
// connection ends; it returns once every handler has.
func (c *conn) serve() {
	defer func() {
		c.closeNow()
		c.handlers.Wait()
		c.cancel()
	}()
	code, err := c.start()
	if err == nil {
		code, err = c.readLoop()
	}
	if err != nil && code != http2.ErrCodeNo {
		if c.s.opts.OnConnError != nil {
			c.s.opts.OnConnError(code)
		}
		c.s.log.Debug("http2 connection error", "remote", c.remote, "code", code.String(), "err", err)
	}
	c.mu.Lock()
	c.goAwayLocked(code)
	c.flushLocked()
	for c.writing && !c.closed {
		c.cond.Wait() // a handler's goroutine is sending the last bytes
	}
	// Not when the client closed or broke the connection: then there is
	// nothing to wait for.
	linger := !c.closed && c.werr == nil && (err == nil || code != http2.ErrCodeNo || errors.Is(err, os.ErrDeadlineExceeded))
	c.mu.Unlock()
	if linger {
		// Closing with the client's frames (window updates, its own
		// GOAWAY, the rest of a flood) unread makes the kernel send a
		// reset, which can destroy the last responses and the GOAWAY in
		// flight. So end the sending side (TLS close_notify, which a
		// client reads as the end), then read and drop what the client
		// still sends until it closes, for a second at most.
		if cw, ok := c.nc.(interface{ CloseWrite() error }); ok {
			_ = c.nc.SetWriteDeadline(time.Now().Add(time.Second))
			_ = cw.CloseWrite()
		}
		_ = c.nc.SetReadDeadline(time.Now().Add(time.Second))
		_, _ = io.Copy(io.Discard, c.br)
	}
}

// start reads the client's preface and sends the server's.
func (c *conn) start() (http2.ErrCode, error) {
	wait := c.s.opts.IdleTimeout
	if wait <= 0 {
		wait = 10 * time.Second
	}
	_ = c.nc.SetReadDeadline(time.Now().Add(wait))
	var p [prefaceLen]byte
	if _, err := io.ReadFull(c.br, p[:]); err != nil {
		return http2.ErrCodeNo, err
	}
	if string(p[:]) != http2.ClientPreface {
		return http2.ErrCodeProtocol, errors.New("bad connection preface")
	}
	o := &c.s.opts
	c.mu.Lock()
	c.writeSettings(
		http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: o.MaxConcurrentStreams},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: uint32(o.StreamWindow)},
		http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: o.MaxHeaderListSize},
	)
	if o.ConnWindow > 65535 {
		c.writeWindowUpdate(0, uint32(o.ConnWindow-65535))
	}
	c.mu.Unlock()
	// The first frame must be the client's SETTINGS.
	f, err := c.fr.ReadFrame()
	if err != nil {
		return frameErrCode(err), err
	}
	sf, ok := f.(*http2.SettingsFrame)
	if !ok || sf.IsAck() {
		return http2.ErrCodeProtocol, errors.New("first frame is not SETTINGS")
	}
	if code, err := c.onSettings(sf); err != nil {
		return code, err
	}
	return http2.ErrCodeNo, nil
}

// readLoop handles frames until the connection ends. Before it might
// block on a read it flushes the answers gathered so far, so a batch of
// requests read together leaves in one write.
func (c *conn) readLoop() (http2.ErrCode, error) {
	for {
		if c.br.Buffered() == 0 {
			c.mu.Lock()
			c.flushLocked()
			// Back-pressure: a client that sends faster than it reads what
			// it asked for waits here until its answers have gone.
			for len(c.out) >= outHigh && c.writing && !c.closed {
				c.cond.Wait()
			}
			done := c.closed || (c.goingAway || c.peerGone) && c.active == 0
			if !done {
				// Under mu, so that it cannot undo the wake-up of a
				// streamGone that comes after this check.
				c.setReadDeadline(c.active == 0)
			}
			c.mu.Unlock()
			if done {
				return http2.ErrCodeNo, nil
			}
		}
		f, err := c.fr.ReadFrame()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				// A stream error: the frame was read whole, HPACK state
				// included, and the connection goes on.
				c.mu.Lock()
				if _, ok := f.(*http2.MetaHeadersFrame); ok && se.StreamID > c.lastStream && se.StreamID%2 == 1 {
					c.lastStream = se.StreamID // the stream was opened, and is now closed
				}
				c.resetStream(se.StreamID, se.Code)
				c.mu.Unlock()
				continue
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				c.mu.Lock()
				more := c.goingAway && c.active > 0 && !c.closed
				if more {
					// Shutdown woke the reader: keep reading (window
					// updates, bodies) until the streams end.
					c.deadline = time.Time{}
					_ = c.nc.SetReadDeadline(time.Time{})
				}
				c.mu.Unlock()
				if more {
					continue
				}
				return http2.ErrCodeNo, err
			}
			return frameErrCode(err), err
		}
		if code, err := c.onFrame(f); err != nil {
			return code, err
		}
	}
}

// setReadDeadline puts the idle timeout on reads while no stream is open,
// and none while some are (their handlers and write deadlines bound them).
func (c *conn) setReadDeadline(idle bool) {
	var want time.Time
	if idle && c.s.opts.IdleTimeout > 0 {
		want = time.Now().Add(c.s.opts.IdleTimeout)
	}
	if want.IsZero() && c.deadline.IsZero() {
		return
	}
	// Moving an idle deadline by less than a second is not worth a timer
	// update per frame.
	if !want.IsZero() && !c.deadline.IsZero() && want.Sub(c.deadline) < time.Second {
		return
	}
	c.deadline = want
	_ = c.nc.SetReadDeadline(want)
}

// frameErrCode is the GOAWAY code for a read error.
func frameErrCode(err error) http2.ErrCode {
	var ce http2.ConnectionError
	switch {
	case errors.As(err, &ce):
		return http2.ErrCode(ce)
	case errors.Is(err, http2.ErrFrameTooLarge):
		return http2.ErrCodeFrameSize
	}
	return http2.ErrCodeNo // the connection broke: nothing to tell
}

// onFrame handles one frame; an error ends the connection with its code.
func (c *conn) onFrame(f http2.Frame) (http2.ErrCode, error) {
	switch f := f.(type) {
	case *http2.MetaHeadersFrame:
		return c.onHeaders(f)
	case *http2.DataFrame:
		return c.onData(f)
	case *http2.WindowUpdateFrame:
		return c.onWindowUpdate(f)
	case *http2.SettingsFrame:
		if f.IsAck() {
			return http2.ErrCodeNo, nil
		}
		return c.onSettings(f)
	case *http2.PingFrame:
		if !f.IsAck() {
			c.mu.Lock()
			c.writePing(f.Data)
			c.mu.Unlock()
		}
	case *http2.RSTStreamFrame:
		return c.onRST(f)
	case *http2.PriorityFrame:
		if f.StreamDep == f.StreamID {
			c.mu.Lock()
			c.resetStream(f.StreamID, http2.ErrCodeProtocol)
			c.mu.Unlock()
		}
	case *http2.GoAwayFrame:
		c.mu.Lock()
		c.peerGone = true
		c.mu.Unlock()
	case *http2.PushPromiseFrame:
		return http2.ErrCodeProtocol, errors.New("PUSH_PROMISE from a client")
	}
	// Unknown frame types are ignored (RFC 9113 §5.5).
	return http2.ErrCodeNo, nil
}

func (c *conn) onSettings(f *http2.SettingsFrame) (http2.ErrCode, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	err := f.ForeachSetting(func(st http2.Setting) error {
		if err := st.Valid(); err != nil {
			return err
		}
		switch st.ID {
		case http2.SettingHeaderTableSize:
			c.enc.SetMaxDynamicTableSizeLimit(st.Val)
		case http2.SettingInitialWindowSize:
			delta := int64(st.Val) - c.peerInitWin
			for _, s := range c.streams {
				if s.sendWin+delta > maxWindow {
					return http2.ConnectionError(http2.ErrCodeFlowControl)
				}
			}
			for _, s := range c.streams {
				s.sendWin += delta
			}
			c.peerInitWin = int64(st.Val)
		case http2.SettingMaxFrameSize:
			c.maxFrame = int(st.Val)
		}
		return nil
	})
	if err != nil {
		return frameErrCode(err), err
	}
	c.writeSettingsAck()
	c.wakeSenders()
	return http2.ErrCodeNo, nil
}

func (c *conn) onWindowUpdate(f *http2.WindowUpdateFrame) (http2.ErrCode, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if f.StreamID == 0 {
		if c.sendWin+int64(f.Increment) > maxWindow {
			return http2.ErrCodeFlowControl, errors.New("connection window overflow")
		}
		c.sendWin += int64(f.Increment)
		c.wakeSenders()
		return http2.ErrCodeNo, nil
	}
	st := c.streams[f.StreamID]
	if st == nil {
		if f.StreamID > c.lastStream {
			return http2.ErrCodeProtocol, errors.New("WINDOW_UPDATE on an idle stream")
		}
		return http2.ErrCodeNo, nil // a closed stream: late, harmless
	}
	if st.sendWin+int64(f.Increment) > maxWindow {
		c.resetStream(st.id, http2.ErrCodeFlowControl)
		return http2.ErrCodeNo, nil
	}
	st.sendWin += int64(f.Increment)
	st.cond.Broadcast()
	return http2.ErrCodeNo, nil
}

func (c *conn) onRST(f *http2.RSTStreamFrame) (http2.ErrCode, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.streams[f.StreamID]
	if st == nil {
		if f.StreamID > c.lastStream {
			return http2.ErrCodeProtocol, errors.New("RST_STREAM on an idle stream")
		}
		return http2.ErrCodeNo, nil
	}
	st.resetErr = errStreamReset
	c.closeStream(st)
	return http2.ErrCodeNo, nil
}

func (c *conn) onData(f *http2.DataFrame) (http2.ErrCode, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := int64(f.Length) // padding included: it counts against the windows
	if n > c.recvWin {
		return http2.ErrCodeFlowControl, errors.New("DATA beyond the connection window")
	}
	c.recvWin -= n
	st := c.streams[f.StreamID]
	if st == nil || st.remoteEnded {
		if st == nil && f.StreamID > c.lastStream {
			return http2.ErrCodeProtocol, errors.New("DATA on an idle stream")
		}
		c.returnConnWindow(n)
		c.resetStream(f.StreamID, http2.ErrCodeStreamClosed)
		return http2.ErrCodeNo, nil
	}
	if n > st.recvWin {
		c.returnConnWindow(n)
		c.resetStream(st.id, http2.ErrCodeFlowControl)
		return http2.ErrCodeNo, nil
	}
	st.recvWin -= n
	data := f.Data()
	if pad := n - int64(len(data)); pad > 0 {
		// Padding is never read by anyone: return it at once.
		c.returnConnWindow(pad)
		st.recvWin += pad
		c.writeWindowUpdate(st.id, uint32(pad))
	}
	st.received += int64(len(data))
	if st.declared >= 0 && (st.received > st.declared || f.StreamEnded() && st.received != st.declared) {
		c.returnConnWindow(int64(len(data)))
		c.resetStream(st.id, http2.ErrCodeProtocol)
		return http2.ErrCodeNo, nil
	}
	if st.bodyClosed {
		c.returnConnWindow(int64(len(data)))
	} else {
		st.buf = append(st.buf, data...)
	}
	if f.StreamEnded() {
		c.remoteEnd(st)
	}
	st.cond.Broadcast()
	return http2.ErrCodeNo, nil
}

// remoteEnd marks the end of the client's side of st.
func (c *conn) remoteEnd(st *stream) {
	st.remoteEnded = true
	if st.localEnded {
		c.closeStream(st)
	}
}

// returnConnWindow gives n consumed bytes back to the client's connection
// window, in WINDOW_UPDATEs of at least a quarter window.
func (c *conn) returnConnWindow(n int64) {
	c.recvUnacked += n
	if c.recvUnacked >= int64(c.s.opts.ConnWindow)/4 {
		c.writeWindowUpdate(0, uint32(c.recvUnacked))
		c.recvWin += c.recvUnacked
		c.recvUnacked = 0
	}
}

// resetStream sends RST_STREAM for id and closes it if it is open. The
// handler, if any, sees its writes and body reads fail.
func (c *conn) resetStream(id uint32, code http2.ErrCode) {
	if id == 0 {
		return
	}
	c.writeRST(id, code)
	if st := c.streams[id]; st != nil {
		if st.resetErr == nil {
			st.resetErr = errStreamReset
		}
		c.closeStream(st)
	}
}

// closeStream removes st from the open streams; it stops counting against
// the concurrency limit once its handler (if any) has returned too.
func (c *conn) closeStream(st *stream) {
	if st.closed {
		return
	}
	st.closed = true
	st.remoteEnded, st.localEnded = true, true
	delete(c.streams, st.id)
	if !st.handlerRunning {
		c.streamGone()
	}
	// Bytes the handler never read go back to the connection window.
	if len(st.buf) > 0 {
		c.returnConnWindow(int64(len(st.buf)))
		st.buf = nil
	}
	st.bodyClosed = true
	if st.cancel != nil {
		st.cancel()
	}
	st.cond.Broadcast()
	c.cond.Broadcast()
}

// streamGone takes a stream off the concurrency count. The last one of a
// connection that is going away wakes the reader, which may be waiting
// for a frame that will not come, to end the connection.
func (c *conn) streamGone() {
	c.active--
	if c.active == 0 && (c.goingAway || c.peerGone) {
		_ = c.nc.SetReadDeadline(time.Now())
	}
}

// wakeSenders tells every waiting sender that a window may have opened.
func (c *conn) wakeSenders() {
	c.cond.Broadcast()
	for _, st := range c.streams {
		st.cond.Broadcast()
	}
}

// goAway starts a graceful close (Shutdown): GOAWAY with the last stream
// let in, the streams finish, then the reader ends the connection.
func (c *conn) goAway() {
	c.mu.Lock()
	c.goAwayLocked(http2.ErrCodeNo)
	c.flushLocked()
	c.mu.Unlock()
	// Wake the reader, which may be waiting for a frame that never comes.
	_ = c.nc.SetReadDeadline(time.Now())
}

// goAwayLocked sends GOAWAY with code and the last stream let in, once
// for a graceful close (an error code may follow one).
func (c *conn) goAwayLocked(code http2.ErrCode) {
	if c.closed || c.goingAway && code == http2.ErrCodeNo {
		return
	}
	c.goingAway = true
	c.writeGoAway(c.lastStream, code, nil)
}

// failStreamsLocked makes every open stream's writes and reads fail with
// err (a reset keeps its own error).
func (c *conn) failStreamsLocked(err error) {
	for _, st := range c.streams {
		if st.resetErr == nil {
			st.resetErr = err
		}
		st.cond.Broadcast()
	}
}

// closeNow closes the connection: handlers see their writes fail and their
// contexts end.
func (c *conn) closeNow() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	c.failStreamsLocked(errConnClosed)
	writing := c.writing
	c.cond.Broadcast()
	c.mu.Unlock()
	c.cancel()
	if writing {
		// A write in progress ends with an error and its goroutine moves on.
		_ = c.nc.SetWriteDeadline(time.Now())
	}
	_ = c.nc.Close()
}

// flushLocked writes the output buffer unless another goroutine is already
// doing it, and keeps writing until it is empty. Called with mu held; mu is
// released during each write.
func (c *conn) flushLocked() {
	if c.writing {
		return
	}
	c.writing = true
	for len(c.out) > 0 && c.werr == nil && !c.closed {
		// Frames appended during the write go to a buffer of their own
		// (frameHeader takes one from the pool); this one goes back after.
		buf := c.out
		c.out = nil
		c.mu.Unlock()
		_ = c.nc.SetWriteDeadline(time.Now().Add(c.s.opts.WriteTimeout))
		if c.cork != nil {
			// TLS makes a record of each 16 KiB and writes each on its
			// own: corked, the batch leaves in one system call.
			c.cork.Cork()
		}
		_, err := c.nc.Write(buf)
		if c.cork != nil {
			if uerr := c.cork.Uncork(); err == nil {
				err = uerr
			}
		}
		c.mu.Lock()
		c.s.putBuf(buf)
		if err != nil {
			c.werr = err
		}
		c.cond.Broadcast()
	}
	c.writing = false
	if c.werr != nil && !c.closed {
		// The peer is gone or stalled: wake the reader so the connection
		// ends (its close fails every handler's writes).
		_ = c.nc.SetReadDeadline(time.Now())
		c.goingAway = true
		c.failStreamsLocked(errConnClosed)
	}
	// Nothing more will be written (or nothing is left): the buffer goes
	// back to the pool rather than stay with a connection that may not
	// write again for minutes.
	if c.out != nil {
		c.s.putBuf(c.out)
		c.out = nil
	}
}

// sendErr is why nothing more can be sent on st, or nil.
func (c *conn) sendErr(st *stream) error {
	switch {
	case st.resetErr != nil:
		return st.resetErr
	case c.closed || c.werr != nil:
		return errConnClosed
	}
	return nil
}
