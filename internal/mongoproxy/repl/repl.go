package repl

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/serf/coordinate"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
	"github.com/edgenode/edgenode/internal/nodemap"
	"github.com/edgenode/edgenode/internal/replica"
)

// Topics on the mesh.
const (
	Topic     = "repl"
	SyncTopic = "repl-sync"
)

// CronLeaderTag is the default node map tag of the node claiming
// cron_leader (the node adds it to its mesh tags).
const CronLeaderTag = "cron-leader"

// Transport is what replication needs from the mesh: at-most-once,
// per-pair ordered messages on named topics, and the node map. The node
// adapts *mesh.Mesh to it (mapping the mesh's errors to the ones below).
type Transport interface {
	// Send queues msg for node on topic. It does not wait for delivery:
	// a message may still be lost (replication resends from positions).
	// An error wrapping ErrQueueFull means the peer's queue is full right
	// now (retry soon); one wrapping ErrTooLarge means msg can never be
	// sent; any other, that the peer is not reachable now.
	Send(node, topic string, msg []byte) error
	// Broadcast sends msg to every peer, best effort.
	Broadcast(topic string, msg []byte)
	// Handle registers h for topic (nil: unregisters). h runs on the
	// transport's goroutine for the sender: it must not block.
	Handle(topic string, h func(from string, msg []byte))
	// Current returns the node map and a channel closed when it changes.
	Current() (*nodemap.Map, <-chan struct{})
}

// Errors a Transport's Send reports (wrapped or as is).
var (
	ErrQueueFull = errors.New("repl: the peer's queue is full")
	ErrTooLarge  = errors.New("repl: message larger than the transport carries")
)

// Options configures a Replicator. Zero values take the defaults named.
type Options struct {
	// NodeID is this node's id in the mesh (required with a Transport).
	NodeID string
	// Transport is the mesh; nil runs standalone: no peers, the node is a
	// complete replica at once, and only the compaction frontier is kept.
	Transport Transport
	// MaxLag bounds how far behind a live peer's ops this node may fall
	// before Ready reports it not ready (default 30s; negative: never).
	MaxLag time.Duration
	// ForgetPeerAfter is how long a node may be absent from the node map
	// before its acknowledgements stop holding back the trimming of the op
	// log and its clock stops holding back compaction (default 24h). A node
	// that comes back later resyncs.
	ForgetPeerAfter time.Duration
	// LogRetention keeps this node's own ops in its log at least this long
	// even when every peer has them (default 10m), so a node doing an
	// initial sync from another peer can still stream them.
	LogRetention time.Duration
	// HeartbeatInterval is how often the node announces its clock and
	// positions (default 200ms).
	HeartbeatInterval time.Duration
	// BatchOps and BatchBytes bound one ops message (defaults 512 ops,
	// 1 MiB); WindowOps bounds the ops sent to a peer and not yet
	// acknowledged (default 8192), catchUpWindows times that while the
	// peer is more than a window behind.
	BatchOps   int
	BatchBytes int
	WindowOps  int
	// ResendAfter is how long a sender waits for an acknowledgement before
	// sending again from the peer's last acknowledged position (default 2s).
	ResendAfter time.Duration
	// StableMargin keeps the compaction frontier this far behind the wall
	// clock (default 1s), so a node whose clock lags by less than that can
	// never write below a frontier it has not heard of.
	StableMargin time.Duration
	// BootstrapWait is how long a node that needs an initial sync waits for
	// a synced peer before deciding it starts the cluster (default 3s).
	BootstrapWait time.Duration
	// RequirePeer keeps a node whose op log is empty (new, or its data
	// folder wiped) from starting the cluster's data alone before it has
	// heard any peer: it waits, writes refused, for a peer to sync from,
	// instead of taking writes on what may be nothing while the cluster it
	// belongs to is unreachable. Once a peer has been heard, the rule of
	// BootstrapWait applies with twice the wait, counted from then (so a
	// first node started with bootstrap at the same time gets synced
	// first; nodes started together without it bootstrap together). Set
	// it when the mesh has seeds and the node is not told it is the first
	// of a new cluster; Seeds names them in the reason given.
	RequirePeer bool
	Seeds       []string
	// SyncTimeout aborts an initial sync that makes no progress for this
	// long (default 30s); another attempt follows.
	SyncTimeout time.Duration
	// CronLeaderTag is the node map tag of the node claiming cron_leader
	// (default "cron-leader").
	CronLeaderTag string
	// TrimInterval is how often the op log is trimmed (default 5s).
	TrimInterval time.Duration
	// TrimFloor, when set, holds back trimming further: each origin's ops
	// above TrimFloor()[origin] stay in the log (the op-log archive's
	// position: an op leaves the log only once it is archived).
	TrimFloor func() map[string]uint64
}

func (o *Options) defaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&o.MaxLag, 30*time.Second)
	def(&o.ForgetPeerAfter, 24*time.Hour)
	def(&o.LogRetention, 10*time.Minute)
	def(&o.HeartbeatInterval, 200*time.Millisecond)
	def(&o.ResendAfter, 2*time.Second)
	def(&o.StableMargin, time.Second)
	def(&o.BootstrapWait, 3*time.Second)
	def(&o.SyncTimeout, 30*time.Second)
	def(&o.TrimInterval, 5*time.Second)
	if o.BatchOps <= 0 {
		o.BatchOps = 512
	}
	if o.BatchBytes <= 0 {
		o.BatchBytes = 1 << 20
	}
	if o.WindowOps <= 0 {
		o.WindowOps = 8192
	}
	if o.CronLeaderTag == "" {
		o.CronLeaderTag = CronLeaderTag
	}
}

// Replica states (see the package documentation).
const (
	stateChecking int32 = iota // at start: is the database a synced replica?
	stateWaiting               // needs an initial sync: looking for a source
	stateSyncing               // copying a peer's snapshot
	stateSynced                // a complete replica, streaming
)

var stateNames = []string{"checking", "waiting_for_source", "initial_sync", "synced"}

// Replicator streams this node's ops to its peers, applies theirs, keeps
// the compaction frontier and runs initial syncs. See the package doc.
type Replicator struct {
	opts   Options
	log    *slog.Logger
	core   replica.Replication
	origin string
	met    *metrics

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	state     atomic.Int32
	needPeer  bool          // RequirePeer applies: the op log was empty at Start
	badLogged atomic.Int64  // unix nanos of the last malformed-message log line
	syncWake  chan struct{} // wakes the sync loop (resync needed, map changed)
	resync    atomic.Pointer[string]
	maxStable atomic.Pointer[crdt.Timestamp] // the largest frontier handed to the core
	stable    atomic.Pointer[crdt.Timestamp]
	started   time.Time
	// applyGate: receivers hold it shared while applying; a sync takes it
	// exclusively so that nothing is applied while the database is reset.
	applyGate sync.RWMutex

	mu        sync.Mutex
	stopping  bool                  // Stop was called: start no goroutine
	nodes     map[string]*nodeState // by node id, peers only
	self      *hbQueue
	senders   map[string]*sender   // this node's ops, by peer
	relays    map[relayKey]*sender // other origins' ops to peers that cannot hear them (relay.go)
	receivers map[string]*receiver // by origin
	routes    map[string]route     // by origin: who delivered its ops last
	leaders   []string
	sessions  map[uint64]*syncServer // sync sessions this node serves
	client    *syncClient            // the sync this node runs, if any
	samples   []posSample            // positions over time, for LogRetention
	skewLog   map[string]time.Time   // by peer: when a refused clock reading was last logged
	coord     *coordinate.Coordinate // this node's network coordinate, from the node map
}

// nodeState is what this node knows of a peer.
type nodeState struct {
	id        string
	origin    string // its current origin (incarnation); "" until heard
	heard     time.Time
	last      uint64 // its origin's last seq, as announced
	first     uint64
	flags     byte
	applied   map[string]uint64
	hbs       hbQueue
	behind    time.Time // since when we know it has ops we have not applied (zero: caught up)
	inMap     bool
	mapState  nodemap.State
	goneSince time.Time // absent from the node map since (zero: present)
	seenAt    time.Time // first seen in the map
	frozen    crdt.Timestamp
	links     map[string]bool // the peers it hears directly, from its links message
	linksAt   time.Time
	coord     *coordinate.Coordinate // its network coordinate, from the node map (nil: unknown)
}

// New builds a Replicator for an open replica core (the proxy's, once
// started). Nothing runs until Start.
func New(opts Options, core replica.Replication, log *slog.Logger, reg prometheus.Registerer) (*Replicator, error) {
	opts.defaults()
	if log == nil {
		log = slog.Default()
	}
	if core == nil {
		return nil, errors.New("repl: no replica core (start the proxy first)")
	}
	if opts.Transport != nil && opts.NodeID == "" {
		return nil, errors.New("repl: NodeID is required with a Transport")
	}
	if opts.Transport != nil && NodeOf(core.Origin()) != opts.NodeID {
		return nil, fmt.Errorf("repl: the replica's origin %q is not an incarnation of node %q", core.Origin(), opts.NodeID)
	}
	r := &Replicator{
		opts: opts, log: log.With("component", "repl"), core: core, origin: core.Origin(),
		syncWake: make(chan struct{}, 1), nodes: map[string]*nodeState{}, self: &hbQueue{},
		senders: map[string]*sender{}, relays: map[relayKey]*sender{}, routes: map[string]route{}, receivers: map[string]*receiver{}, sessions: map[uint64]*syncServer{},
		skewLog: map[string]time.Time{},
	}
	zero := crdt.Timestamp{}
	r.stable.Store(&zero)
	r.maxStable.Store(&zero)
	met, err := newMetrics(reg, r)
	if err != nil {
		return nil, err
	}
	r.met = met
	return r, nil
}

// NodeOf returns the node id of an origin ("node1~lx3k" -> "node1").
func NodeOf(origin string) string {
	n, _, _ := strings.Cut(origin, "~")
	return n
}

// Start begins replication: it registers the mesh handlers and starts the
// heartbeat (which gives the core its compaction frontier), membership and
// sync loops; senders follow the core's local ops by subscription. It
// returns at once; the initial sync, if one is needed, runs in the
// background with the core's writes blocked (Status and Ready show it).
func (r *Replicator) Start(ctx context.Context) error {
	r.ctx, r.cancel = context.WithCancel(context.Background())
	r.started = time.Now()
	origin, err := r.core.SyncedOrigin(ctx)
	if err != nil {
		return fmt.Errorf("repl: %w", err)
	}
	switch {
	case origin == r.origin:
		r.state.Store(stateSynced)
		r.core.AllowWrites()
	case r.opts.Transport == nil:
		// Standalone: whatever the database holds is the data; the op log
		// starts over with it.
		if err := r.core.FinishSync(ctx, nil); err != nil {
			return fmt.Errorf("repl: %w", err)
		}
		r.state.Store(stateSynced)
		r.core.AllowWrites()
	default:
		r.state.Store(stateWaiting)
		reason := "waiting for an initial sync from a peer"
		if origin != "" {
			reason = "the op log does not belong to this database (wiped?): waiting for an initial sync"
		}
		if r.opts.RequirePeer && r.logEmpty() {
			r.needPeer = true
			reason = r.awaitPeerReason()
		}
		r.core.BlockWrites(reason)
		r.log.Info("this database is not a synced replica; an initial sync will run", "origin", r.origin, "database_origin", origin)
	}
	if t := r.opts.Transport; t != nil {
		t.Handle(Topic, r.handle)
		t.Handle(SyncTopic, r.handleSync)
		r.wg.Add(2)
		go r.membershipLoop()
		go r.syncLoop()
	}
	r.wg.Add(2)
	go r.heartbeatLoop()
	go r.trimLoop()
	return nil
}

// Stop stops every goroutine, unregisters the handlers and persists the
// peers' acknowledged positions. Call it before the core closes (the proxy
// closes it at Shutdown).
func (r *Replicator) Stop(ctx context.Context) error {
	if r.cancel == nil {
		return nil
	}
	if t := r.opts.Transport; t != nil {
		t.Handle(Topic, nil)
		t.Handle(SyncTopic, nil)
	}
	r.mu.Lock()
	r.stopping = true // handlers still running must not start goroutines now
	r.mu.Unlock()
	r.cancel()
	done := make(chan struct{})
	go func() { r.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		return fmt.Errorf("repl: stop: %w", ctx.Err())
	}
	var errs []error
	r.mu.Lock()
	senders := make([]*sender, 0, len(r.senders))
	for _, s := range r.senders {
		senders = append(senders, s)
	}
	r.mu.Unlock()
	for _, s := range senders {
		if err := s.persistAck(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// logEmpty reports whether the op log holds nothing: no op of this node,
// no position in any peer's ops.
func (r *Replicator) logEmpty() bool {
	if r.core.LastSeq() != 0 {
		return false
	}
	for _, seq := range r.core.AppliedVector() {
		if seq != 0 {
			return false
		}
	}
	return true
}

// awaitPeerReason is why writes are refused while RequirePeer holds the
// node back.
func (r *Replicator) awaitPeerReason() string {
	seeds := "the mesh seeds"
	if len(r.opts.Seeds) > 0 {
		seeds = "seeds " + strings.Join(r.opts.Seeds, ", ")
	}
	return "waiting for a peer to sync from: " + seeds + " not reached; start with --bootstrap (or mongo.bootstrap: true) if this is the first node of a new cluster"
}

func (r *Replicator) isSynced() bool { return r.state.Load() == stateSynced }

func (r *Replicator) wakeSync() {
	select {
	case r.syncWake <- struct{}{}:
	default:
	}
}

// handle dispatches messages of topic repl. It runs on the mesh's stream
// reader for the peer: it only decodes and hands over, never waits.
func (r *Replicator) handle(from string, msg []byte) {
	if len(msg) == 0 {
		return
	}
	switch msg[0] {
	case msgOps:
		r.onOps(from, msg)
	case msgAck:
		m, err := decodeAck(msg)
		if err != nil {
			r.bad(from, "ack", err)
			return
		}
		r.mu.Lock()
		s := r.senders[from]
		if m.origin != r.origin {
			// A relay's ack, or one for a previous incarnation of this
			// node (no relay has that key).
			s = r.relays[relayKey{from, m.origin}]
		}
		r.mu.Unlock()
		if s != nil {
			s.onAck(m.pos, m.flags)
		}
	case msgHeartbeat:
		m, err := decodeHeartbeat(msg)
		if err != nil {
			r.bad(from, "heartbeat", err)
			return
		}
		r.onHeartbeat(from, m)
	case msgLinks:
		m, err := decodeLinks(msg)
		if err != nil {
			r.bad(from, "links", err)
			return
		}
		r.onLinks(from, m)
	default:
		r.bad(from, "message", errMalformed)
	}
}

func (r *Replicator) bad(from, what string, err error) {
	r.met.badMessages.Inc()
	// At most one line every 10 s: a peer of another version could send
	// many messages this one does not understand.
	now := time.Now().UnixNano()
	if last := r.badLogged.Load(); now-last > int64(10*time.Second) && r.badLogged.CompareAndSwap(last, now) {
		r.log.Warn("malformed replication message dropped (more are only counted for 10s)", "peer", from, "what", what, "err", err)
	}
}

// skewLogEvery is how often a peer's refused clock readings are logged
// (they are counted every time).
const skewLogEvery = time.Minute

// clockRefused counts n of peer's readings (carried by what: ops,
// heartbeat, sync) refused by the core for running ahead (err, a
// *replica.ClockSkewError), and logs it at most once per skewLogEvery
// per peer.
func (r *Replicator) clockRefused(peer, what string, n int, err error) {
	r.met.clockSkew.WithLabelValues(peer, what).Add(float64(n))
	now := time.Now()
	r.mu.Lock()
	due := now.Sub(r.skewLog[peer]) >= skewLogEvery
	if due {
		r.skewLog[peer] = now
	}
	r.mu.Unlock()
	if !due {
		return
	}
	attrs := []any{"peer", peer, "what", what}
	var ce *replica.ClockSkewError
	if errors.As(err, &ce) {
		attrs = append(attrs, "ahead", ce.Ahead.Round(time.Second), "max_clock_skew", ce.Max, "reading", ce.TS.String())
	} else {
		attrs = append(attrs, "err", err)
	}
	r.log.Error("refusing a peer's clock reading: it is ahead of this node's wall clock by more than mongo.max_clock_skew. "+
		"Until the clocks agree its ops wait in its log and it is not used as a sync source (check NTP on both nodes; "+
		"further refusals of this peer are only counted for 1m)", attrs...)
}

// node returns (creating) the state of peer id; r.mu held.
func (r *Replicator) node(id string) *nodeState {
	n := r.nodes[id]
	if n == nil {
		n = &nodeState{id: id, seenAt: time.Now(), frozen: *r.maxStable.Load()}
		r.nodes[id] = n
	}
	return n
}
