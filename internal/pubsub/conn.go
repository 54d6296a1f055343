package pubsub

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unicode/utf8"
)

type connKind uint8

const (
	kindWS connKind = iota
	kindSSE
)

func (k connKind) String() string {
	if k == kindSSE {
		return "sse"
	}
	return "ws"
}

// A connection's life: open (subscribes, receives) -> closing (a close frame
// or the last SSE events are on their way; nothing else is queued) ->
// closed (subscriptions gone, socket closed). closed is final.
type connState uint8

const (
	stateOpen connState = iota
	stateClosing
	stateClosed
)

type qitem struct {
	m    *outMsg
	live bool // a fan-out delivery, counted for the fan-out latency
}

// conn is one subscriber connection, websocket or SSE.
//
// Writing: frames are appended to q under mu, never written there. A
// websocket has no writer goroutine while its queue is empty; the first
// frame queued starts one, which writes until the queue is empty and exits.
// An SSE stream's handler goroutine is its writer and is woken by notify.
//
// Reading (websocket): at most one goroutine reads at a time. With the
// poller, none while nothing arrives.
type conn struct {
	p      *PubSub
	id     uint64
	kind   connKind
	ip     netip.Addr
	origin string
	nc     net.Conn        // websocket after the handshake
	raw    syscall.RawConn // websocket watched by the poller

	lastRead   atomic.Int64 // unix nanoseconds of the last bytes read (websocket)
	writeSince atomic.Int64 // coarse unix nanoseconds a write started; 0: none in progress

	// Reader state. Readers come one at a time (the poller arms a socket
	// for one report), but they are different goroutines: rmu makes each
	// one see what the previous one left.
	rmu  sync.Mutex
	rd   wsReader
	errs int
	// The subscribe/unsubscribe/presence token bucket: tokens left at tokensAt
	// (unix nanoseconds; 0: full, never used).
	tokens   float64
	tokensAt int64

	mu        sync.Mutex
	state     connState
	tenant    *tenant // bound by the first subscription (or ?tenant=)
	subs      []*subscription
	q         []qitem
	writing   bool // a websocket writer goroutine runs
	closeSent bool // our close frame is written
	closeRecv bool // the client's close frame is read
	reason    string
	grace     *time.Timer

	notify chan struct{} // SSE: something was queued
	done   chan struct{} // SSE: closed when the connection has ended
}

// enqueueLocked queues m. A connection over its queue bound is a slow
// consumer: it is closed, not waited for. Frames that are not fan-out
// deliveries (replies, history replay, pings) get the room of a full
// history replay on top of QueueLen.
func (c *conn) enqueueLocked(m *outMsg, live bool) {
	if c.state != stateOpen {
		if live {
			m.done()
			c.p.met.drops.WithLabelValues("closed").Inc()
		}
		return
	}
	limit := c.p.opts.QueueLen
	if !live {
		limit += c.p.o().History + 16
	}
	if len(c.q) >= limit {
		if live {
			m.done()
		}
		c.p.met.drops.WithLabelValues("slow_consumer").Inc()
		c.dropQueueLocked()
		c.beginCloseLocked(closePolicy, "slow consumer", "slow_consumer")
		if c.nc != nil {
			// A write stuck on a full socket buffer gives up soon; the
			// close frame gets a chance if the client catches up.
			_ = c.nc.SetWriteDeadline(time.Now().Add(time.Second))
		}
		return
	}
	c.q = append(c.q, qitem{m, live})
	c.wakeLocked()
}

func (c *conn) enqueue(m *outMsg) {
	c.mu.Lock()
	c.enqueueLocked(m, false)
	c.mu.Unlock()
}

func (c *conn) wakeLocked() {
	if c.kind == kindSSE {
		select {
		case c.notify <- struct{}{}:
		default:
		}
		return
	}
	if !c.writing && c.nc != nil {
		c.writing = true
		c.p.writers.schedule(c)
	}
}

// dropQueueLocked forgets queued frames.
func (c *conn) dropQueueLocked() {
	for i, it := range c.q {
		if it.live {
			it.m.done()
			c.p.met.drops.WithLabelValues("closed").Inc()
		}
		c.q[i] = qitem{}
	}
	c.q = c.q[:0]
}

// beginCloseLocked moves an open connection to closing: a websocket gets a
// close frame after what is queued; an SSE stream ends after it.
func (c *conn) beginCloseLocked(code int, text, reason string) {
	if c.state != stateOpen {
		return
	}
	c.state = stateClosing
	c.reason = reason
	if c.kind == kindWS {
		c.q = append(c.q, qitem{m: &outMsg{ws: wsFrame(opClose, closePayload(code, text)), close: true}})
	}
	c.wakeLocked()
}

// closeWith starts a graceful close.
func (c *conn) closeWith(code int, text, reason string) {
	c.mu.Lock()
	c.beginCloseLocked(code, text, reason)
	c.mu.Unlock()
}

// terminate ends the connection at once: subscriptions removed, queue
// dropped, socket closed without waiting for anything. Idempotent.
func (c *conn) terminate(reason string) {
	c.mu.Lock()
	if c.state == stateClosed {
		c.mu.Unlock()
		return
	}
	c.state = stateClosed
	if c.reason == "" {
		c.reason = reason
	}
	subs := c.subs
	c.subs = nil
	c.dropQueueLocked()
	c.q = nil
	if c.grace != nil {
		c.grace.Stop()
	}
	c.mu.Unlock()

	now := time.Now()
	var idle []*channel
	for _, s := range subs {
		s.ch.mu.Lock()
		if s.ch.removeLocked(s, now) {
			idle = append(idle, s.ch)
			c.p.leftLocked(s.ch)
		}
		s.ch.mu.Unlock()
	}
	c.p.met.subs.Sub(float64(len(subs)))
	if len(idle) > 0 {
		c.p.noteIdle(idle...)
	}
	if c.nc != nil {
		closeRaw(c.nc)
	}
	if c.done != nil {
		close(c.done)
	}
	c.p.unregister(c)
}

// closeRaw closes the socket under any TLS layer: no close_notify, so it
// never blocks (the websocket close frame is the goodbye that matters).
func closeRaw(nc net.Conn) {
	for c := nc; ; {
		if tc, ok := c.(*tls.Conn); ok {
			_ = tc.NetConn().Close()
			return
		}
		// The transport may hand over a wrapper of the TLS connection.
		u, ok := c.(interface{ NetConn() net.Conn })
		if !ok {
			break
		}
		c = u.NetConn()
	}
	_ = nc.Close()
}

// ---- websocket writing ----

var batchPool = sync.Pool{New: func() any { b := make([]byte, 0, 16<<10); return &b }}

// writePass writes what is queued for c, in at most two batches, with no
// lock held while writing. It returns true when frames are still queued:
// c stays scheduled (writing set) and its worker comes back to it after
// the other ready connections. Otherwise c is no longer scheduled.
func (c *conn) writePass(w *writer) bool {
	var local [8]qitem
	for range 2 {
		c.mu.Lock()
		if c.state == stateClosed || len(c.q) == 0 {
			c.writing = false
			if cap(c.q) > 64 {
				c.q = nil // a burst is over: give its memory back
			}
			c.mu.Unlock()
			return false
		}
		// Take the whole queue; small batches are copied out so that the
		// queue's array is kept (no allocation per message).
		var batch []qitem
		if len(c.q) <= len(local) {
			n := copy(local[:], c.q)
			batch = local[:n]
			clear(c.q)
			c.q = c.q[:0]
		} else {
			batch = c.q
			c.q = nil
		}
		c.mu.Unlock()

		w.since.Store(time.Now().UnixNano())
		sentClose, err := c.writeBatch(batch)
		w.since.Store(0)
		delivered := 0
		for i, it := range batch {
			if it.live {
				it.m.done() // delivered, or dropped with the connection
				delivered++
			}
			batch[i] = qitem{}
		}
		if err != nil {
			c.p.met.drops.WithLabelValues("closed").Add(float64(delivered))
			c.terminate("write_error")
			return false
		}
		c.p.met.deliveries.Add(float64(delivered))
		if sentClose {
			c.closeWritten()
			return false
		}
	}
	return true
}

// writeBatch writes frames in as few writes as possible (up to 16 KiB
// each): one TLS record and one system call for several frames. It stops
// after a close frame. Instead of a deadline per write (a timer update per
// delivery), the write is marked with a coarse start time and the sweeper
// cuts a connection whose write has been stuck longer than WriteTimeout.
func (c *conn) writeBatch(batch []qitem) (sentClose bool, err error) {
	c.writeSince.Store(c.p.clock.Load())
	defer c.writeSince.Store(0)
	if len(batch) == 1 {
		_, err := c.nc.Write(batch[0].m.ws)
		return batch[0].m.close, err
	}
	bp := batchPool.Get().(*[]byte)
	defer batchPool.Put(bp)
	buf := (*bp)[:0]
	for _, it := range batch {
		f := it.m.ws
		if len(buf) > 0 && len(buf)+len(f) > cap(buf) {
			if _, err := c.nc.Write(buf); err != nil {
				return false, err
			}
			buf = buf[:0]
		}
		if len(f) > cap(buf) {
			if _, err := c.nc.Write(f); err != nil {
				return false, err
			}
		} else {
			buf = append(buf, f...)
		}
		if it.m.close {
			sentClose = true
			break
		}
	}
	if len(buf) > 0 {
		_, err = c.nc.Write(buf)
	}
	return sentClose, err
}

// closeWritten: our close frame is out. The connection ends when the
// client answers with its own, or after CloseGrace.
func (c *conn) closeWritten() {
	c.mu.Lock()
	c.closeSent = true
	c.writing = false
	if c.closeRecv || c.state == stateClosed {
		c.mu.Unlock()
		c.terminate("")
		return
	}
	if c.grace == nil {
		c.grace = time.AfterFunc(c.p.opts.CloseGrace, func() { c.terminate("") })
	}
	c.mu.Unlock()
}

// ---- websocket reading ----

var readBufPool = sync.Pool{New: func() any { b := make([]byte, 4096); return &b }}

// errStopReading: the client's close frame was read; nothing more to read.
var errStopReading = errors.New("stop reading")

// aLongTimeAgo as a read deadline makes a read return at once with what is
// already buffered (in the TLS layer), without touching the socket.
var aLongTimeAgo = time.Unix(1, 0)

// readAvailable reads and handles everything that can be read now. When
// wait is set the socket was reported readable and the first read may wait
// (up to ReadTimeout, for the rest of a TLS record). It returns false when
// the connection must not be read again.
func (c *conn) readAvailable(buf []byte, wait bool) bool {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if wait {
		_ = c.nc.SetReadDeadline(time.Now().Add(c.p.opts.ReadTimeout))
	} else {
		_ = c.nc.SetReadDeadline(aLongTimeAgo)
	}
	probing := !wait
	for {
		n, err := c.nc.Read(buf)
		if n > 0 {
			c.lastRead.Store(time.Now().UnixNano())
			if !c.consume(buf[:n]) {
				return false
			}
		}
		if err != nil {
			if probing && isTimeout(err) {
				return true
			}
			c.readFailed(err)
			return false
		}
		if !probing {
			probing = true
			_ = c.nc.SetReadDeadline(aLongTimeAgo)
		}
	}
}

// readLoop is the reader without the poller: one goroutine per connection.
// Dead connections are found by the sweeper, whose close ends the read.
func (c *conn) readLoop() {
	defer c.p.wg.Done()
	buf := make([]byte, 512)
	for {
		n, err := c.nc.Read(buf)
		if n > 0 {
			c.lastRead.Store(time.Now().UnixNano())
			if !c.consume(buf[:n]) {
				return
			}
		}
		if err != nil {
			c.readFailed(err)
			return
		}
	}
}

func isTimeout(err error) bool {
	return errors.Is(err, os.ErrDeadlineExceeded)
}

func (c *conn) readFailed(err error) {
	switch {
	case errors.Is(err, io.EOF):
		c.terminate("client_close")
	default:
		c.terminate("read_error")
	}
}

// consume feeds bytes to the frame parser; false: stop reading.
func (c *conn) consume(b []byte) bool {
	err := c.rd.feed(b, c.onFrame)
	if err == nil {
		return true
	}
	var we *wsError
	if errors.As(err, &we) {
		c.closeWith(we.code, we.reason, "protocol_error")
	}
	return false
}

const maxClientErrors = 64

func (c *conn) onFrame(op byte, payload []byte) error {
	switch op {
	case opText:
		if !utf8.Valid(payload) {
			return &wsError{closeInvalidPayload, "text frame is not UTF-8"}
		}
		c.p.handleClientFrame(c, payload)
	case opBinary:
		c.clientError(codeBinary, "binary frames are not part of the protocol", "", "")
	case opPing:
		c.enqueue(&outMsg{ws: wsFrame(opPong, payload)})
	case opPong:
	case opClose:
		code := closeNoStatus
		if len(payload) >= 2 {
			code = int(payload[0])<<8 | int(payload[1])
		}
		c.mu.Lock()
		c.closeRecv = true
		if c.closeSent {
			c.mu.Unlock()
			c.terminate("client_close")
			return errStopReading
		}
		if c.state == stateOpen {
			if code == closeNoStatus {
				code = closeNormal
			}
			c.beginCloseLocked(code, "", "client_close")
		}
		c.mu.Unlock()
		return errStopReading
	}
	return nil
}

// takeToken takes one subscribe, unsubscribe or presence frame from the connection's
// token bucket (Options.SubscribeRate, SubscribeBurst); false when it is
// empty. Only the reader calls it.
func (c *conn) takeToken(now time.Time) bool {
	rate, burst := c.p.o().SubscribeRate, float64(c.p.o().SubscribeBurst)
	if rate < 0 {
		return true
	}
	t := now.UnixNano()
	if c.tokensAt == 0 {
		c.tokens = burst
	} else if t > c.tokensAt {
		c.tokens = min(burst, c.tokens+float64(t-c.tokensAt)/1e9*rate)
	}
	c.tokensAt = t
	if c.tokens < 1 {
		return false
	}
	c.tokens--
	return true
}

// clientError answers a bad frame; too many end the connection.
func (c *conn) clientError(code, reason, id, channel string) {
	c.errs++
	c.enqueue(connFrame(c.kind, serverFrame{Type: typeError, Code: code, Reason: reason, ID: id, Channel: channel}))
	if c.errs >= maxClientErrors && c.kind == kindWS {
		c.closeWith(closePolicy, "too many errors", "too_many_errors")
	}
}
