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
	// handshakeCounted: the TLS handshake on this connection was counted.
	handshakeCounted atomic.Bool
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
