package transport

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/edgenode/edgenode/internal/clientaddr"
)

// limitListener counts open connections and connections per client address
// (see clientKey). A TCP connection over the per-address limit is closed as
// soon as it is accepted, before the TLS handshake: answering it with a 429
// would first cost the server a handshake (a signature and a key exchange)
// for every refused connection, which is what a flood wants it to spend.
type limitListener struct {
	net.Listener
	perIP   int
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
	// handshakeCounted: the TLS handshake on this connection was counted.
	handshakeCounted atomic.Bool

	// Writes while corked go to wbuf (see cork). wmu orders every write
	// below TLS, as tls.Conn's own lock does above it: a close_notify
	// alert from a Shutdown must not overtake corked bytes.
	wmu    sync.Mutex
	corked bool
	wbuf   *[]byte
	werr   error // sticky: a corked write that failed broke the stream
}

// corkFlush is how much a corked connection holds before it writes anyway:
// four full TLS records, a 64 KiB body chunk.
const corkFlush = 64<<10 + 4*(5+16+256)

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
	c.corked = true
	c.wmu.Unlock()
}

// uncork writes what cork held and stops holding.
func (c *countedConn) uncork() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.corked = false
	return c.flushLocked()
}

func (c *countedConn) flushLocked() error {
	if c.wbuf == nil {
		return c.werr
	}
	b := *c.wbuf
	if len(b) > 0 && c.werr == nil {
		if _, err := c.Conn.Write(b); err != nil {
			// TLS believes these records were sent: the stream is
			// broken, so every later write fails, and reads end too.
			c.werr = err
			_ = c.Conn.Close()
		}
	}
	*c.wbuf = b[:0]
	corkBufs.Put(c.wbuf)
	c.wbuf = nil
	return c.werr
}

func (c *countedConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.werr != nil {
		return 0, c.werr
	}
	if !c.corked {
		return c.Conn.Write(p)
	}
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

// Close frees the connection's slot before closing it, so a client that
// sees its connection end can count on the slot being free again.
func (c *countedConn) Close() error {
	c.once.Do(func() { c.l.release(c.addr) })
	return c.Conn.Close()
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
