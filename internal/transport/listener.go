package transport

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
)

// limitListener counts open connections and connections per client address.
// A connection over the per-address limit is still accepted: it is marked so
// the HTTP layer answers 429 and closes it, because a client that is refused
// at TCP level cannot tell a limit from an outage.
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

func (l *limitListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	addr := remoteAddr(c)
	over := l.acquire(addr)
	l.metrics.connsOpen.Inc()
	return &countedConn{Conn: c, l: l, addr: addr, overLimit: over}, nil
}

// acquire counts one more connection (TCP or QUIC: the limit is per client
// address, whatever the protocol) and reports whether it is over the limit.
func (l *limitListener) acquire(addr netip.Addr) (over bool) {
	l.mu.Lock()
	l.count[addr]++
	over = l.perIP > 0 && l.count[addr] > l.perIP
	l.mu.Unlock()
	if over {
		l.metrics.limitHits.WithLabelValues("conns_per_ip").Inc()
	}
	return over
}

func (l *limitListener) forget(addr netip.Addr) {
	l.mu.Lock()
	if l.count[addr]--; l.count[addr] <= 0 {
		delete(l.count, addr)
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
	l         *limitListener
	addr      netip.Addr
	overLimit bool
	once      sync.Once
	// handshakeCounted: the TLS handshake on this connection was counted.
	handshakeCounted atomic.Bool
}

func (c *countedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.release(c.addr) })
	return err
}

type connKey struct{}

// connContext remembers the raw connection in each request's context, so the
// handler can see whether it is over the per-address limit.
func connContext(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, connKey{}, c)
}

func overLimit(ctx context.Context) bool {
	if qc, ok := ctx.Value(quicConnKey{}).(*quicConn); ok {
		return qc.overLimit
	}
	c, _ := ctx.Value(connKey{}).(net.Conn)
	for c != nil {
		switch cc := c.(type) {
		case *countedConn:
			return cc.overLimit
		case interface{ NetConn() net.Conn }:
			c = cc.NetConn()
		default:
			return false
		}
	}
	return false
}

// NetConn exposes the TCP connection underneath, so handlers that take over
// a connection (pubsub's epoll reader) can reach the file descriptor.
func (c *countedConn) NetConn() net.Conn { return c.Conn }
