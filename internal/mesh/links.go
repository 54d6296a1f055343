package mesh

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/quic-go/quic-go"

	"github.com/edgenode/edgenode/internal/mesh/pki"
)

// Handler receives the messages of one topic. from is the verified node id
// of the sender. msg belongs to the handler. Calls for one (peer, topic) are
// sequential and in send order, on that stream's goroutine: a slow handler
// back-pressures only that peer's topic, but it must return eventually, or
// Leave waits for it.
type Handler func(from string, msg []byte)

// QUIC application error codes.
const (
	codeLeaving   quic.ApplicationErrorCode = 0
	codeReplaced  quic.ApplicationErrorCode = 1
	codeGone      quic.ApplicationErrorCode = 2
	codeWriteFail quic.ApplicationErrorCode = 3
	codeBadStream quic.StreamErrorCode      = 1
)

// Link timings.
const (
	dialTimeout = 5 * time.Second
	// writeTimeout bounds one batch write. A peer that accepts nothing for
	// this long is treated as broken: its link is closed and redialed, and
	// the messages in flight are lost (counted as link_error).
	writeTimeout = 30 * time.Second
	backoffMin   = 100 * time.Millisecond
	backoffMax   = 10 * time.Second
	// A link that stayed up this long resets the backoff.
	healthyLink = 2 * time.Second
	// batchBytes bounds how much one batch collects before it is written.
	batchBytes = 256 << 10
)

type outMsg struct {
	topic string
	msg   []byte
}

type links struct {
	m     *Mesh
	log   *slog.Logger
	self  string
	proto int // the mesh protocol version this node speaks (Protocol, or a test's override)
	cert  tls.Certificate
	roots *x509.CertPool
	qconf *quic.Config

	udp *net.UDPConn
	tr  *quic.Transport
	ln  *quic.Listener
	ctx context.Context

	handlers atomic.Pointer[map[string]Handler]
	hmu      sync.Mutex

	mu     sync.Mutex
	peers  map[string]*peer
	closed bool
	snap   atomic.Pointer[map[string]*peer] // lock-free view for Send
	peerWG sync.WaitGroup
	loopWG sync.WaitGroup

	// vmu guards versionLogged: the version each peer was last refused
	// for, so a peer that redials every few seconds is logged at warning
	// level once per version, not once per attempt (each is counted).
	vmu           sync.Mutex
	versionLogged map[string]int
}

func newLinks(m *Mesh, cert tls.Certificate, roots *x509.CertPool) *links {
	l := &links{
		m:             m,
		log:           m.log,
		self:          m.o.NodeID,
		proto:         m.o.Protocol,
		cert:          cert,
		roots:         roots,
		peers:         make(map[string]*peer),
		versionLogged: map[string]int{},
		qconf: &quic.Config{
			HandshakeIdleTimeout: dialTimeout,
			MaxIdleTimeout:       20 * time.Second,
			KeepAlivePeriod:      5 * time.Second,
			// Streams are per topic; bidirectional streams are not used.
			MaxIncomingStreams:             -1,
			MaxIncomingUniStreams:          256,
			InitialStreamReceiveWindow:     1 << 20,
			MaxStreamReceiveWindow:         8 << 20,
			InitialConnectionReceiveWindow: 2 << 20,
			MaxConnectionReceiveWindow:     32 << 20,
		},
	}
	empty := map[string]*peer{}
	l.snap.Store(&empty)
	noHandlers := map[string]Handler{}
	l.handlers.Store(&noHandlers)
	return l
}

// start binds the link socket and accepts peers.
func (l *links) start(ctx context.Context) error {
	udp, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(l.m.o.link))
	if err != nil {
		return fmt.Errorf("mesh: link socket %s: %w", l.m.o.LinkAddr, err)
	}
	l.udp = udp
	l.tr = &quic.Transport{Conn: udp, StatelessResetKey: l.resetKey()}
	ln, err := l.tr.Listen(l.serverTLS(), l.qconf)
	if err != nil {
		l.tr.Close()
		udp.Close()
		return fmt.Errorf("mesh: link listener: %w", err)
	}
	l.ln = ln
	l.ctx = ctx
	l.loopWG.Add(1)
	go func() { defer l.loopWG.Done(); l.acceptLoop(ctx) }()
	return nil
}

// resetKey derives the QUIC stateless reset key from the node's private
// key, so it is secret and survives restarts: a node restarted before the
// cluster noticed answers packets of its old connections with a stateless
// reset, and the peer redials at once instead of waiting for the idle
// timeout.
func (l *links) resetKey() *quic.StatelessResetKey {
	der, err := x509.MarshalPKCS8PrivateKey(l.cert.PrivateKey)
	if err != nil {
		return nil // resets disabled; peers fall back to the idle timeout
	}
	mac := hmac.New(sha256.New, der)
	mac.Write([]byte("edgenode mesh stateless reset key"))
	var k quic.StatelessResetKey
	copy(k[:], mac.Sum(nil))
	return &k
}

// close stops every peer and the socket. graceful lets peers close their
// connections with a goodbye first; otherwise connections just vanish.
func (l *links) close(graceful bool) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	l.closed = true
	for id, p := range l.peers {
		p.stop(graceful)
		delete(l.peers, id)
	}
	l.publishSnap()
	l.mu.Unlock()
	if l.ln != nil {
		l.ln.Close()
	}
	l.peerWG.Wait()
	if l.tr != nil {
		l.tr.Close()
	}
	if l.udp != nil {
		l.udp.Close()
	}
	l.loopWG.Wait()
}

// abort drops the socket at once, so no goodbye can be sent: a crash.
func (l *links) abort() {
	if l.udp != nil {
		l.udp.Close()
	}
}

func (l *links) publishSnap() {
	s := make(map[string]*peer, len(l.peers))
	for id, p := range l.peers {
		s[id] = p
	}
	l.snap.Store(&s)
}

// linkTarget is where a member's links go: its advertised link address,
// the boot id of the process behind it and the mesh protocol version it
// gossips.
type linkTarget struct {
	addr  netip.AddrPort
	boot  uint64
	proto int
}

// sync makes the set of peers match want.
func (l *links) sync(want map[string]linkTarget) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return
	}
	changed := false
	for id, p := range l.peers {
		tg, ok := want[id]
		switch {
		case !ok || tg.addr != p.addr:
			p.stop(true)
			delete(l.peers, id)
			changed = true
		case tg.boot != p.boot.Load() || tg.proto != int(p.proto.Load()):
			// Same address, new process (perhaps of another version):
			// the queue stays, the old connection goes.
			p.boot.Store(tg.boot)
			p.proto.Store(int64(tg.proto))
			select {
			case p.restarted <- struct{}{}:
			default:
			}
		}
	}
	for id, tg := range want {
		if _, ok := l.peers[id]; !ok {
			l.addPeerLocked(id, tg)
			changed = true
		}
	}
	if changed {
		l.publishSnap()
	}
}

func (l *links) addPeerLocked(id string, tg linkTarget) *peer {
	ctx, cancel := context.WithCancel(l.ctx)
	p := &peer{
		l:         l,
		id:        id,
		addr:      tg.addr,
		dial:      l.self < id, // one side dials, so a pair never holds two links
		q:         make(chan outMsg, l.m.o.QueueLen),
		inbound:   make(chan *quic.Conn, 1),
		restarted: make(chan struct{}, 1),
		ctx:       ctx,
		cancel:    cancel,
	}
	p.boot.Store(tg.boot)
	p.proto.Store(int64(tg.proto))
	l.peers[id] = p
	l.peerWG.Add(1)
	go func() { defer l.peerWG.Done(); p.run() }()
	return p
}

func (l *links) stats() []peerStat {
	s := *l.snap.Load()
	out := make([]peerStat, 0, len(s))
	for id, p := range s {
		out = append(out, peerStat{id: id, queueLen: len(p.q), queueBytes: p.qbytes.Load(), drops: p.drops.Load(), up: p.up.Load()})
	}
	return out
}

// ---- TLS ----

func (l *links) baseTLS() *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{l.cert},
		NextProtos:   offered(l.proto),
	}
}

// serverTLS checks inbound peers: a certificate from the cluster CA naming
// a node that is a live member whose advertised link address is the one the
// connection comes from.
func (l *links) serverTLS() *tls.Config {
	c := l.baseTLS()
	c.ClientAuth = tls.RequireAnyClientCert // verified in VerifyConnection, so refusals are logged
	c.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		var remote netip.AddrPort
		if hello.Conn != nil {
			remote = addrPortOf(hello.Conn.RemoteAddr())
		}
		// A peer whose versions all lie more than one away from ours
		// offers none of our ALPN IDs. The TLS stack would refuse it
		// anyway; refusing here says who and what to do.
		if theirs := newest(hello.SupportedProtos); theirs != 0 && !compatible(l.proto, theirs) {
			return nil, l.refuseVersion(l.m.memberAt(remote), remote, theirs)
		}
		cc := l.baseTLS()
		cc.ClientAuth = tls.RequireAnyClientCert
		cc.VerifyConnection = func(cs tls.ConnectionState) error { return l.verifyInbound(cs, remote) }
		return cc, nil
	}
	return c
}

func (l *links) verifyInbound(cs tls.ConnectionState, remote netip.AddrPort) error {
	id, err := pki.VerifyNode(cs.PeerCertificates, l.roots, time.Now())
	if err != nil {
		return l.refuse("bad_certificate", remote, "", err)
	}
	if id == l.self {
		return l.refuse("wrong_id", remote, id, errors.New("peer presents this node's own id"))
	}
	want, ok := l.m.memberLink(id)
	if !ok {
		return l.refuse("unknown_member", remote, id, errors.New("no live member with this id"))
	}
	if want.addr != remote {
		return l.refuse("address_mismatch", remote, id, fmt.Errorf("member %s advertises link address %v", id, want.addr))
	}
	return nil
}

// clientTLS checks the peer p we dial: a certificate from the cluster CA
// naming p's node id. A refusal is kept on p for the node map to show.
func (l *links) clientTLS(p *peer) *tls.Config {
	expect := p.id
	c := l.baseTLS()
	c.ServerName = expect
	// The chain and the node id are checked in VerifyConnection instead of
	// by host name: a peer is named by its node id, not a DNS name.
	c.InsecureSkipVerify = true
	c.VerifyConnection = func(cs tls.ConnectionState) error {
		remote := p.addr
		id, err := pki.VerifyNode(cs.PeerCertificates, l.roots, time.Now())
		if err != nil {
			err = l.refuse("bad_certificate", remote, expect, err)
		} else if id != expect {
			err = l.refuse("wrong_id", remote, id, fmt.Errorf("dialed %s but the certificate names %s", expect, id))
		}
		if err != nil {
			p.setRefused(strings.TrimPrefix(err.Error(), "mesh: "))
		}
		return err
	}
	return c
}

// vouch tells whether the link to member id vouches for its metadata md:
// a link is up, made to the process md announces (its boot id), and the
// certificate it presented names every public address md advertises among
// its IP addresses. If not, it says why. It takes no lock, so the mesh may
// call it with its own lock held.
func (l *links) vouch(id string, md *Meta) (bool, string) {
	p := (*l.snap.Load())[id]
	if p == nil {
		return false, "no mutual-TLS peer link"
	}
	pr := p.proof.Load()
	if pr == nil {
		why := "no mutual-TLS peer link up"
		if r := p.refused.Load(); r != nil {
			why += "; last dial: " + *r
		}
		return false, why
	}
	if pr.boot != md.Boot {
		return false, "peer link not yet made to the node's new process"
	}
	for _, a := range []netip.Addr{md.IPv4, md.IPv6} {
		if a.IsValid() && !certHasIP(pr.cert, a) {
			return false, fmt.Sprintf("public address %s is not among its certificate's IP addresses %v", a, pr.cert.IPAddresses)
		}
	}
	return true, ""
}

// certHasIP reports whether a is one of cert's IP address SANs.
func certHasIP(cert *x509.Certificate, a netip.Addr) bool {
	for _, ip := range cert.IPAddresses {
		if c, ok := netip.AddrFromSlice(ip); ok && c.Unmap() == a.Unmap() {
			return true
		}
	}
	return false
}

func (l *links) refuse(reason string, remote netip.AddrPort, id string, err error) error {
	l.m.met.refused.WithLabelValues(reason).Inc()
	lvl := slog.LevelWarn
	if reason == "unknown_member" {
		// Usually gossip has not told us about a brand-new node yet; it
		// will redial.
		lvl = slog.LevelInfo
	}
	l.log.Log(context.Background(), lvl, "peer link refused", "reason", reason, "remote", remote.String(), "peer", id, "err", err)
	return fmt.Errorf("mesh: link refused (%s): %w", reason, err)
}

// refuseVersion counts and logs the refusal of a link with peer (its node
// id, or "" when no member advertises the address), whose newest mesh
// protocol version is theirs. It returns the error for the handshake.
func (l *links) refuseVersion(peer string, remote netip.AddrPort, theirs int) error {
	l.m.met.refused.WithLabelValues("protocol_version").Inc()
	name := peer
	if name == "" {
		name = "at " + remote.String()
	}
	advice := versionAdvice(name, l.proto, theirs)
	l.vmu.Lock()
	first := l.versionLogged[name] != theirs
	l.versionLogged[name] = theirs
	l.vmu.Unlock()
	lvl := slog.LevelDebug
	if first {
		lvl = slog.LevelWarn
	}
	l.log.Log(context.Background(), lvl, "peer link refused: mesh protocol versions more than one apart",
		"reason", "protocol_version", "peer", peer, "remote", remote.String(),
		"peer_protocol", theirs, "local_protocol", l.proto, "action", advice)
	return fmt.Errorf("mesh: link refused (protocol_version): %s", advice)
}

func addrPortOf(a net.Addr) netip.AddrPort {
	if u, ok := a.(*net.UDPAddr); ok {
		ap := u.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// ---- accepting ----

func (l *links) acceptLoop(ctx context.Context) {
	for {
		conn, err := l.ln.Accept(ctx)
		if err != nil {
			return
		}
		id, err := pki.NodeIDFromCert(conn.ConnectionState().TLS.PeerCertificates[0])
		if err != nil { // verified in the handshake; cannot happen
			conn.CloseWithError(codeGone, "no node id")
			continue
		}
		l.deliver(id, conn)
	}
}

// deliver hands an accepted connection to its peer, creating the peer if
// the membership sync has not got to it yet.
func (l *links) deliver(id string, conn *quic.Conn) {
	l.mu.Lock()
	p := l.peers[id]
	if p == nil && !l.closed {
		if tg, ok := l.m.memberLink(id); ok {
			p = l.addPeerLocked(id, tg)
			l.publishSnap()
		}
	}
	l.mu.Unlock()
	if p == nil {
		conn.CloseWithError(codeGone, "not a member")
		return
	}
	l.m.met.connects.WithLabelValues("accepted").Inc()
	for {
		select {
		case p.inbound <- conn:
			return
		default:
		}
		// A connection is already waiting; the newest one wins.
		select {
		case old := <-p.inbound:
			old.CloseWithError(codeReplaced, "replaced") // local close: quick
		default:
		}
	}
}

// ---- sending ----

func (l *links) send(node, topic string, msg []byte) error {
	if node == l.self {
		return ErrSelf
	}
	if err := ValidTopic(topic); err != nil {
		return fmt.Errorf("mesh: %w", err)
	}
	if len(msg) > l.m.o.MaxMessageSize {
		l.m.met.drop("too_large", 1)
		return ErrTooLarge
	}
	p := (*l.snap.Load())[node]
	if p == nil {
		l.m.met.drop("unknown_peer", 1)
		return fmt.Errorf("%w: %q", ErrUnknownPeer, node)
	}
	return p.enqueue(outMsg{topic: topic, msg: msg})
}

func (l *links) broadcast(topic string, msg []byte) {
	if ValidTopic(topic) != nil {
		return
	}
	if len(msg) > l.m.o.MaxMessageSize {
		l.m.met.drop("too_large", 1)
		return
	}
	for _, p := range *l.snap.Load() {
		_ = p.enqueue(outMsg{topic: topic, msg: msg})
	}
}

func (l *links) handle(topic string, h Handler) {
	l.hmu.Lock()
	defer l.hmu.Unlock()
	old := *l.handlers.Load()
	next := make(map[string]Handler, len(old)+1)
	for k, v := range old {
		next[k] = v
	}
	if h == nil {
		delete(next, topic)
	} else {
		next[topic] = h
	}
	l.handlers.Store(&next)
}

// ---- one peer ----

// peer owns the link to one member: its send queue and a goroutine that
// runs the state machine
//
//	connecting (dial with backoff, or wait for the peer to dial)
//	  -> up (write batches; a reader goroutine dispatches inbound streams)
//	  -> down (connection lost or replaced) -> connecting ...
//
// until the member goes away or the mesh stops.
type peer struct {
	l    *links
	id   string
	addr netip.AddrPort
	dial bool

	q         chan outMsg
	qbytes    atomic.Int64
	drops     atomic.Uint64
	up        atomic.Bool
	inbound   chan *quic.Conn
	boot      atomic.Uint64 // the member's boot id as gossip last told us
	proto     atomic.Int64  // the member's mesh protocol version as gossip last told us
	restarted chan struct{} // boot changed: the current connection is stale

	ctx      context.Context
	cancel   context.CancelFunc
	graceful atomic.Bool

	// proof is what the link that is up proves about the peer; nil while
	// no link is up. refused is why the last dial was refused, if it was.
	proof   atomic.Pointer[linkProof]
	refused atomic.Pointer[string]
}

// linkProof is what an established link proves about a peer: the leaf
// certificate it presented, verified against the fleet CA and naming the
// peer's node id, and the boot id gossip announced for the process the
// link was made to.
type linkProof struct {
	cert  *x509.Certificate
	boot  uint64
	proto int // the mesh protocol version the link negotiated
}

// setRefused records why the last dial was refused ("": it was not), and
// has the node map rebuilt when that changed: the map shows it.
func (p *peer) setRefused(why string) {
	var old string
	if r := p.refused.Load(); r != nil {
		old = *r
	}
	if why == old {
		return
	}
	if why == "" {
		p.refused.Store(nil)
	} else {
		p.refused.Store(&why)
	}
	p.l.m.signal(p.l.m.dirty)
}

// setProof records the state of the peer's link and has the node map
// rebuilt, since DNS answers depend on it.
func (p *peer) setProof(pr *linkProof) {
	p.proof.Store(pr)
	p.l.m.signal(p.l.m.dirty)
}

func (p *peer) enqueue(it outMsg) error {
	n := int64(len(it.msg))
	if p.qbytes.Add(n) > int64(p.l.m.o.QueueBytes) {
		p.qbytes.Add(-n)
		p.drop("queue_full", 1)
		return ErrQueueFull
	}
	select {
	case p.q <- it:
		return nil
	default:
		p.qbytes.Add(-n)
		p.drop("queue_full", 1)
		return ErrQueueFull
	}
}

func (p *peer) drop(reason string, n int) {
	p.drops.Add(uint64(n))
	p.l.m.met.drop(reason, n)
}

func (p *peer) stop(graceful bool) {
	p.graceful.Store(graceful)
	p.cancel()
}

func (p *peer) run() {
	log := p.l.log.With("peer", p.id, "addr", p.addr.String())
	var next *quic.Conn // a newer connection that replaced the current one
	defer func() {
		p.up.Store(false)
		p.setProof(nil)
		if next != nil {
			next.CloseWithError(codeGone, "peer removed")
		}
		// Whatever is still queued will never be sent.
		n := 0
		for {
			select {
			case <-p.q:
				n++
				continue
			case c := <-p.inbound:
				c.CloseWithError(codeGone, "peer removed")
				continue
			default:
			}
			break
		}
		if n > 0 {
			p.drop("peer_gone", n)
		}
	}()
	bo := backoff{}
	for p.ctx.Err() == nil {
		conn := next
		next = nil
		if conn == nil {
			conn = p.connect(&bo, log)
			if conn == nil {
				return
			}
		}
		since := time.Now()
		// The process this connection reaches, as far as gossip has told
		// us. (A connection made just before gossip reports a restart is
		// dropped once too often; the redial costs a round trip.)
		boot := p.boot.Load()
		// Both ends offered only versions they speak, so the handshake's
		// choice is one both speak.
		ver, _ := parseALPN(conn.ConnectionState().TLS.NegotiatedProtocol)
		if certs := conn.ConnectionState().TLS.PeerCertificates; len(certs) > 0 {
			// Verified in the handshake: clientTLS or verifyInbound.
			p.setProof(&linkProof{cert: certs[0], boot: boot, proto: ver})
		}
		p.up.Store(true)
		log.Info("peer link up", "dialer", p.dial, "protocol", ver)
		var err error
		next, err = p.serve(conn, boot, ver)
		p.up.Store(false)
		p.setProof(nil)
		if p.ctx.Err() != nil {
			return
		}
		log.Info("peer link down", "err", err, "up_for", time.Since(since).Round(time.Millisecond).String())
		if time.Since(since) >= healthyLink || errors.Is(err, errPeerRestarted) {
			bo.reset()
		}
	}
}

// connect returns the next connection: dialed by us (lower id), or accepted
// from the peer. nil means the peer is stopping.
func (p *peer) connect(bo *backoff, log *slog.Logger) *quic.Conn {
	for {
		if theirs := int(p.proto.Load()); !compatible(p.l.proto, theirs) {
			// Gossip says the member's version is too far from ours: no
			// dial (its handshake would fail on ALPN anyway), one refusal
			// logged and shown on the node map until its process changes.
			err := p.l.refuseVersion(p.id, p.addr, theirs)
			p.setRefused(strings.TrimPrefix(err.Error(), "mesh: "))
			select {
			case <-p.ctx.Done():
				return nil
			case c := <-p.inbound:
				// Gossip was stale: the handshake proved a version we speak.
				return c
			case <-p.restarted:
				continue
			}
		}
		if !p.dial {
			select {
			case <-p.ctx.Done():
				return nil
			case c := <-p.inbound:
				return c
			}
		}
		if d := bo.next(); d > 0 {
			t := time.NewTimer(d)
			select {
			case <-p.ctx.Done():
				t.Stop()
				return nil
			case c := <-p.inbound:
				t.Stop()
				return c
			case <-t.C:
			}
		}
		ctx, cancel := context.WithTimeout(p.ctx, dialTimeout)
		c, err := p.l.tr.Dial(ctx, net.UDPAddrFromAddrPort(p.addr), p.l.clientTLS(p), p.l.qconf)
		cancel()
		if err == nil {
			p.l.m.met.connects.WithLabelValues("dialed").Inc()
			p.setRefused("")
			return c
		}
		if p.ctx.Err() != nil {
			return nil
		}
		p.l.m.met.dialErrors.WithLabelValues(p.id).Inc()
		lvl := slog.LevelDebug
		if bo.attempt <= 2 || bo.attempt%20 == 0 {
			lvl = slog.LevelInfo
		}
		log.Log(context.Background(), lvl, "peer link dial failed", "attempt", bo.attempt, "err", err)
	}
}

// outStream is our send side of one topic on one connection.
type outStream struct {
	s        *quic.SendStream
	buf      []byte
	n        int // messages in buf
	payload  int // payload bytes in buf
	messages prometheus.Counter
	bytes    prometheus.Counter
}

var errPeerRestarted = errors.New("peer restarted")

// serve runs one connection until it fails, the peer stops, or the peer
// dials again (the new connection is returned to replace this one).
func (p *peer) serve(conn *quic.Conn, connBoot uint64, ver int) (*quic.Conn, error) {
	var readers sync.WaitGroup
	readers.Add(1)
	go func() { defer readers.Done(); p.l.readConn(p.ctx, conn, p.id, ver, &readers) }()
	finish := func(code quic.ApplicationErrorCode, why string) {
		conn.CloseWithError(code, why)
		readers.Wait()
	}

	streams := map[string]*outStream{}
	var pending int
	add := func(it outMsg) error {
		s := streams[it.topic]
		if s == nil {
			st, err := conn.OpenUniStream()
			if err != nil {
				ctx, cancel := context.WithTimeout(p.ctx, dialTimeout)
				st, err = conn.OpenUniStreamSync(ctx)
				cancel()
				if err != nil {
					p.qbytes.Add(-int64(len(it.msg)))
					p.drop("link_error", 1)
					return fmt.Errorf("open stream %q: %w", it.topic, err)
				}
			}
			s = &outStream{
				s:        st,
				buf:      appendStreamHeader(make([]byte, 0, 4096), ver, it.topic),
				messages: p.l.m.met.messages.WithLabelValues(it.topic, "out"),
				bytes:    p.l.m.met.bytes.WithLabelValues(it.topic, "out"),
			}
			streams[it.topic] = s
		}
		s.buf = appendFrame(s.buf, it.msg)
		s.n++
		s.payload += len(it.msg)
		pending += frameSize(len(it.msg))
		p.qbytes.Add(-int64(len(it.msg)))
		return nil
	}
	flush := func() error {
		var firstErr error
		for _, s := range streams {
			if len(s.buf) == 0 {
				continue
			}
			if firstErr == nil {
				s.s.SetWriteDeadline(time.Now().Add(writeTimeout))
				if _, err := s.s.Write(s.buf); err != nil {
					firstErr = fmt.Errorf("write: %w", err)
				}
			}
			if firstErr != nil {
				p.drop("link_error", s.n)
			} else {
				s.messages.Add(float64(s.n))
				s.bytes.Add(float64(s.payload))
			}
			if cap(s.buf) > 4*batchBytes {
				s.buf = nil // don't keep a huge buffer after one big message
			} else {
				s.buf = s.buf[:0]
			}
			s.n, s.payload = 0, 0
		}
		pending = 0
		return firstErr
	}

	connDone := conn.Context().Done()
	for {
		select {
		case <-p.ctx.Done():
			if p.graceful.Load() {
				finish(codeLeaving, "leaving")
			} else {
				finish(codeGone, "stopped")
			}
			return nil, p.ctx.Err()
		case <-connDone:
			readers.Wait()
			return nil, context.Cause(conn.Context())
		case nc := <-p.inbound:
			finish(codeReplaced, "replaced by a newer connection")
			return nc, errors.New("replaced by a newer connection")
		case <-p.restarted:
			if p.boot.Load() != connBoot {
				finish(codeGone, "peer restarted")
				return nil, errPeerRestarted
			}
		case it := <-p.q:
			err := add(it)
		batch:
			for err == nil && pending < batchBytes {
				select {
				case it := <-p.q:
					err = add(it)
				default:
					break batch
				}
			}
			if ferr := flush(); err == nil {
				err = ferr
			}
			if err != nil {
				finish(codeWriteFail, "write failed")
				return nil, err
			}
		}
	}
}

// readConn accepts the peer's topic streams until the connection ends.
func (l *links) readConn(ctx context.Context, conn *quic.Conn, from string, ver int, wg *sync.WaitGroup) {
	for {
		s, err := conn.AcceptUniStream(ctx)
		if err != nil {
			return
		}
		wg.Add(1)
		go func() { defer wg.Done(); l.readStream(s, from, ver) }()
	}
}

func (l *links) readStream(s *quic.ReceiveStream, from string, ver int) {
	br := bufio.NewReaderSize(s, 64<<10)
	topic, err := readStreamHeader(br, ver)
	if err != nil {
		if !isClosed(err) {
			l.log.Warn("bad link stream from peer", "peer", from, "err", err)
		}
		s.CancelRead(codeBadStream)
		return
	}
	messages := l.m.met.messages.WithLabelValues(topic, "in")
	bytes := l.m.met.bytes.WithLabelValues(topic, "in")
	for {
		msg, err := readFrame(br, l.m.o.MaxMessageSize)
		if err != nil {
			if err != io.EOF && !isClosed(err) {
				l.log.Warn("bad frame from peer; stream dropped", "peer", from, "topic", topic, "err", err)
				s.CancelRead(codeBadStream)
			}
			return
		}
		messages.Inc()
		bytes.Add(float64(len(msg)))
		h := (*l.handlers.Load())[topic]
		if h == nil {
			l.m.met.drop("no_handler", 1)
			continue
		}
		h(from, msg)
	}
}

// isClosed reports errors that just mean the connection or stream ended.
func isClosed(err error) bool {
	var appErr *quic.ApplicationError
	var idle *quic.IdleTimeoutError
	var streamErr *quic.StreamError
	var reset *quic.StatelessResetError
	return errors.Is(err, net.ErrClosed) || errors.Is(err, context.Canceled) ||
		errors.As(err, &appErr) || errors.As(err, &idle) || errors.As(err, &streamErr) || errors.As(err, &reset)
}

// backoff is exponential with jitter: each wait is uniform in [d/2, d), d
// doubling from backoffMin to backoffMax. The first attempt does not wait.
type backoff struct {
	attempt int
}

func (b *backoff) next() time.Duration {
	b.attempt++
	if b.attempt == 1 {
		return 0
	}
	d := backoffMin << min(b.attempt-2, 16)
	if d > backoffMax || d <= 0 {
		d = backoffMax
	}
	return d/2 + rand.N(d/2)
}

func (b *backoff) reset() { b.attempt = 0 }
