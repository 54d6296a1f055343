package transport

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgenode/edgenode/internal/clientaddr"
)

// limitListener counts open connections and connections per client address
// (see clientKey). A TCP connection over the per-address limit is closed as
// soon as it is accepted, before the TLS handshake: answering it with a 429
// would first cost the server a handshake (a signature and a key exchange)
// for every refused connection, which is what a flood wants it to spend.
type limitListener struct {
	net.Listener
	perIP   int // under mu: SetLimits changes it
	metrics *metrics

	mu    sync.Mutex
	count map[netip.Addr]int
}

func newLimitListener(l net.Listener, perIP int, m *metrics) *limitListener {
	return &limitListener{Listener: l, perIP: perIP, metrics: m, count: make(map[netip.Addr]int)}
}

// Accept returns the next connection within the limits. Refused
// connections are not returned (net/http would take an error for a broken
// listener and back off).
func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		addr := remoteAddr(c)
		if l.acquire(addr) {
			l.forget(addr)
			refuse(c)
			continue
		}
		l.metrics.connsOpen.Inc()
		return &countedConn{Conn: c, l: l, addr: addr}, nil
	}
}

// refuse closes a connection at once. Lingering off makes the close a
// reset: no TIME_WAIT is left on this side for a connection that never
// carried anything.
func refuse(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
}

// acquire counts one more connection from addr (TCP or QUIC: the limit is
// per client, whatever the protocol) and reports whether it is over the
// limit. The caller calls forget for it either way, once it is gone.
func (l *limitListener) acquire(addr netip.Addr) (over bool) {
	key := clientaddr.Key(addr)
	l.mu.Lock()
	l.count[key]++
	over = l.perIP > 0 && l.count[key] > l.perIP
	l.mu.Unlock()
	if over {
		l.metrics.limitHits.WithLabelValues("conns_per_ip").Inc()
	}
	return over
}

func (l *limitListener) setPerIP(n int) {
	l.mu.Lock()
	l.perIP = n
	l.mu.Unlock()
}

func (l *limitListener) forget(addr netip.Addr) {
	key := clientaddr.Key(addr)
	l.mu.Lock()
	if l.count[key]--; l.count[key] <= 0 {
		delete(l.count, key)
	}
	l.mu.Unlock()
}

func (l *limitListener) release(addr netip.Addr) {
	l.forget(addr)
	l.metrics.connsOpen.Dec()
}

func remoteAddr(c net.Conn) netip.Addr {
	if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		a, _ := netip.AddrFromSlice(ta.IP)
		return a.Unmap()
	}
	return netip.Addr{}
}

type countedConn struct {
	net.Conn
	l    *limitListener
	addr netip.Addr
	once sync.Once
	// asyncStarted: connState looked at this connection once.
	asyncStarted atomic.Bool

	// Writes below TLS: direct, corked (HTTP/1.1, see cork) or handed to
	// a writer goroutine (HTTP/2, see startAsync). wmu orders them, as
	// tls.Conn's own lock does above it: a close_notify alert from a
	// Shutdown must not overtake earlier bytes.
	wmu        sync.Mutex
	spaceReady sync.Cond // async: wbuf was taken, or the writer ended
	corked     bool
	async      bool
	closing    bool
	wbuf       *[]byte
	werr       error // sticky: a held write failed, the stream is broken
	// writerDone is non-nil while an async writer runs, closed when it has
	// returned. A writer runs only while there is something to write: an
	// idle connection holds no goroutine of its own.
	writerDone chan struct{}
}

// corkFlush is how much a corked or async connection holds before a write
// waits: four full TLS records, a 64 KiB body chunk.
const corkFlush = 64<<10 + 4*(5+16+256)

// directWrite: a corked write this large (a full TLS record) goes to the
// socket at once, after what is held: gathering saves system calls on
// small records, but for full ones it would only add a copy of every byte
// (the kernel's cost is per byte by then). Async connections gather every
// write: there the gathering also merges the frames of many streams.
const directWrite = 16 << 10

// asyncCloseWait bounds how long Close waits for an async connection's
// last bytes (a GOAWAY, the end of a response) to leave before it closes
// the socket anyway.
const asyncCloseWait = 5 * time.Second

var corkBufs = sync.Pool{New: func() any { b := make([]byte, 0, corkFlush+16<<10+512); return &b }}

// cork holds this connection's writes in memory until uncork, which sends
// them in one write(2). net/http hands TLS a response in pieces (its 4 KiB
// buffer with the header, then the rest of the body) and TLS makes a record
// and a system call of each: corked, a 10 KiB response costs one system
// call instead of two, a 64 KiB chunk one instead of five. The caller
// uncorks before it returns to net/http, so nothing ever waits in the
// buffer for a later event (a streaming response's Flush still reaches the
// client at once).
func (c *countedConn) cork() {
	c.wmu.Lock()
	if !c.async {
		c.corked = true
	}
	c.wmu.Unlock()
}

// uncork writes what cork held and stops holding.
func (c *countedConn) uncork() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if !c.corked {
		return c.werr
	}
	c.corked = false
	return c.flushLocked()
}

// flushLocked writes a corked buffer (the cork's own write: the lock is
// the order of writes, like tls.Conn's).
func (c *countedConn) flushLocked() error {
	if c.wbuf == nil {
		return c.werr
	}
	b := *c.wbuf
	if len(b) > 0 && c.werr == nil {
		if _, err := c.Conn.Write(b); err != nil {
			c.failLocked(err)
		}
	}
	*c.wbuf = b[:0]
	corkBufs.Put(c.wbuf)
	c.wbuf = nil
	return c.werr
}

// failLocked records a write error of bytes that TLS believes were sent:
// the stream is broken, so every later write fails and reads end too.
func (c *countedConn) failLocked(err error) {
	if c.werr == nil {
		c.werr = err
		_ = c.Conn.Close()
	}
}

// startAsync hands this connection's writes to a goroutine, for HTTP/2.
// net/http's HTTP/2 server writes frames through a 4 KiB buffer from a
// goroutine per frame, so a 10 KiB response leaves in three TLS records
// and three system calls, a 1 MiB one in about 150, and it never tells
// the connection when a burst ends (so a cork cannot be used). Here Write
// only appends to a buffer and starts a writer when none runs; the writer
// sends whatever has gathered since its last write(2) in one, and ends
// when nothing more has. Under load, bursts coalesce by themselves; when
// idle, each write leaves at once. A full buffer makes Write wait (the
// client's TCP window still pushes back). Idempotent; called once the
// connection is known to be HTTP/2.
func (c *countedConn) startAsync() {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.async || c.closing || c.werr != nil {
		return
	}
	if c.corked { // not on HTTP/2, but never strand corked bytes
		c.corked = false
		_ = c.flushLocked()
	}
	c.async = true
	c.spaceReady.L = &c.wmu
}

// writeLoop is the async writer: it owns the socket's writes while there
// is something to write, then returns.
func (c *countedConn) writeLoop(done chan struct{}) {
	c.wmu.Lock()
	defer func() {
		if c.wbuf != nil { // broken: what was handed over since is lost with the stream
			*c.wbuf = (*c.wbuf)[:0]
			corkBufs.Put(c.wbuf)
			c.wbuf = nil
		}
		c.writerDone = nil
		c.spaceReady.Broadcast() // drain and full-buffer waiters
		c.wmu.Unlock()
		close(done)
	}()
	for c.wbuf != nil && c.werr == nil {
		b := c.wbuf
		c.wbuf = nil
		c.spaceReady.Broadcast()
		c.wmu.Unlock()
		_, err := c.Conn.Write(*b) // outside the lock: Writes keep appending
		*b = (*b)[:0]
		corkBufs.Put(b)
		c.wmu.Lock()
		if err != nil {
			c.failLocked(err)
		}
	}
}

// drainLocked waits until an async connection has written everything
// handed to it so far (or failed).
func (c *countedConn) drainLocked() {
	for c.writerDone != nil {
		c.spaceReady.Wait()
	}
}

func (c *countedConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.werr != nil {
		return 0, c.werr
	}
	switch {
	case c.corked && len(p) >= directWrite:
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
		return c.Conn.Write(p)
	case c.async:
		for c.wbuf != nil && len(*c.wbuf) >= corkFlush && c.werr == nil {
			c.spaceReady.Wait()
		}
		if c.werr != nil {
			return 0, c.werr
		}
		if c.closing {
			return 0, net.ErrClosed
		}
		if c.wbuf == nil {
			c.wbuf = corkBufs.Get().(*[]byte)
		}
		*c.wbuf = append(*c.wbuf, p...)
		if c.writerDone == nil {
			c.writerDone = make(chan struct{})
			go c.writeLoop(c.writerDone)
		}
		return len(p), nil
	case c.corked:
		if c.wbuf == nil {
			c.wbuf = corkBufs.Get().(*[]byte)
		}
		*c.wbuf = append(*c.wbuf, p...)
		if len(*c.wbuf) >= corkFlush {
			if err := c.flushLocked(); err != nil {
				return 0, err
			}
		}
		return len(p), nil
	}
	return c.Conn.Write(p)
}

// SetWriteDeadline keeps a deadline's meaning for an async connection: it
// bounds the writes handed over before it, as it would have bounded them
// had they been written at once. tls.Conn's Close sets a deadline of now
// right after its close_notify alert, which must not cut off the alert or
// the bytes before it: a deadline already past applies once they are out
// (within the deadline set before); any other applies to them.
func (c *countedConn) SetWriteDeadline(t time.Time) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if !c.async {
		return c.Conn.SetWriteDeadline(t)
	}
	if !t.IsZero() && !t.After(time.Now()) {
		c.drainLocked()
		return c.Conn.SetWriteDeadline(t)
	}
	err := c.Conn.SetWriteDeadline(t)
	c.drainLocked()
	return err
}

func (c *countedConn) SetDeadline(t time.Time) error {
	if err := c.SetWriteDeadline(t); err != nil {
		return err
	}
	return c.Conn.SetReadDeadline(t)
}

// Close frees the connection's slot before closing it, so a client that
// sees its connection end can count on the slot being free again.
// An async connection first lets its writer send what it holds (within
// asyncCloseWait).
func (c *countedConn) Close() error {
	c.once.Do(func() { c.l.release(c.addr) })
	c.wmu.Lock()
	c.closing = true
	done := c.writerDone
	c.wmu.Unlock()
	if done == nil {
		return c.Conn.Close()
	}
	t := time.NewTimer(asyncCloseWait)
	defer t.Stop()
	select {
	case <-done:
		return c.Conn.Close()
	case <-t.C:
	}
	err := c.Conn.Close() // unblocks the writer's write
	<-done
	return err
}

// overLimit reports whether the request came on a QUIC connection over the
// per-address limit. TCP connections over it never get this far (Accept
// refuses them); a QUIC connection is counted once its handshake is done,
// because only then is its source address proven: counting unverified
// Initial packets would let anyone spoofing a victim's address use up the
// victim's allowance.
func overLimit(ctx context.Context) bool {
	if qc, ok := ctx.Value(quicConnKey{}).(*quicConn); ok {
		return qc.overLimit
	}
	return false
}

// NetConn exposes the TCP connection underneath, so handlers that take over
// a connection (pubsub's epoll reader) can reach the file descriptor.
func (c *countedConn) NetConn() net.Conn { return c.Conn }
