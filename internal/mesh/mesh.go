package mesh

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"math"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/serf/coordinate"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgenode/edgenode/internal/mesh/pki"
	"github.com/edgenode/edgenode/internal/nodemap"
)

// MetaLeaving is announced by Leave just before the memberlist leave
// message, so other nodes can tell a node that said goodbye (removed from
// the map) from one that died (kept as dead). memberlist itself does not
// tell its event delegate which of the two happened.
const MetaLeaving MetaState = 3

// gossipLabel is memberlist's packet label: gossip from other memberlist
// users on the same port is rejected, and with encryption it is part of
// the authenticated data.
const gossipLabel = "edgenode-mesh-1"

type lifecycle uint8

const (
	lifeNew lifecycle = iota
	lifeRunning
	lifeStopped
)

type memberState uint8

const (
	msAlive memberState = iota + 1
	msSuspect
	msDead
)

// member is what this node knows about another one.
type member struct {
	meta   Meta
	gossip netip.AddrPort
	state  memberState
	since  time.Time
}

// Mesh is one node's membership in the cluster and its links to the peers.
// Create it with New, start it with Start, stop it with Leave (or by
// cancelling Start's context, which stops without saying goodbye).
type Mesh struct {
	o   *resolved
	log *slog.Logger
	met *metrics
	pub *nodemap.Publisher

	keyring *memberlist.Keyring
	links   *links

	mu       sync.Mutex
	life     lifecycle
	draining bool
	leaving  bool
	load     float64 // the gossiped load: in our metadata and our own map entry
	notReady string  // why this node is not ready ("" ready): SetReadiness
	cfgVer   string  // the gossiped config version: SetConfigVersion
	members  map[string]*member
	// coordSent is the coordinate in our metadata and our own map entry:
	// coord's value when it was last gossiped (see loadLoop).
	coordSent *coordinate.Coordinate
	badMeta   map[string]string // last metadata error per member, to log each once

	loadWanted atomic.Uint64 // float64 bits from SetLoad
	loadCh     chan struct{}
	coordCh    chan struct{} // coord moved: maybe gossip it (loadLoop)
	coord      *coordinate.Client
	dirty      chan struct{}
	rejoinNow  chan struct{}

	ml        atomic.Pointer[memberlist.Memberlist]
	shutMu    sync.Mutex // orders memberlist Leave before Shutdown: Leave after Shutdown panics
	shut      bool
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	stopOnce  sync.Once
	stoppedCh chan struct{}
}

// Errors returned by Send and friends.
var (
	ErrUnknownPeer = errors.New("mesh: no such peer")
	ErrQueueFull   = errors.New("mesh: peer queue full; message dropped")
	ErrTooLarge    = errors.New("mesh: message larger than MaxMessageSize")
	ErrSelf        = errors.New("mesh: cannot send to this node itself")
	ErrNotRunning  = errors.New("mesh: not running")
	ErrNoKeyring   = errors.New("mesh: gossip encryption is not enabled")
)

// New checks opts, loads the certificates and prepares a Mesh. It binds no
// socket; Start does. A nil reg means metrics are not registered anywhere.
func New(opts Options, logger *slog.Logger, reg prometheus.Registerer) (*Mesh, error) {
	o, err := opts.resolve()
	if err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("component", "mesh", "node", o.NodeID)
	cert, roots, err := loadLinkCerts(o)
	if err != nil {
		return nil, err
	}
	m := &Mesh{
		o:         o,
		cfgVer:    o.ConfigVersion,
		log:       logger,
		members:   make(map[string]*member),
		badMeta:   make(map[string]string),
		loadCh:    make(chan struct{}, 1),
		coordCh:   make(chan struct{}, 1),
		dirty:     make(chan struct{}, 1),
		rejoinNow: make(chan struct{}, 1),
		stoppedCh: make(chan struct{}),
	}
	if len(o.GossipKeys) > 0 {
		m.keyring, err = memberlist.NewKeyring(o.GossipKeys, o.GossipKeys[0])
		if err != nil {
			return nil, fmt.Errorf("mesh: gossip keyring: %w", err)
		}
	} else {
		logger.Warn("gossip is not encrypted; allowed only because it stays on loopback")
	}
	if leaf, err := x509.ParseCertificate(cert.Certificate[0]); err == nil {
		for _, a := range []netip.Addr{o.PublicIPv4, o.PublicIPv6} {
			if a.IsValid() && !certHasIP(leaf, a) {
				logger.Warn("this node's certificate does not name its public address, so the other nodes leave it "+
					"out of their DNS answers; issue one that does (edgenode ca issue --host)",
					"address", a.String(), "cert", o.CertFile, "cert_ips", fmt.Sprint(leaf.IPAddresses))
			}
		}
	}
	if m.coord, err = coordinate.NewClient(coordConfig()); err != nil {
		return nil, fmt.Errorf("mesh: network coordinate: %w", err)
	}
	m.links = newLinks(m, cert, roots)
	m.met, err = newMetrics(reg, m.links.stats, m.healthScore)
	if err != nil {
		return nil, err
	}
	m.pub = nodemap.NewPublisher(m.buildNodes())
	return m, nil
}

func loadLinkCerts(o *resolved) (tls.Certificate, *x509.CertPool, error) {
	roots, err := pki.LoadCAPool(o.CACertFile)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("mesh: %w", err)
	}
	cert, err := tls.LoadX509KeyPair(o.CertFile, o.KeyFile)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("mesh: node certificate: %w", err)
	}
	chain := make([]*x509.Certificate, 0, len(cert.Certificate))
	for _, der := range cert.Certificate {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return tls.Certificate{}, nil, fmt.Errorf("mesh: node certificate: %w", err)
		}
		chain = append(chain, c)
	}
	id, err := pki.VerifyNode(chain, roots, time.Now())
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("mesh: own certificate %s: %w", o.CertFile, err)
	}
	if id != o.NodeID {
		return tls.Certificate{}, nil, fmt.Errorf("mesh: certificate %s names node %q, but this node is %q", o.CertFile, id, o.NodeID)
	}
	return cert, roots, nil
}

// Start binds the gossip and link sockets, starts every background task and
// begins joining the seeds (in the background: seeds that are not up yet are
// retried every RejoinInterval). Cancelling ctx stops the mesh without a
// leave message, as if the process died; use Leave to go gracefully.
func (m *Mesh) Start(ctx context.Context) error {
	m.mu.Lock()
	if m.life != lifeNew {
		m.mu.Unlock()
		return errors.New("mesh: Start after Start or Leave")
	}
	m.life = lifeRunning
	m.mu.Unlock()

	runCtx, cancel := context.WithCancel(ctx)
	m.cancel = cancel
	if err := m.links.start(runCtx); err != nil {
		cancel()
		m.markStopped()
		return err
	}
	ml, err := memberlist.Create(m.memberlistConfig())
	if err != nil {
		cancel()
		m.links.close(false)
		m.markStopped()
		return fmt.Errorf("mesh: start gossip on %s: %w", m.o.BindAddr, err)
	}
	m.ml.Store(ml)
	m.log.Info("mesh started", "gossip", m.o.advertise.String(), "link", m.o.linkAdvertise.String(),
		"profile", cmpOr(m.o.Profile, "wan"), "encrypted", m.keyring != nil,
		"detection_bound", m.o.tuning.DetectionBound(3).String())

	m.wg.Add(4)
	go func() { defer m.wg.Done(); m.publishLoop(runCtx) }()
	go func() { defer m.wg.Done(); m.maintainLoop(runCtx) }()
	go func() { defer m.wg.Done(); m.loadLoop(runCtx) }()
	go func() {
		defer m.wg.Done()
		select {
		case <-runCtx.Done():
			m.teardown(false)
		case <-m.stoppedCh:
		}
	}()
	m.signal(m.dirty)
	return nil
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func (m *Mesh) memberlistConfig() *memberlist.Config {
	t := m.o.tuning
	c := memberlist.DefaultLANConfig()
	c.Name = m.o.NodeID
	c.BindAddr = m.o.bind.Addr().String()
	c.BindPort = int(m.o.bind.Port())
	c.AdvertiseAddr = m.o.advertise.Addr().String()
	c.AdvertisePort = int(m.o.advertise.Port())
	c.Label = gossipLabel
	c.ProbeInterval = t.ProbeInterval
	c.ProbeTimeout = t.ProbeTimeout
	c.IndirectChecks = t.IndirectChecks
	c.SuspicionMult = t.SuspicionMult
	c.SuspicionMaxTimeoutMult = t.SuspicionMaxTimeoutMult
	c.RetransmitMult = t.RetransmitMult
	c.GossipInterval = t.GossipInterval
	c.GossipNodes = t.GossipNodes
	c.GossipToTheDeadTime = t.GossipToTheDeadTime
	c.PushPullInterval = t.PushPullInterval
	c.TCPTimeout = t.TCPTimeout
	c.AwarenessMaxMultiplier = t.AwarenessMaxMultiplier
	// A replaced machine may come back under its old name at a new address.
	c.DeadNodeReclaimTime = t.GossipToTheDeadTime
	if m.keyring != nil {
		c.Keyring = m.keyring
		c.GossipVerifyIncoming = true
		c.GossipVerifyOutgoing = true
	}
	d := &delegate{m: m}
	c.Delegate = d
	c.Events = d
	c.Ping = d
	c.Conflict = d
	c.Logger = log.New(&memberlistLog{m: m}, "", 0)
	return c
}

// Current implements nodemap.Source.
func (m *Mesh) Current() (*nodemap.Map, <-chan struct{}) { return m.pub.Current() }

// SetLoad sets this node's load figure. It is gossiped at most once per
// LoadUpdateInterval (and only when it changed), so calling it often is
// cheap; the node's own map entry follows the gossiped value.
func (m *Mesh) SetLoad(v float64) {
	if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 {
		v = 0
	}
	m.loadWanted.Store(math.Float64bits(v))
	m.signal(m.loadCh)
}

// Drain announces that this node is draining: every node's map shows it as
// Draining, so DNS stops handing it out. It returns once the new state has
// been gossiped to at least one member, or with an error when that took
// longer than ctx or DrainTimeout allow. Drain before Start makes the node
// join as draining.
func (m *Mesh) Drain(ctx context.Context) error {
	m.mu.Lock()
	m.draining = true
	m.mu.Unlock()
	m.signal(m.dirty)
	ml := m.running()
	if ml == nil {
		return nil
	}
	if err := ml.UpdateNode(boundedTimeout(ctx, m.o.DrainTimeout)); err != nil {
		return fmt.Errorf("mesh: drain: %w", err)
	}
	m.log.Info("draining announced")
	return nil
}

// SetReadiness sets what this node says of its readiness (see
// nodemap.Node.Ready): "" is ready, anything else says why not (shortened
// to fit the metadata). A change shows in this node's map at once and is
// announced at once, like Drain, so every node's DNS follows within the
// gossip's spread: it returns once the new metadata has gone to at least
// one member, or with an error after ctx or DrainTimeout. Before Start it
// sets what the node joins with.
func (m *Mesh) SetReadiness(ctx context.Context, notReady string) error {
	return m.setMeta(ctx, "readiness", &m.notReady, notReady)
}

// setMeta sets one string of this node's metadata (under m.mu) and, when
// it changed, announces it as SetReadiness describes.
func (m *Mesh) setMeta(ctx context.Context, what string, field *string, v string) error {
	v = clipUTF8(v, maxMetaString)
	m.mu.Lock()
	changed := *field != v
	*field = v
	m.mu.Unlock()
	if !changed {
		return nil
	}
	m.signal(m.dirty)
	ml := m.running()
	if ml == nil {
		return nil
	}
	if err := ml.UpdateNode(boundedTimeout(ctx, m.o.DrainTimeout)); err != nil {
		return fmt.Errorf("mesh: announce %s: %w", what, err)
	}
	return nil
}

// SetConfigVersion sets the config version this node gossips (a reload
// changed the config), so every node map shows which config each node
// runs. Like SetReadiness it shows in this node's map at once and returns
// once the metadata has gone to at least one member, or with an error
// after ctx or DrainTimeout.
func (m *Mesh) SetConfigVersion(ctx context.Context, v string) error {
	return m.setMeta(ctx, "config version", &m.cfgVer, v)
}

// Leave leaves the cluster gracefully: it announces the leave (other nodes
// drop this node from their maps instead of marking it dead), closes the
// peer links with a goodbye and stops every goroutine. It is bounded by ctx
// and LeaveTimeout and safe to call more than once.
func (m *Mesh) Leave(ctx context.Context) error {
	m.mu.Lock()
	switch m.life {
	case lifeNew:
		m.life = lifeStopped
		m.mu.Unlock()
		return nil
	case lifeStopped:
		m.mu.Unlock()
		m.wg.Wait()
		return nil
	}
	m.leaving = true
	m.mu.Unlock()

	var errs []error
	m.shutMu.Lock()
	if ml := m.ml.Load(); ml != nil && !m.shut && ml.NumMembers() > 1 {
		// Say "leaving" first so the others record a departure, not a death.
		if err := ml.UpdateNode(boundedTimeout(ctx, m.o.LeaveTimeout/2)); err != nil {
			errs = append(errs, fmt.Errorf("announce leaving: %w", err))
		}
		if err := ml.Leave(boundedTimeout(ctx, m.o.LeaveTimeout)); err != nil {
			errs = append(errs, fmt.Errorf("leave: %w", err))
		}
	}
	m.shutMu.Unlock()
	m.teardown(true)
	m.wg.Wait()
	m.log.Info("left the cluster")
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("mesh: %w", err)
	}
	return nil
}

// kill stops the mesh the way a crash would: sockets go away without a
// leave message or a QUIC goodbye. Tests use it to simulate kill -9.
func (m *Mesh) kill() {
	m.mu.Lock()
	if m.life != lifeRunning {
		m.mu.Unlock()
		return
	}
	m.mu.Unlock()
	m.links.abort()
	m.teardown(false)
	m.wg.Wait()
}

// teardown stops everything once. graceful closes links with a goodbye.
func (m *Mesh) teardown(graceful bool) {
	m.stopOnce.Do(func() {
		m.markStopped()
		if m.cancel != nil {
			m.cancel()
		}
		m.links.close(graceful)
		m.shutMu.Lock()
		defer m.shutMu.Unlock()
		m.shut = true
		if ml := m.ml.Load(); ml != nil {
			if err := ml.Shutdown(); err != nil {
				m.log.Warn("gossip shutdown", "err", err)
			}
		}
	})
}

func (m *Mesh) markStopped() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.life != lifeStopped {
		m.life = lifeStopped
		close(m.stoppedCh)
	}
}

// running returns the memberlist while the mesh runs.
func (m *Mesh) running() *memberlist.Memberlist {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.life != lifeRunning {
		return nil
	}
	return m.ml.Load()
}

func boundedTimeout(ctx context.Context, max time.Duration) time.Duration {
	if dl, ok := ctx.Deadline(); ok {
		if d := time.Until(dl); d < max {
			if d <= 0 {
				return time.Millisecond
			}
			return d
		}
	}
	return max
}

func (m *Mesh) signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

func (m *Mesh) healthScore() float64 {
	if ml := m.ml.Load(); ml != nil {
		return float64(ml.GetHealthScore())
	}
	return 0
}

// Send queues msg on topic for one peer and returns at once. It never
// blocks: when the peer's queue is full the message is dropped, counted and
// ErrQueueFull returned. The mesh owns msg after the call. Delivery is at
// most once: messages in flight when a link breaks are lost (and counted).
func (m *Mesh) Send(node, topic string, msg []byte) error { return m.links.send(node, topic, msg) }

// Broadcast queues msg for every current peer (not this node), with Send's
// rules for each.
func (m *Mesh) Broadcast(topic string, msg []byte) { m.links.broadcast(topic, msg) }

// Handle registers h for topic, replacing any earlier handler; nil removes
// it. Messages on topics without a handler are dropped and counted. Register
// before Start so no early message is missed.
func (m *Mesh) Handle(topic string, h func(from string, msg []byte)) { m.links.handle(topic, h) }

// Gossip keyring rotation. Keys are local to this node: rotate a cluster by
// adding the new key on every node, then making it primary on every node,
// then removing the old one everywhere. Each step must reach all nodes
// before the next starts, or nodes stop understanding each other.

// AddGossipKey installs an extra key that is tried when decrypting.
func (m *Mesh) AddGossipKey(key []byte) error {
	if m.keyring == nil {
		return ErrNoKeyring
	}
	if err := m.keyring.AddKey(key); err != nil {
		return fmt.Errorf("mesh: add gossip key: %w", err)
	}
	return nil
}

// UseGossipKey makes an installed key the primary (encrypting) key.
func (m *Mesh) UseGossipKey(key []byte) error {
	if m.keyring == nil {
		return ErrNoKeyring
	}
	if err := m.keyring.UseKey(key); err != nil {
		return fmt.Errorf("mesh: use gossip key: %w", err)
	}
	return nil
}

// RemoveGossipKey removes a key that is not primary.
func (m *Mesh) RemoveGossipKey(key []byte) error {
	if m.keyring == nil {
		return ErrNoKeyring
	}
	if err := m.keyring.RemoveKey(key); err != nil {
		return fmt.Errorf("mesh: remove gossip key: %w", err)
	}
	return nil
}

// GossipKeys returns the installed keys, primary first.
func (m *Mesh) GossipKeys() [][]byte {
	if m.keyring == nil {
		return nil
	}
	return m.keyring.GetKeys()
}

// SetGossipKeys makes the keyring hold exactly keys, keys[0] primary: it
// adds the keys it lacks, makes keys[0] primary, then removes the others,
// in that order so that at no step is a key in use missing (a reload does
// one step of the cluster-wide rotation described above). It does not turn
// encryption on or off: that needs a restart (ErrNoKeyring when off).
func (m *Mesh) SetGossipKeys(keys [][]byte) error {
	if m.keyring == nil {
		return ErrNoKeyring
	}
	if len(keys) == 0 {
		return errors.New("mesh: set gossip keys: encryption cannot be turned off without a restart")
	}
	for _, k := range keys {
		if err := m.AddGossipKey(k); err != nil {
			return err
		}
	}
	if err := m.UseGossipKey(keys[0]); err != nil {
		return err
	}
	for _, have := range m.keyring.GetKeys() {
		if !slices.ContainsFunc(keys, func(k []byte) bool { return bytes.Equal(k, have) }) {
			if err := m.RemoveGossipKey(have); err != nil {
				return err
			}
		}
	}
	return nil
}

// ---- membership view ----

// selfMeta is the metadata this node gossips now.
func (m *Mesh) selfMeta() Meta {
	m.mu.Lock()
	defer m.mu.Unlock()
	md := m.o.meta(m.load, m.draining)
	if m.leaving {
		md.State = MetaLeaving
	}
	md.NotReady = m.notReady
	md.Coord = m.coordSent
	md.ConfigVersion = m.cfgVer
	return md
}

// memberFromNode records a join or update of another node.
func (m *Mesh) memberFromNode(n *memberlist.Node) {
	if n.Name == m.o.NodeID {
		return
	}
	md, err := decodeMeta(n.Meta)
	if err == nil && md.ID != n.Name {
		err = fmt.Errorf("metadata names node %q", md.ID)
	}
	addr, _ := netip.AddrFromSlice(n.Addr)
	gossip := netip.AddrPortFrom(addr.Unmap(), n.Port)
	m.mu.Lock()
	defer m.mu.Unlock()
	if err != nil {
		if m.badMeta[n.Name] != err.Error() {
			m.badMeta[n.Name] = err.Error()
			m.log.Warn("ignoring member with unusable metadata", "member", n.Name, "addr", gossip.String(), "err", err)
		}
		if _, ok := m.members[n.Name]; ok {
			delete(m.members, n.Name)
			m.signal(m.dirty)
		}
		return
	}
	delete(m.badMeta, n.Name)
	mem := m.members[n.Name]
	if mem == nil {
		mem = &member{}
		m.members[n.Name] = mem
		m.log.Info("member joined", "member", n.Name, "addr", gossip.String(), "region", md.Region)
	} else if mem.state == msDead {
		m.log.Info("member rejoined", "member", n.Name, "addr", gossip.String())
	}
	if mem.state != msAlive {
		mem.state = msAlive
		mem.since = time.Now()
	}
	mem.meta = md
	mem.gossip = gossip
	m.signal(m.dirty)
}

func (m *Mesh) memberLeft(n *memberlist.Node) {
	m.mu.Lock()
	defer m.mu.Unlock()
	mem := m.members[n.Name]
	if mem == nil || mem.state == msDead {
		return
	}
	if mem.meta.State == MetaLeaving {
		delete(m.members, n.Name)
		m.met.probeRTT.DeleteLabelValues(n.Name)
		m.coord.ForgetNode(n.Name)
		m.log.Info("member left", "member", n.Name)
	} else {
		mem.state = msDead
		mem.since = time.Now()
		m.log.Warn("member dead", "member", n.Name, "addr", mem.gossip.String())
	}
	m.signal(m.dirty)
}

// markSuspect records that this node's own probe of name failed.
func (m *Mesh) markSuspect(name string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if mem := m.members[name]; mem != nil && mem.state == msAlive {
		mem.state = msSuspect
		mem.since = time.Now()
		m.log.Info("member suspect", "member", name)
		m.signal(m.dirty)
	}
}

// probeOK records a direct probe answered by name.
func (m *Mesh) probeOK(name string, rtt time.Duration) {
	m.met.probeRTT.WithLabelValues(name).Set(rtt.Seconds())
	m.met.probeRTTHist.Observe(rtt.Seconds())
	m.mu.Lock()
	defer m.mu.Unlock()
	if mem := m.members[name]; mem != nil && mem.state == msSuspect {
		mem.state = msAlive
		mem.since = time.Now()
		m.log.Info("member no longer suspect", "member", name)
		m.signal(m.dirty)
	}
}

// memberLink returns the link address and boot id of a live member, for
// checking inbound links.
func (m *Mesh) memberLink(id string) (linkTarget, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	mem := m.members[id]
	if mem == nil || mem.state == msDead {
		return linkTarget{}, false
	}
	return linkTarget{addr: mem.meta.Link, boot: mem.meta.Boot, proto: mem.meta.Protocol}, true
}

// memberAt returns the id of the live member that advertises link address
// a ("" if none), to name the peer of a handshake refused before its
// certificate was seen.
func (m *Mesh) memberAt(a netip.AddrPort) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	for id, mem := range m.members {
		if mem.state != msDead && mem.meta.Link == a {
			return id
		}
	}
	return ""
}

// PeerProtocol returns the mesh protocol version of the link up with node
// id (see Protocol); false when no link is up. A part whose messages differ
// between versions encodes them for this version.
func (m *Mesh) PeerProtocol(id string) (int, bool) {
	p := (*m.links.snap.Load())[id]
	if p == nil {
		return 0, false
	}
	pr := p.proof.Load()
	if pr == nil {
		return 0, false
	}
	return pr.proto, true
}

// buildNodes makes the node list of a map from the current view.
func (m *Mesh) buildNodes() []nodemap.Node {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.buildNodesLocked()
}

func (m *Mesh) buildNodesLocked() []nodemap.Node {
	o := m.o
	self := nodemap.Node{
		ID: o.NodeID, Region: o.Region, Lat: o.Lat, Lon: o.Lon,
		IPv4: o.PublicIPv4, IPv6: o.PublicIPv6, Tags: o.Tags,
		State: nodemap.Alive, Load: m.load, Self: true,
		BinaryVersion: o.BinaryVersion, ConfigVersion: m.cfgVer,
		Verified: true, // this node knows its own addresses
		Coord:    m.coordSent,
	}
	if m.draining || m.leaving {
		self.State = nodemap.Draining
	}
	self.Ready, self.NotReady = readiness(self.State == nodemap.Draining, m.notReady)
	nodes := make([]nodemap.Node, 0, len(m.members)+1)
	nodes = append(nodes, self)
	for id, mem := range m.members {
		md := mem.meta
		n := nodemap.Node{
			ID: id, Region: md.Region, Lat: md.Lat, Lon: md.Lon,
			IPv4: md.IPv4, IPv6: md.IPv6, Tags: md.Tags, Load: md.Load,
			BinaryVersion: md.BinaryVersion, ConfigVersion: md.ConfigVersion,
			Coord: md.Coord,
		}
		// Anyone with the gossip key can write metadata; only the peer
		// link's certificate vouches for the addresses in it.
		n.Verified, n.Unverified = m.links.vouch(id, &md)
		n.Ready, n.NotReady = readiness(md.State != MetaAlive, md.NotReady)
		switch {
		case mem.state == msDead:
			n.State = nodemap.Dead
		case mem.state == msSuspect:
			n.State = nodemap.Suspect
		case md.State == MetaAlive:
			n.State = nodemap.Alive
		default:
			n.State = nodemap.Draining
		}
		nodes = append(nodes, n)
	}
	return nodes
}

// publishLoop rebuilds the map after every change, publishes it when it
// differs from the current one, and brings the peer links in line.
func (m *Mesh) publishLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-m.dirty:
		}
		m.mu.Lock()
		nodes := m.buildNodesLocked()
		want := make(map[string]linkTarget, len(m.members))
		for id, mem := range m.members {
			if mem.state != msDead {
				want[id] = linkTarget{addr: mem.meta.Link, boot: mem.meta.Boot, proto: mem.meta.Protocol}
			}
		}
		m.mu.Unlock()

		cur, _ := m.pub.Current()
		slices.SortFunc(nodes, func(a, b nodemap.Node) int { return strings.Compare(a.ID, b.ID) })
		if !sameNodes(cur.Nodes, nodes) {
			mp := m.pub.Publish(nodes)
			m.met.mapChanges.Inc()
			counts := map[nodemap.State]int{}
			for _, n := range mp.Nodes {
				counts[n.State]++
			}
			for _, st := range []nodemap.State{nodemap.Alive, nodemap.Draining, nodemap.Suspect, nodemap.Dead} {
				m.met.members.WithLabelValues(st.String()).Set(float64(counts[st]))
			}
		}
		m.links.sync(want)
	}
}

// readiness is a map entry's Ready and NotReady: what the node says, and
// never ready while it drains or leaves.
func readiness(draining bool, notReady string) (bool, string) {
	switch {
	case draining:
		return false, "draining"
	case notReady != "":
		return false, notReady
	}
	return true, ""
}

func sameNodes(a, b []nodemap.Node) bool {
	return slices.EqualFunc(a, b, func(x, y nodemap.Node) bool {
		return x.ID == y.ID && x.Region == y.Region && x.Lat == y.Lat && x.Lon == y.Lon &&
			x.IPv4 == y.IPv4 && x.IPv6 == y.IPv6 && slices.Equal(x.Tags, y.Tags) &&
			x.State == y.State && x.Load == y.Load && x.Self == y.Self &&
			x.BinaryVersion == y.BinaryVersion && x.ConfigVersion == y.ConfigVersion &&
			x.Verified == y.Verified && x.Unverified == y.Unverified &&
			x.Ready == y.Ready && x.NotReady == y.NotReady && sameCoord(x.Coord, y.Coord)
	})
}

// maintainLoop joins the seeds until this node has company, retries dead
// members so healed partitions merge again, keeps the view in line with
// memberlist and forgets members dead for longer than DeadRetention.
func (m *Mesh) maintainLoop(ctx context.Context) {
	interval := m.o.tuning.RejoinInterval
	timer := time.NewTimer(0) // first join at once
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-m.rejoinNow:
		}
		ml := m.running()
		if ml == nil {
			return
		}
		quick := m.maintain(ctx, ml)
		next := interval/2 + rand.N(interval) // jitter, so nodes don't sync up
		if quick {
			// A dead member answered: both sides have just refuted each
			// other's verdict; one more exchange carries the refutations.
			next = m.o.tuning.GossipInterval * 2
		}
		timer.Reset(next)
	}
}

func (m *Mesh) maintain(ctx context.Context, ml *memberlist.Memberlist) (quick bool) {
	self := m.o.advertise.String()
	snap := time.Now()
	live := map[string]bool{}
	for _, n := range ml.Members() {
		live[n.Name] = true
	}

	var dead []string
	now := time.Now()
	m.mu.Lock()
	alone := true
	for id, mem := range m.members {
		switch {
		case mem.state != msDead && !live[id] && mem.since.Before(snap):
			// memberlist no longer lists it; the event was missed or
			// raced with a rejoin. Trust memberlist.
			mem.state = msDead
			mem.since = now
			m.signal(m.dirty)
		case mem.state == msDead && now.Sub(mem.since) > m.o.DeadRetention:
			delete(m.members, id)
			m.met.probeRTT.DeleteLabelValues(id)
			m.coord.ForgetNode(id)
			m.signal(m.dirty)
		case mem.state == msDead:
			dead = append(dead, mem.gossip.String())
		default:
			alone = false
		}
	}
	m.mu.Unlock()

	var targets []string
	if alone {
		for _, s := range m.o.Seeds {
			if s != self && s != m.o.BindAddr {
				targets = append(targets, s)
			}
		}
	}
	// A few dead members per round: a join to a machine that is really gone
	// may wait a whole TCP timeout.
	rand.Shuffle(len(dead), func(i, j int) { dead[i], dead[j] = dead[j], dead[i] })
	if len(dead) > 3 {
		dead = dead[:3]
	}
	if ctx.Err() != nil {
		return false
	}
	if len(targets) > 0 {
		n, err := ml.Join(targets)
		if n > 0 {
			m.met.joinAttempts.WithLabelValues("ok").Inc()
			m.log.Info("joined the cluster", "seeds", targets, "contacted", n)
		} else if err != nil {
			m.met.joinAttempts.WithLabelValues("failed").Inc()
			m.log.Info("joining seeds failed; will retry", "seeds", targets, "err", err)
		}
	}
	// Dead members one by one, to know which one answered.
	for _, addr := range dead {
		if ctx.Err() != nil {
			return false
		}
		if n, err := ml.Join([]string{addr}); n > 0 {
			m.met.joinAttempts.WithLabelValues("ok").Inc()
			m.log.Info("reached a dead member again", "addr", addr)
			quick = true
		} else {
			m.met.joinAttempts.WithLabelValues("failed").Inc()
			m.log.Debug("dead member still unreachable", "addr", addr, "err", err)
		}
	}
	return quick
}

// loadLoop gossips load changes and coordinate moves, at most once per
// LoadUpdateInterval: both change the metadata, and every change of it is
// a broadcast to the whole cluster.
func (m *Mesh) loadLoop(ctx context.Context) {
	var last time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-m.loadCh:
		case <-m.coordCh:
		}
		if wait := m.o.LoadUpdateInterval - time.Since(last); wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
		}
		v := math.Float64frombits(m.loadWanted.Load())
		cur := m.coord.GetCoordinate()
		m.mu.Lock()
		changed := v != m.load
		m.load = v
		if coordMoved(m.coordSent, cur) {
			m.coordSent = cur
			changed = true
		}
		m.mu.Unlock()
		if !changed {
			continue
		}
		last = time.Now()
		m.signal(m.dirty)
		if ml := m.running(); ml != nil {
			if err := ml.UpdateNode(m.o.LoadUpdateInterval); err != nil {
				m.log.Debug("metadata update not confirmed", "err", err)
			}
		}
	}
}

// ---- memberlist delegates ----

type delegate struct{ m *Mesh }

func (d *delegate) NodeMeta(limit int) []byte {
	b, err := encodeMetaFit(d.m.selfMeta(), limit)
	if err != nil || len(b) > limit {
		// resolve() checked the size; this cannot happen with valid options.
		d.m.log.Error("cannot encode node metadata", "err", err, "limit", limit)
		return nil
	}
	return b
}
func (d *delegate) NotifyMsg([]byte)                           {}
func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (d *delegate) LocalState(join bool) []byte                { return nil }
func (d *delegate) MergeRemoteState(buf []byte, join bool)     {}

// Event delegate. memberlist calls these with its node lock held: they
// only update the view and signal, never call back into memberlist.
func (d *delegate) NotifyJoin(n *memberlist.Node)   { d.m.memberFromNode(n) }
func (d *delegate) NotifyUpdate(n *memberlist.Node) { d.m.memberFromNode(n) }
func (d *delegate) NotifyLeave(n *memberlist.Node) {
	if n.Name != d.m.o.NodeID {
		d.m.memberLeft(n)
	}
}

// Ping delegate: probe round trips for the metrics, proof of life and
// the network coordinates (as Serf does: our coordinate rides on our acks).
func (d *delegate) AckPayload() []byte { return encodeCoord(d.m.coord.GetCoordinate()) }
func (d *delegate) NotifyPingComplete(other *memberlist.Node, rtt time.Duration, payload []byte) {
	d.m.probeOK(other.Name, rtt)
	d.m.coordPing(other.Name, rtt, payload)
}

// Conflict delegate: two nodes claim one name, which breaks everything.
func (d *delegate) NotifyConflict(existing, other *memberlist.Node) {
	d.m.log.Error("two nodes use the same node id", "id", existing.Name,
		"existing", existing.Address(), "other", other.Address())
}

// memberlistLog routes memberlist's log lines to slog, and spots the one
// line that tells us our own probe of a member failed: memberlist has no
// other way to report "suspect" to its user.
type memberlistLog struct{ m *Mesh }

const suspectPrefix, suspectSuffix = "memberlist: Suspect ", " has failed, no acks received"

func (w *memberlistLog) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	level := slog.LevelInfo
	for _, l := range []struct {
		tag   string
		level slog.Level
	}{{"[DEBUG] ", slog.LevelDebug}, {"[INFO] ", slog.LevelInfo}, {"[WARN] ", slog.LevelWarn}, {"[ERR] ", slog.LevelError}} {
		if rest, ok := strings.CutPrefix(line, l.tag); ok {
			level, line = l.level, rest
			break
		}
	}
	if rest, ok := strings.CutPrefix(line, suspectPrefix); ok {
		if name, ok := strings.CutSuffix(rest, suspectSuffix); ok {
			w.m.markSuspect(name)
		}
	}
	w.m.log.Log(context.Background(), level, line, "from", "memberlist")
	return len(p), nil
}
