package pubsub

import (
	"bytes"
	"container/list"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgenode/edgenode/internal/clientaddr"
)

// Mesh is what pubsub needs from the cluster mesh (internal/mesh satisfies
// it). Send and Broadcast must not block; Handle's handler is called for
// every message a peer sends on the topic and must not block either. A
// mesh that is also a nodemap.Source (internal/mesh is) tells pubsub this
// node's id and which peers are dead.
type Mesh interface {
	Send(node, topic string, msg []byte) error
	Broadcast(topic string, msg []byte)
	Handle(topic string, h func(from string, msg []byte))
}

// Mesh topics of pubsub traffic between nodes: messages (and history sent
// for a sync) on MeshTopic, everything else (heartbeats, interest, sync
// requests, presence) on MeshControlTopic.
const (
	MeshTopic        = "pubsub"
	MeshControlTopic = "pubsub-ctl"
)

// Errors of Publish.
var (
	ErrBadChannel    = errors.New(`pubsub: channel must be "{tenant}/{thread}"`)
	ErrUnknownTenant = errors.New("pubsub: unknown tenant")
	ErrTooLarge      = errors.New("pubsub: message data too large")
	ErrBadData       = errors.New("pubsub: message data is not JSON")
	ErrClosed        = errors.New("pubsub: closed")
)

// PubSub is the live-channel service of one node.
type PubSub struct {
	opts Options
	log  *slog.Logger
	met  *metrics
	mesh Mesh
	// tenants and live are what a reload replaces (Reconfigure): the
	// tenants by name, and opts with the limits a reload may change.
	tenants atomic.Pointer[map[string]*tenant]
	live    atomic.Pointer[Options]
	up      websocket.Upgrader
	poller  *poller // nil: a reader goroutine per websocket
	pres    *presence
	cl      *cluster // nil: a single node

	chMu     sync.RWMutex
	channels map[string]*channel
	byHash   map[uint64]*channel // channels by channelHash, for interest digests
	idle     *list.List          // channels without subscribers, most recently idle first

	connMu   sync.RWMutex
	conns    map[uint64]*conn
	perIP    map[netip.Addr]int
	nextID   uint64
	draining bool
	closed   bool

	clock atomic.Int64 // unix nanoseconds, updated by the sweeper every tick

	writers *writerPool // websocket writer workers

	stop chan struct{}
	bg   sync.WaitGroup // sweeper, poller, presence, cluster
	wg   sync.WaitGroup // per-connection goroutines: writers, readers, SSE handlers
}

// New builds a PubSub and starts its background work (keepalive sweeper,
// readiness poller, presence exchange). mesh may be nil (a single node).
func New(opts Options, mesh Mesh, log *slog.Logger, reg prometheus.Registerer) (*PubSub, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	o := opts.withDefaults()
	if err := o.validate(); err != nil {
		return nil, fmt.Errorf("pubsub: options: %w", err)
	}
	met, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	p := &PubSub{
		opts:     o,
		log:      log,
		met:      met,
		mesh:     mesh,
		channels: make(map[string]*channel),
		byHash:   make(map[uint64]*channel),
		idle:     list.New(),
		conns:    make(map[uint64]*conn),
		perIP:    make(map[netip.Addr]int),
		stop:     make(chan struct{}),
	}
	p.clock.Store(time.Now().UnixNano())
	p.live.Store(&o)
	tenants, rules := p.tenantsFor(o.Tenants)
	for name, r := range rules {
		tenants[name].rules.Store(r)
	}
	p.tenants.Store(&tenants)
	p.up = websocket.Upgrader{
		HandshakeTimeout: 10 * time.Second,
		// The gorilla connection is dropped right after the handshake (see
		// wsframe.go); tiny buffers keep the handshake cheap.
		ReadBufferSize:  64,
		WriteBufferSize: 64,
		WriteBufferPool: &sync.Pool{},
		CheckOrigin:     func(*http.Request) bool { return true }, // checked per tenant in serveWS
		Error: func(w http.ResponseWriter, r *http.Request, status int, reason error) {
			http.Error(w, reason.Error(), status)
		},
	}
	if !o.DisablePoller {
		pl, err := newPoller(p)
		if err != nil {
			log.Warn("pubsub: no readiness poller; one reader goroutine per websocket", "err", err)
		} else {
			p.poller = pl
		}
	}
	p.writers = newWriterPool(p)
	p.writers.start()
	p.bg.Add(1)
	go p.sweeper()
	if p.poller != nil {
		p.bg.Add(1)
		go p.poller.run()
	}
	if mesh != nil {
		p.pres = newPresence(p)
		p.cl = newCluster(p, mesh)
		mesh.Handle(MeshTopic, func(from string, msg []byte) { p.onPeer(from, MeshTopic, msg) })
		mesh.Handle(MeshControlTopic, func(from string, msg []byte) { p.onPeer(from, MeshControlTopic, msg) })
		p.bg.Add(2)
		go p.pres.run()
		go p.cl.run()
	}
	return p, nil
}

// Routes are the public routes, for the transport.
func (p *PubSub) Routes() map[string]http.Handler {
	return map[string]http.Handler{
		"GET /ws":  http.HandlerFunc(p.serveWS),
		"GET /sse": http.HandlerFunc(p.serveSSE),
	}
}

// ---- connections ----

// reserve counts a new connection from ip against the limits; "" when it
// may proceed, else the refusal reason. The per-address limit counts by
// clientKey (an IPv6 /64 is one client).
func (p *PubSub) reserve(ip netip.Addr) string {
	key := clientaddr.Key(ip)
	p.connMu.Lock()
	defer p.connMu.Unlock()
	switch {
	case p.closed || p.draining:
		return "draining"
	case p.o().MaxConnsPerIP > 0 && p.perIP[key] >= p.o().MaxConnsPerIP:
		return "conns_per_ip"
	}
	p.perIP[key]++
	return ""
}

func (p *PubSub) release(ip netip.Addr) {
	p.connMu.Lock()
	p.releaseLocked(ip)
	p.connMu.Unlock()
}

func (p *PubSub) releaseLocked(ip netip.Addr) {
	key := clientaddr.Key(ip)
	if p.perIP[key]--; p.perIP[key] <= 0 {
		delete(p.perIP, key)
	}
}

// admit makes a reserved connection visible (to fan-out, sweeper, Drain).
// It fails when the node started draining meanwhile; the reservation is
// then released.
func (p *PubSub) admit(c *conn) bool {
	p.connMu.Lock()
	defer p.connMu.Unlock()
	if p.closed || p.draining {
		p.releaseLocked(c.ip)
		return false
	}
	p.nextID++
	c.id = p.nextID
	p.conns[c.id] = c
	// The handler's remaining work counts as one of the connection's
	// goroutines (it calls wg.Done when it returns): Close waits for it.
	p.wg.Add(1)
	if c.kind == kindWS {
		p.met.connsWS.Inc()
	} else {
		p.met.connsSSE.Inc()
	}
	return true
}

func (p *PubSub) unregister(c *conn) {
	// Metrics first: once the connection is out of the map, Drain may
	// return and someone may read them.
	c.mu.Lock()
	reason := c.reason
	c.mu.Unlock()
	p.met.disconnects.WithLabelValues(reason).Inc()
	if c.kind == kindWS {
		p.met.connsWS.Dec()
	} else {
		p.met.connsSSE.Dec()
	}
	p.connMu.Lock()
	delete(p.conns, c.id)
	p.releaseLocked(c.ip)
	p.connMu.Unlock()
}

func (p *PubSub) lookup(id uint64) *conn {
	p.connMu.RLock()
	c := p.conns[id]
	p.connMu.RUnlock()
	return c
}

func (p *PubSub) connCount() int {
	p.connMu.RLock()
	defer p.connMu.RUnlock()
	return len(p.conns)
}

func (p *PubSub) snapshotConns() []*conn {
	p.connMu.RLock()
	defer p.connMu.RUnlock()
	out := make([]*conn, 0, len(p.conns))
	for _, c := range p.conns {
		out = append(out, c)
	}
	return out
}

// ---- client frames ----

func (p *PubSub) handleClientFrame(c *conn, b []byte) {
	f, code := decodeClientFrame(b)
	if code != "" {
		c.clientError(code, "", f.ID, "")
		return
	}
	if f.Type != typePing && !c.takeToken(time.Now()) {
		// Before authorize: a flood must not buy token checks either.
		p.refuse(codeRateLimited)
		c.clientError(codeRateLimited, refusalText[codeRateLimited], f.ID, f.Channel)
		return
	}
	switch f.Type {
	case typeSubscribe:
		p.subscribe(c, f.Channel, f.Token, f.Since, f.ID)
	case typeUnsubscribe:
		p.unsubscribe(c, f.Channel, f.ID)
	case typePresence:
		p.presenceFrame(c, f.Channel, f.ID)
	case typePing:
		c.enqueue(connFrame(c.kind, serverFrame{Type: typePong, ID: f.ID}))
	}
}

// authorize checks that c may subscribe to name with tok. It binds an
// unbound connection to the channel's tenant. It returns the refusal code,
// "" when allowed; refusals are counted.
func (p *PubSub) authorize(c *conn, name, tok string) (*tenant, string) {
	tn, thread, ok := splitChannel(name)
	if !ok {
		return nil, p.refuse(codeBadChannel)
	}
	t := p.tenant(tn)
	if t == nil {
		return nil, p.refuse(codeUnknownTenant)
	}
	c.mu.Lock()
	bound := c.tenant
	c.mu.Unlock()
	if bound != nil && bound != t {
		return nil, p.refuse(codeTenantMismatch)
	}
	if !originAllowed(t.r().origins, c.origin) {
		return nil, p.refuse(codeOrigin)
	}
	if !t.isPublic(thread) {
		if tok == "" {
			return nil, p.refuse(codeTokenRequired)
		}
		if code := verifyToken(t, tok, thread, time.Now()); code != "" {
			return nil, p.refuse(code)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.tenant == nil {
		c.tenant = t
	} else if c.tenant != t {
		return nil, p.refuse(codeTenantMismatch)
	}
	return t, ""
}

func (p *PubSub) refuse(code string) string {
	p.met.refusals.WithLabelValues(code).Inc()
	return code
}

func (p *PubSub) subscribe(c *conn, name, tok string, since *Position, id string) {
	t, code := p.authorize(c, name, tok)
	if code != "" {
		c.clientError(code, refusalText[code], id, name)
		return
	}
	if code := p.join(c, t, name, since, id); code != "" {
		c.clientError(code, refusalText[code], id, name)
	}
}

var refusalText = map[string]string{
	codeBadChannel:      `channel must be "{tenant}/{thread}"`,
	codeUnknownTenant:   "no such tenant",
	codeTenantMismatch:  "this connection belongs to another tenant",
	codeOrigin:          "origin not allowed for this tenant",
	codeTokenRequired:   "private channel: a token is required",
	codeTokenInvalid:    "token is malformed or its signature is wrong",
	codeTokenExpired:    "token expired",
	codeTokenTenant:     "token is for another tenant",
	codeTokenScope:      "token does not cover this channel",
	codeTooManySubs:     "too many subscriptions on this connection",
	codeTooManyChannels: "too many channels on this node: try again later",
	codeRateLimited:     "too many subscribe and unsubscribe frames: slow down",
	codeNotSubscribed:   "not subscribed to this channel",
}

// join adds the subscription (authorized already). With peers, the first
// subscriber of a channel here waits for a follow round (and a resuming
// one whose position the history here does not cover, for a fetch round);
// the reply comes when it completes. Otherwise the "subscribed" reply and
// any history the client missed are queued at once, in the same critical
// section as live fan-out, so nothing is lost or repeated.
func (p *PubSub) join(c *conn, t *tenant, name string, since *Position, id string) string {
	c.mu.Lock()
	if c.state != stateOpen {
		c.mu.Unlock()
		return ""
	}
	for _, s := range c.subs {
		if s.ch.name == name {
			c.mu.Unlock()
			// Already subscribed: confirm, change nothing. (One still
			// waiting for its round gets its reply then.)
			s.ch.mu.Lock()
			pending := s.pending
			pos := s.ch.vec.position(time.Now())
			s.ch.mu.Unlock()
			if !pending {
				c.enqueue(connFrame(c.kind, serverFrame{Type: typeSubscribed, ID: id, Channel: name, Position: &pos}))
			}
			return ""
		}
	}
	if len(c.subs) >= p.o().MaxSubsPerConn {
		c.mu.Unlock()
		return p.refuse(codeTooManySubs)
	}
	c.mu.Unlock()

	s := &subscription{c: c, id: id, idx: -1}
	if since != nil {
		s.hasSince = true
		v, t, legacy, ok := parseToken(since.Epoch)
		s.since, s.sinceT, s.legacy = v, t, legacy || !ok
	}
	now := time.Now()
	for {
		ch, _, code := p.channel(t, name, now)
		if code != "" {
			return p.refuse(code)
		}
		ch.mu.Lock()
		if ch.dead {
			ch.mu.Unlock()
			continue
		}
		ch.trimLocked(now, p.o().HistoryTTL)
		c.mu.Lock()
		if c.state != stateOpen {
			c.mu.Unlock()
			idle := ch.interestLocked() == 0
			ch.mu.Unlock()
			if idle {
				p.noteIdle(ch) // it may have been made for this subscription
			}
			return ""
		}
		s.ch = ch
		c.subs = append(c.subs, s)
		c.mu.Unlock()
		p.met.subs.Inc()
		p.subscribeLocked(ch, s, now)
		ch.mu.Unlock()
		return ""
	}
}

// subscribeLocked admits s at once when it can, or makes it wait for a
// round.
func (p *PubSub) subscribeLocked(ch *channel, s *subscription, now time.Time) {
	if p.cl == nil {
		p.admitLocked(ch, s, nil, true, now)
		return
	}
	if ch.follow == following {
		if p.admitLocked(ch, s, nil, false, now) {
			return
		}
		// The history here does not cover its position: ask the peers.
		p.addPendingLocked(ch, s)
		if ch.round == nil {
			p.startFetchLocked(ch, now)
		}
		return
	}
	p.addPendingLocked(ch, s)
	if ch.follow == notFollowing {
		p.startFollowLocked(ch, now)
	}
}

func (p *PubSub) addPendingLocked(ch *channel, s *subscription) {
	s.pending = true
	s.idx = len(ch.pending)
	ch.pending = append(ch.pending, s)
}

// startFollowLocked begins following ch: every peer is asked to send its
// messages here and to say what it has (and, for subscribers resuming,
// the messages after their positions).
func (p *PubSub) startFollowLocked(ch *channel, now time.Time) {
	ch.follow = syncing
	ch.followFrom = now.UnixMilli()
	ch.confirmed = map[string]bool{}
	flags := byte(syncRegister)
	id := p.cl.newRoundID()
	since, any := p.pendingSinceLocked(ch, id)
	if any {
		flags |= syncMessages | syncAll
	}
	p.startRoundLocked(ch, id, roundFollow, flags, since, p.cl.targets(now), now)
}

// startFetchLocked asks the peers for the messages after the positions of
// the subscribers waiting, or after what this node has when that is less
// (a subscriber ahead of this node needs what this node lacks too).
func (p *PubSub) startFetchLocked(ch *channel, now time.Time) {
	id := p.cl.newRoundID()
	since, _ := p.pendingSinceLocked(ch, id)
	for i, e := range since {
		if st := ch.streams[e.sid]; st != nil && st.last < e.seq {
			since[i].seq = st.last // may be 0: the whole stream
		}
	}
	p.startRoundLocked(ch, id, roundFetch, syncMessages|syncAll, since, p.cl.targets(now), now)
}

// pendingSinceLocked is the vector a round asks from: for each stream,
// the oldest position of the waiting subscribers (a stream one of them
// does not name is wanted whole). any reports whether one resumes at all.
// Every subscriber waiting now is marked as asked for by round id.
func (p *PubSub) pendingSinceLocked(ch *channel, id uint64) (since vector, any bool) {
	for _, s := range ch.pending {
		s.askedIn = id
		if !s.hasSince || s.legacy {
			continue
		}
		if !any {
			since, any = append(vector(nil), s.since...), true
		} else {
			since = minVec(since, s.since)
		}
	}
	return since, any
}

// admitLocked adds s to the channel's subscribers and queues its reply:
// "subscribed" and, when it resumes, what it missed, from the history and
// extra (what a round fetched). When those do not cover its position it
// gets must_reload first; unless final, it is then left waiting instead
// (false), for a fetch round.
func (p *PubSub) admitLocked(ch *channel, s *subscription, extra map[msgKey]*outMsg, final bool, now time.Time) bool {
	var replay []*outMsg
	reload := s.legacy
	if s.hasSince && !s.legacy {
		var ok bool
		replay, ok, _ = ch.replayLocked(s.since, s.sinceT, p.o().HistoryTTL, extra)
		if !ok {
			if !final {
				return false
			}
			reload, replay = true, nil
		}
	}
	if s.hasSince {
		if reload {
			p.met.recoveries.WithLabelValues("must_reload").Inc()
		} else {
			p.met.recoveries.WithLabelValues("recovered").Inc()
		}
	}
	s.pending = false
	ch.addLocked(s)
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if reload {
		c.enqueueLocked(connFrame(c.kind, serverFrame{Type: typeError, Code: codeMustReload, ID: s.id, Channel: ch.name,
			Reason: "history does not cover the gap: reload the channel's state"}), false)
	}
	pos := ch.vec
	if s.hasSince && !reload {
		pos = unionVec(s.since, ch.vec)
	}
	wire := pos.position(now)
	sub := serverFrame{Type: typeSubscribed, ID: s.id, Channel: ch.name, Position: &wire}
	if s.hasSince && !reload {
		n := len(replay)
		sub.Recovered = &n
	}
	c.enqueueLocked(connFrame(c.kind, sub), false)
	// Replayed messages carry the subscriber's own position after each
	// (its vector, not this node's, whose order may differ).
	cur := append(vector(nil), s.since...)
	for _, m := range replay {
		cur = cur.with(m.sid, m.seq)
		c.enqueueLocked(newMessage(ch.name, cur.position(now), m.data, m.at), false)
	}
	s.since, s.id = nil, "" // only needed while waiting
	return true
}

// admitPendingLocked admits the subscribers that waited for round r. Those
// whose position r did not ask for and still is not covered wait for one
// more (fetch) round.
func (p *PubSub) admitPendingLocked(ch *channel, r *syncRound, now time.Time) {
	if r.kind == roundRepair || ch.round != nil || len(ch.pending) == 0 {
		return
	}
	pend := ch.pending
	ch.pending = nil
	var again []*subscription
	for _, s := range pend {
		s.idx = -1
		if ch.follow == following && p.admitLocked(ch, s, r.got, s.askedIn == r.id, now) {
			continue
		}
		again = append(again, s)
	}
	for _, s := range again {
		p.addPendingLocked(ch, s)
	}
	if len(again) > 0 && ch.follow == following {
		p.startFetchLocked(ch, now)
	}
}

// leftLocked is called when the channel's last subscriber has left: this
// node stops following it (its history stays, for clients coming back).
func (p *PubSub) leftLocked(ch *channel) {
	if p.cl == nil || ch.follow == notFollowing {
		return
	}
	ch.follow = notFollowing
	ch.confirmed = nil
	ch.round, ch.repair = nil, nil // answers to them are dropped
	for _, st := range ch.streams {
		st.ooo, st.gapAt, st.tries, st.fresh = nil, time.Time{}, 0, false
		st.head = st.last
	}
	p.cl.unfollow(ch.hash)
}

// channel returns the state of channel name of tenant t, creating it when
// the caps allow: idle channels are forgotten to make room, and when there
// is none, the refusal code is returned.
func (p *PubSub) channel(t *tenant, name string, now time.Time) (ch *channel, created bool, code string) {
	p.chMu.RLock()
	ch = p.channels[name]
	p.chMu.RUnlock()
	if ch != nil {
		return ch, false, ""
	}
	p.chMu.Lock()
	defer p.chMu.Unlock()
	if ch = p.channels[name]; ch != nil {
		return ch, false, ""
	}
	if t.nChannels >= p.o().MaxChannelsPerTenant && !p.evictIdleLocked(t.idle) ||
		len(p.channels) >= p.o().MaxChannels && !p.evictIdleLocked(p.idle) {
		return nil, false, codeTooManyChannels
	}
	ch = &channel{name: name, hash: channelHash(name), tenant: t, touched: now}
	if p.cl == nil {
		ch.follow = following // alone, a node has every message
	}
	p.channels[name] = ch
	p.byHash[ch.hash] = ch
	t.nChannels++
	p.met.channels.Inc()
	return ch, true, ""
}

// evictIdleLocked forgets the channel of l that has been idle longest and
// reports whether there was one. Channels found with subscribers are taken
// off the idle lists on the way. Called with chMu held.
func (p *PubSub) evictIdleLocked(l *list.List) bool {
	for e := l.Back(); e != nil; {
		prev := e.Prev()
		ch := e.Value.(*channel)
		ch.mu.Lock()
		if ch.interestLocked() > 0 {
			p.unlistIdleLocked(ch)
			ch.mu.Unlock()
			e = prev
			continue
		}
		p.forgetLocked(ch)
		ch.mu.Unlock()
		return true
	}
	return false
}

// forgetLocked removes ch from the node, with chMu and ch.mu held. A
// joiner that still holds it sees dead and looks the name up again.
func (p *PubSub) forgetLocked(ch *channel) {
	ch.dead = true
	delete(p.channels, ch.name)
	if p.byHash[ch.hash] == ch {
		delete(p.byHash, ch.hash)
	}
	ch.tenant.nChannels--
	p.unlistIdleLocked(ch)
	p.met.channels.Dec()
}

func (p *PubSub) unlistIdleLocked(ch *channel) {
	if ch.idleAll != nil {
		p.idle.Remove(ch.idleAll)
		ch.tenant.idle.Remove(ch.idleTenant)
		ch.idleAll, ch.idleTenant = nil, nil
	}
}

// noteIdle lists channels whose last subscriber has just left as the most
// recently idle ones (unless someone subscribed again meanwhile).
func (p *PubSub) noteIdle(chs ...*channel) {
	p.chMu.Lock()
	defer p.chMu.Unlock()
	for _, ch := range chs {
		ch.mu.Lock()
		if !ch.dead && ch.interestLocked() == 0 {
			if ch.idleAll == nil {
				ch.idleAll = p.idle.PushFront(ch)
				ch.idleTenant = ch.tenant.idle.PushFront(ch)
			} else {
				p.idle.MoveToFront(ch.idleAll)
				ch.tenant.idle.MoveToFront(ch.idleTenant)
			}
		}
		ch.mu.Unlock()
	}
}

func (p *PubSub) unsubscribe(c *conn, name, id string) {
	c.mu.Lock()
	var s *subscription
	for i, x := range c.subs {
		if x.ch.name == name {
			s = x
			last := len(c.subs) - 1
			c.subs[i] = c.subs[last]
			c.subs[last] = nil
			c.subs = c.subs[:last]
			break
		}
	}
	c.mu.Unlock()
	if s == nil {
		c.clientError(codeNotSubscribed, refusalText[codeNotSubscribed], id, name)
		return
	}
	s.ch.mu.Lock()
	idle := s.ch.removeLocked(s, time.Now())
	if idle {
		p.leftLocked(s.ch)
	}
	s.ch.mu.Unlock()
	p.met.subs.Dec()
	if idle {
		p.noteIdle(s.ch)
	}
	c.enqueue(connFrame(c.kind, serverFrame{Type: typeUnsubscribed, ID: id, Channel: name}))
}

// presenceFrame answers a client's presence frame with the channel's
// cluster-wide subscriber count, the number GET /v1/presence reports as
// "cluster". Only a channel the connection is subscribed to may be asked
// about: its subscription already passed authorize (tenant, token, public
// patterns), so the same rules hold without checking a token again, and a
// connection cannot probe channels it may not read. The reply is a count
// only, never who: the public listener carries no per-user data, and
// subscribers are anonymous to each other.
func (p *PubSub) presenceFrame(c *conn, name, id string) {
	c.mu.Lock()
	subscribed := false
	for _, s := range c.subs {
		if s.ch.name == name {
			subscribed = true
			break
		}
	}
	c.mu.Unlock()
	if !subscribed {
		c.clientError(codeNotSubscribed, refusalText[codeNotSubscribed], id, name)
		return
	}
	_, cluster := p.Presence(name)
	c.enqueue(connFrame(c.kind, serverFrame{Type: typePresence, ID: id, Channel: name, Count: &cluster}))
}

// ---- publishing ----

// Publish sends data to every subscriber of channel on this node and to
// every peer that follows the channel. data must be JSON; it is compacted
// (so that it fits one SSE data line). The message is the next of this
// node's stream of the channel; the position returned is the channel's
// here just after it.
func (p *PubSub) Publish(channel string, data json.RawMessage) (Position, error) {
	compact, err := p.checkMessage(channel, data)
	if err != nil {
		return Position{}, err
	}
	p.connMu.RLock()
	closed := p.closed
	p.connMu.RUnlock()
	if closed {
		return Position{}, ErrClosed
	}
	p.met.publishes.WithLabelValues("local").Inc()
	tn, _, _ := splitChannel(channel)
	now := time.Now()
	for {
		ch, created, code := p.channel(p.tenant(tn), channel, now)
		if code != "" {
			// No room to keep the channel: the message goes out in a
			// stream of its own, kept nowhere here.
			m := wireMsg{channel: channel, sid: newSID(), seq: 1, otime: now.UnixMilli(), data: compact}
			if p.cl != nil {
				p.cl.publish(channelHash(channel), encodeMessage(m), channel, compact)
			}
			return vector{{m.sid, 1}}.position(now), nil
		}
		ch.mu.Lock()
		if ch.dead {
			ch.mu.Unlock()
			continue
		}
		st := ch.ownStreamLocked(now, p.o().HistoryTTL)
		seq := st.last + 1
		st.otime = max(st.otime, now.UnixMilli()) // never backwards within a stream
		if p.cl != nil {
			// Peers first (under the lock, so that every peer gets the
			// stream in order): their fan-out runs while ours does.
			p.cl.publish(ch.hash, encodeMessage(wireMsg{channel: channel, sid: st.sid, seq: seq, otime: st.otime, data: compact}), channel, compact)
		}
		p.appendLocked(ch, st, seq, st.otime, compact, now)
		pos := ch.vec.position(now)
		idle := ch.interestLocked() == 0
		ch.mu.Unlock()
		if created && idle {
			p.noteIdle(ch) // kept for its history, but evictable
		}
		return pos, nil
	}
}

// checkMessage validates a message and returns its data compacted.
func (p *PubSub) checkMessage(channel string, data []byte) ([]byte, error) {
	tn, _, ok := splitChannel(channel)
	if !ok {
		return nil, ErrBadChannel
	}
	if p.tenant(tn) == nil {
		return nil, ErrUnknownTenant
	}
	var buf bytes.Buffer
	buf.Grow(len(data))
	if err := json.Compact(&buf, data); err != nil || buf.Len() == 0 {
		return nil, ErrBadData
	}
	if buf.Len() > p.o().MaxMessageBytes {
		return nil, ErrTooLarge
	}
	return buf.Bytes(), nil
}

// appendLocked delivers message seq of stream st here: the channel's
// position moves, the message goes into the history and to every local
// subscriber.
func (p *PubSub) appendLocked(ch *channel, st *stream, seq uint64, otime int64, data []byte, now time.Time) {
	ch.advanceLocked(st, seq, now)
	var m *outMsg
	if len(ch.subs) > 0 {
		m = newMessage(ch.name, ch.vec.position(now), data, now)
	} else {
		m = &outMsg{data: data, at: now} // history only: replays encode their own frames
	}
	m.sid, m.seq, m.otime = st.sid, seq, otime
	st.otime = max(st.otime, otime)
	ch.hist.push(m, p.o().History)
	ch.trimLocked(now, p.o().HistoryTTL)
	ch.touched = now
	p.fanoutLocked(ch, m)
}

// fanoutLocked queues m for every subscriber of ch.
func (p *PubSub) fanoutLocked(ch *channel, m *outMsg) {
	n := len(ch.subs)
	if n == 0 {
		return
	}
	m.fanout = p.met
	m.pending.Store(int32(n) + 1) // +1 until the loop is over
	for _, s := range ch.subs {
		c := s.c
		c.mu.Lock()
		c.enqueueLocked(m, true)
		c.mu.Unlock()
	}
	m.done()
}

// ---- draining and closing ----

// reconnectFrame tells a client to connect again, to another node.
func reconnectFrame(kind connKind) *outMsg {
	return connFrame(kind, serverFrame{Type: typeReconnect, Reason: "node draining"})
}

// Drain tells every client to reconnect elsewhere (a reconnect-elsewhere
// frame, then a websocket close 1012 or the end of the SSE stream), refuses
// new connections, and waits until all are gone or ctx ends; then the rest
// are cut.
func (p *PubSub) Drain(ctx context.Context) error {
	p.connMu.Lock()
	p.draining = true
	p.connMu.Unlock()
	for _, c := range p.snapshotConns() {
		c.mu.Lock()
		c.enqueueLocked(reconnectFrame(c.kind), false)
		c.beginCloseLocked(closeServiceRestart, "node draining, reconnect", "drain")
		c.mu.Unlock()
	}
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for p.connCount() > 0 {
		select {
		case <-ctx.Done():
			for _, c := range p.snapshotConns() {
				c.terminate("drain_timeout")
			}
			return fmt.Errorf("pubsub: drain: %w", ctx.Err())
		case <-t.C:
		}
	}
	return nil
}

// Close stops everything: background work, the mesh handler, every
// connection (cut at once), and waits for all goroutines of the package.
func (p *PubSub) Close() error {
	p.connMu.Lock()
	if p.closed {
		p.connMu.Unlock()
		return nil
	}
	p.closed = true
	p.connMu.Unlock()
	if p.mesh != nil {
		p.mesh.Handle(MeshTopic, nil)
		p.mesh.Handle(MeshControlTopic, nil)
	}
	close(p.stop)
	if p.poller != nil {
		p.poller.wake()
	}
	p.bg.Wait()
	for _, c := range p.snapshotConns() {
		c.terminate("shutdown")
	}
	p.wg.Wait()
	if p.poller != nil {
		p.poller.close()
	}
	return nil
}

// ---- keepalive and housekeeping ----

// sweeper pings connections, ends dead and stuck ones, and forgets idle
// channels. Pings are spread over PingInterval (one bucket of connections
// per tick) so that they never come in one burst.
func (p *PubSub) sweeper() {
	defer p.bg.Done()
	tick := time.Second
	if p.opts.PingInterval < 4*time.Second {
		tick = p.opts.PingInterval / 4
	}
	buckets := uint64(max(1, p.opts.PingInterval/tick))
	deadAfter := p.opts.PingInterval * 5 / 2
	t := time.NewTicker(tick)
	defer t.Stop()
	var n uint64
	var ping, stuck []*conn
	lastChannelSweep := time.Now()
	for {
		select {
		case <-p.stop:
			return
		case now := <-t.C:
			p.clock.Store(now.UnixNano())
			n++
			b := n % buckets
			// A write started before this (coarse clock) is stuck.
			stuckBefore := now.Add(-p.opts.WriteTimeout - tick).UnixNano()
			p.connMu.RLock()
			for id, c := range p.conns {
				if ws := c.writeSince.Load(); ws != 0 && ws < stuckBefore {
					stuck = append(stuck, c)
				} else if id%buckets == b {
					ping = append(ping, c)
				}
			}
			p.connMu.RUnlock()
			for _, c := range stuck {
				c.terminate("slow_consumer")
			}
			for _, c := range ping {
				if c.kind == kindSSE {
					c.enqueue(sseHeartbeat)
					continue
				}
				if now.Sub(time.Unix(0, c.lastRead.Load())) > deadAfter {
					c.terminate("ping_timeout")
					continue
				}
				c.enqueue(wsPing)
			}
			clear(stuck)
			clear(ping)
			stuck, ping = stuck[:0], ping[:0]
			if now.Sub(lastChannelSweep) >= min(10*time.Second, p.o().HistoryTTL/2) {
				lastChannelSweep = now
				p.sweepChannels(now)
			}
		}
	}
}

// sweepChannels forgets channels without subscribers whose history has
// expired (or right away when no history is kept).
func (p *PubSub) sweepChannels(now time.Time) {
	p.chMu.Lock()
	defer p.chMu.Unlock()
	for _, ch := range p.channels {
		ch.mu.Lock()
		ch.trimLocked(now, p.o().HistoryTTL)
		ch.pruneLocked(now, p.o().HistoryTTL)
		if ch.interestLocked() == 0 && (p.o().History == 0 || now.Sub(ch.touched) > p.o().HistoryTTL) {
			p.forgetLocked(ch)
		}
		ch.mu.Unlock()
	}
}
