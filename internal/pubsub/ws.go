package pubsub

import (
	"net"
	"net/http"
	"net/netip"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
)

// clientIP is the address of the TCP peer. The node is the edge, so a
// forwarded-for header would be the client's own claim and is ignored.
func clientIP(r *http.Request) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// checkHandshake applies the checks every subscriber connection gets before
// it is accepted: an optional ?tenant= binding (with its Origin list), or
// an Origin some tenant allows, and the per-address limit. It answers the
// refusal itself and returns ok=false then.
func (p *PubSub) checkHandshake(w http.ResponseWriter, r *http.Request) (t *tenant, ip netip.Addr, ok bool) {
	origin := r.Header.Get("Origin")
	if name := r.URL.Query().Get("tenant"); name != "" {
		if t = p.tenant(name); t == nil {
			p.refuse(codeUnknownTenant)
			http.Error(w, "unknown tenant", http.StatusNotFound)
			return nil, ip, false
		}
		if !originAllowed(t.r().origins, origin) {
			p.refuse(codeOrigin)
			http.Error(w, "origin not allowed", http.StatusForbidden)
			return nil, ip, false
		}
	} else if origin != "" && !p.someTenantAllows(origin) {
		p.refuse(codeOrigin)
		http.Error(w, "origin not allowed", http.StatusForbidden)
		return nil, ip, false
	}
	ip = clientIP(r)
	switch p.reserve(ip) {
	case "":
		return t, ip, true
	case "conns_per_ip":
		p.refuse("conns_per_ip")
		w.Header().Set("Retry-After", "10")
		http.Error(w, "too many connections from your address", http.StatusTooManyRequests)
	default:
		p.refuse("draining")
		w.Header().Set("Retry-After", "1")
		http.Error(w, "node draining: reconnect", http.StatusServiceUnavailable)
	}
	return nil, ip, false
}

func (p *PubSub) someTenantAllows(origin string) bool {
	for _, t := range *p.tenants.Load() {
		if originAllowed(t.r().origins, origin) {
			return true
		}
	}
	return false
}

// serveWS upgrades to a websocket. gorilla/websocket does the handshake;
// its Conn is then dropped and the socket is served by conn (see
// wsframe.go for why).
func (p *PubSub) serveWS(w http.ResponseWriter, r *http.Request) {
	if !websocket.IsWebSocketUpgrade(r) {
		w.Header().Set("Upgrade", "websocket")
		http.Error(w, "websocket upgrade required", http.StatusUpgradeRequired)
		return
	}
	t, ip, ok := p.checkHandshake(w, r)
	if !ok {
		return
	}
	ws, err := p.up.Upgrade(w, r, nil)
	if err != nil {
		p.release(ip) // Upgrade answered the client
		return
	}
	c := &conn{p: p, kind: kindWS, ip: ip, origin: r.Header.Get("Origin"), nc: ws.NetConn(), tenant: t}
	c.rd.max = p.opts.MaxClientFrameBytes
	c.lastRead.Store(time.Now().UnixNano())
	if !p.admit(c) {
		_ = c.nc.SetWriteDeadline(time.Now().Add(time.Second))
		_, _ = c.nc.Write(wsFrame(opClose, closePayload(closeServiceRestart, "node draining, reconnect")))
		closeRaw(c.nc)
		return
	}
	defer p.wg.Done() // admit counted this handler
	if p.poller != nil {
		if raw, ok := rawConnOf(c.nc); ok {
			c.raw = raw
			// Bytes the TLS layer already holds are invisible to epoll:
			// read them first, then watch the socket.
			bp := readBufPool.Get().(*[]byte)
			more := c.readAvailable(*bp, false)
			readBufPool.Put(bp)
			if more && !p.poller.add(c) {
				c.terminate("read_error")
			}
			return
		}
	}
	p.wg.Add(1)
	go c.readLoop()
}

// rawConnOf finds the socket under TLS and wrappers that expose NetConn.
func rawConnOf(nc net.Conn) (syscall.RawConn, bool) {
	for range 8 {
		if sc, ok := nc.(syscall.Conn); ok {
			rc, err := sc.SyscallConn()
			return rc, err == nil
		}
		u, ok := nc.(interface{ NetConn() net.Conn })
		if !ok {
			return nil, false
		}
		nc = u.NetConn()
	}
	return nil, false
}

// readReady runs when the poller reports the socket readable.
func (c *conn) readReady() {
	defer c.p.wg.Done()
	bp := readBufPool.Get().(*[]byte)
	more := c.readAvailable(*bp, true)
	readBufPool.Put(bp)
	if more && !c.p.poller.rearm(c) {
		c.terminate("read_error")
	}
}
