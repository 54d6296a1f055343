package mongoproxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"go.mongodb.org/mongo-driver/v2/mongo/writeconcern"
	"go.mongodb.org/mongo-driver/v2/x/mongo/driver/connstring"
	"go.mongodb.org/mongo-driver/v2/x/mongo/driver/topology"

	"github.com/edgenode/edgenode/internal/replica"
)

// Options configures a Proxy.
type Options struct {
	// NoCoalescing sends every read on its client's own connection, even
	// when identical reads are in flight together (coalesce.go).
	NoCoalescing bool
	// Listen is the client address (default "127.0.0.1:27018").
	Listen string
	// Upstream is the MongoDB URI of the local database (required): any
	// URI the official driver takes (several hosts, replicaSet, TLS
	// options, mongodb+srv://, authentication). The proxy's own driver
	// client discovers and monitors the deployment; each client connection
	// is dialed to the current primary (TCP with the URI's TLS settings,
	// or a Unix socket path ending in ".sock"). See upstream.go.
	Upstream string
	// Advertise is the address clients reach the proxy at (host:port): the
	// proxy's hello reports it as its replica set's only member, me and
	// primary. Empty: each client connection's own local address, the
	// address that client dialed (wrong only behind NAT or a port
	// forward, where Advertise must be set).
	Advertise string
	// SetName is the replica set name the proxy reports in hello (default
	// DefaultSetName); an application may put it in its connection string
	// as replicaSet=.
	SetName string
	// NodeID is this node's id: the origin of the ops it captures (required).
	NodeID string
	// DataDir holds the op log (DataDir/oplog.db) (required).
	DataDir string
	// Replicate lists namespace patterns ("db.*", "db.coll", "*", path.Match
	// syntax) whose writes are captured and replicated. Default ["*"]: every
	// database except admin, local, config and edgenode_meta.
	Replicate []string
	// LocalOnly lists exceptions to Replicate (same patterns): writes there
	// are forwarded untouched and every operator is allowed.
	LocalOnly []string
	// MaxConns caps client connections (default 4096); more are closed at once.
	MaxConns int
	// MaxMessageSize caps a client message (default 48,000,000, MongoDB's).
	MaxMessageSize int
	// SyncDatabase, when set, makes every database write completed before
	// the call durable (the embedded database does not fsync each commit).
	// The op log then keeps ops until the database holds them durably (see
	// oplog.Options.SyncApplied). Without it, writes the database
	// acknowledged count as durable, and the proxy's own writes ask for
	// the journal (w:1, j:true) unless the upstream URI sets a write
	// concern.
	SyncDatabase func() error
	// HoldWrites, when set, makes the proxy start with captured writes
	// refused (error 10107 NotWritablePrimary naming this reason) until
	// the replica core's AllowWrites: replication sets it until the node is
	// a complete replica.
	HoldWrites string
	// MaxDocumentBytes caps a document of a replicated collection as stored
	// (its fields plus the replication metadata, which repeats assigned
	// values) and the op of each write to it. A write beyond it is refused
	// with error 10334 BSONObjectTooLarge before anything is logged: every
	// op must fit in one replication message and every document in one
	// initial-sync chunk, or a peer's stream would stop at it. Default
	// DefaultMaxDocumentBytes (the mesh's 8 MiB message less headroom).
	MaxDocumentBytes int
	// DocCacheBytes bounds the memory of the documents the proxy keeps,
	// as last read or written, so that the next write to one, or a peer's
	// op for it, skips the read (default DefaultDocCacheBytes; negative
	// disables it). It assumes the proxy is the only writer of its
	// replicated collections, which it must be anyway for them to replicate.
	DocCacheBytes int64
	// MessageTimeout bounds how long a client message may take to arrive
	// once its first byte has, and how long a reply may take to be taken by
	// the client (default 30s). A client that trickles a message, or stops
	// half-way, is disconnected instead of holding a connection slot.
	MessageTimeout time.Duration
	// IdleTimeout closes a client connection that sends no message for
	// that long (default 30 minutes; negative: never). Drivers keep idle
	// connections in their pools and reconnect, retrying a retryable
	// operation, when one turns out to be closed, so the default is long
	// enough to leave pooled connections of a quiet application alone and
	// still reclaims the slots of clients that went away without closing.
	// Internal connections (DialInternal) are exempt.
	IdleTimeout time.Duration
	// MaxClockSkew bounds how far ahead of this node's wall clock a peer's
	// clock reading may be (replica.Replication's ApplyRemote and
	// ObserveClock): a reading beyond it is refused, so that no peer can
	// drag this node's clock, and the op log that persists it, into the
	// future. Default DefaultMaxClockSkew.
	MaxClockSkew time.Duration
	// Capabilities, when set, is what the database can be relied on for,
	// instead of what replica.Detect finds at Start (tests use it to run
	// the MongoDB code paths on FerretDB). Its Sync, when nil, is
	// SyncDatabase.
	Capabilities *replica.Capabilities
	// RetryRecordBytes bounds the records of retryable writes (default
	// DefaultRetryRecordBytes; negative: no bound): see "Retryable
	// writes" in the package documentation.
	RetryRecordBytes int64
	// Faults is a test hook called at the replica core's fault points
	// (the crash tests stop the process there); nil in production.
	Faults replica.FaultHook
	// StoreRetry bounds how long a captured write's database write waits
	// out transient errors (an election) before the client gets 10107
	// with RetryableWriteError (0: replica.DefaultStoreRetry). Not a
	// config key: tests shorten it.
	StoreRetry time.Duration
}

// Defaults of Options.MessageTimeout and Options.IdleTimeout.
const (
	DefaultMessageTimeout = 30 * time.Second
	DefaultIdleTimeout    = 30 * time.Minute
)

// DefaultSetName is Options.SetName's default.
const DefaultSetName = "edgenode"

// DefaultRetryRecordBytes is Options.RetryRecordBytes's default: room for
// the results of some hundred thousand sessions' statements, or a few
// thousand findAndModify documents of a few KiB.
const DefaultRetryRecordBytes = 64 << 20

// DefaultMaxClockSkew is Options.MaxClockSkew's default (see package repl
// for why a minute).
const DefaultMaxClockSkew = time.Minute

// DefaultMaxDocumentBytes is Options.MaxDocumentBytes's default: 7.5 MiB,
// leaving room in the mesh's 8 MiB messages for framing and for the
// smaller items that share an initial-sync chunk.
const DefaultMaxDocumentBytes = 15 << 19

// DefaultDocCacheBytes is Options.DocCacheBytes's default: 64 MiB holds
// some 50,000 small documents (a counter, 320 bytes stored with its
// metadata) or 24,000 comments (850 bytes), so a working set that size is
// written, and caught up after a partition, without reading it first.
const DefaultDocCacheBytes = 64 << 20

// Proxy is the Mongo wire-protocol proxy. See the package documentation.
type Proxy struct {
	opts Options
	log  *slog.Logger
	reg  prometheus.Registerer
	met  *metrics
	ns   *nsMatcher
	// authRequired: the upstream URI carries credentials, so the database
	// enforces authentication; captured writes, which the proxy performs
	// with its own credentials, are then refused on connections that have
	// not authenticated themselves.
	authRequired bool
	// noRoles logs, once, that the database has no role model.
	noRoles sync.Once
	// flights are the coalescable reads in flight (coalesce.go).
	flights flights
	// up is the upstream's current primary and secondaries, kept by the
	// proxy's driver client's topology events.
	up *upstreamTopology
	// upstreamHosts names the URI's hosts (or SRV name) in logs.
	upstreamHosts string

	// rmet are the replica core's metrics, registered with the proxy's.
	rmet *replica.Metrics
	// client is the proxy's own connection pool to the database (the
	// replica core writes through it; the front-end reads with it);
	// replica is the core, and core the part of it the front-end uses.
	// All three are set by Start.
	client *mongo.Client
	// reads is the driver's pool for reads on secondaries (reads.go).
	reads   *topology.Topology
	replica *replica.Replica
	core    replica.Local

	mu    sync.Mutex
	state int // stateNew, stateRunning, stateStopped
	ln    net.Listener
	conns map[*clientConn]struct{}
	// closing is read without mu by connections changing state under
	// their own lock (clientConn.setState); Shutdown takes mu and then each
	// connection's lock, so reading it under mu there would invert that
	// order and deadlock (it did: a test run hung in Shutdown).
	closing  atomic.Bool
	connWG   sync.WaitGroup
	acceptWG sync.WaitGroup
	// settleWG waits for the settle loop (settle.go), which runs until
	// baseCtx is cancelled.
	settleWG sync.WaitGroup
	baseCtx  context.Context
	cancel   context.CancelFunc
	reqID    atomic.Int32
	connSeq  atomic.Uint64
}

const (
	stateNew = iota
	stateRunning
	stateStopped
)

// New validates opts and builds a Proxy; nothing is opened until Start.
func New(opts Options, log *slog.Logger, reg prometheus.Registerer) (*Proxy, error) {
	if log == nil {
		log = slog.Default()
	}
	if opts.Listen == "" {
		opts.Listen = "127.0.0.1:27018"
	}
	if opts.MaxConns <= 0 {
		opts.MaxConns = 4096
	}
	if opts.MaxDocumentBytes <= 0 {
		opts.MaxDocumentBytes = DefaultMaxDocumentBytes
	}
	if opts.DocCacheBytes == 0 {
		opts.DocCacheBytes = DefaultDocCacheBytes
	}
	if opts.RetryRecordBytes == 0 {
		opts.RetryRecordBytes = DefaultRetryRecordBytes
	}
	if opts.MaxClockSkew <= 0 {
		opts.MaxClockSkew = DefaultMaxClockSkew
	}
	if opts.SetName == "" {
		opts.SetName = DefaultSetName
	}
	if opts.Advertise != "" {
		if _, port, err := net.SplitHostPort(opts.Advertise); err != nil || port == "" {
			return nil, fmt.Errorf("mongoproxy: Advertise %q is not host:port", opts.Advertise)
		}
	}
	if opts.MaxMessageSize <= 0 {
		opts.MaxMessageSize = 48_000_000
	}
	if opts.MessageTimeout < 0 {
		return nil, errors.New("mongoproxy: MessageTimeout must not be negative")
	}
	if opts.MessageTimeout == 0 {
		opts.MessageTimeout = DefaultMessageTimeout
	}
	if opts.IdleTimeout == 0 {
		opts.IdleTimeout = DefaultIdleTimeout
	}
	if opts.NodeID == "" {
		return nil, errors.New("mongoproxy: NodeID is required")
	}
	if opts.DataDir == "" {
		return nil, errors.New("mongoproxy: DataDir is required")
	}
	if opts.Upstream == "" {
		return nil, errors.New("mongoproxy: Upstream is required")
	}
	cs, err := connstring.ParseAndValidate(opts.Upstream)
	if err != nil {
		return nil, fmt.Errorf("mongoproxy: upstream URI: %w", err)
	}
	if cs.LoadBalanced {
		return nil, errors.New("mongoproxy: upstream URI: loadBalanced is not supported (the proxy must know the primary: name the members or the replica set)")
	}
	// The driver's own TLS settings (tlsCAFile, tlsCertificateKeyFile,
	// tlsInsecure, ...), for the client connections the proxy dials.
	copts := options.Client().ApplyURI(opts.Upstream)
	if err := copts.Validate(); err != nil {
		return nil, fmt.Errorf("mongoproxy: upstream URI: %w", err)
	}
	hosts := strings.Join(cs.Hosts, ",")
	if cs.Scheme == connstring.SchemeMongoDBSRV {
		// Resolved by the driver when it connects (and again as the
		// records change).
		hosts = "SRV " + hosts
	}
	ns, err := newNSMatcher(opts.Replicate, opts.LocalOnly)
	if err != nil {
		return nil, err
	}
	met, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	rmet, err := replica.NewMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("mongoproxy: %w", err)
	}
	p := &Proxy{opts: opts, log: log.With("component", "mongoproxy"), reg: reg, met: met, rmet: rmet, ns: ns, authRequired: cs.Username != "" || cs.AuthMechanism != "",
		up: newUpstreamTopology(copts.TLSConfig), upstreamHosts: hosts, conns: map[*clientConn]struct{}{}}
	p.up.onChange = p.primaryChanged
	return p, nil
}

// Start connects to the database, opens the replica core (its op log; the
// ops the log holds as unapplied after a crash are applied again), then
// listens. It returns once the listener is bound.
func (p *Proxy) Start(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state != stateNew {
		return errors.New("mongoproxy: Start called twice")
	}
	client, err := p.connect(ctx)
	if err != nil {
		return err
	}
	reads, err := openReadPool(p.opts.Upstream)
	if err != nil {
		_ = client.Disconnect(context.Background())
		return err
	}
	fail := func(err error) error {
		_ = reads.Disconnect(context.Background())
		_ = client.Disconnect(context.Background())
		return err
	}
	rep, err := replica.Open(ctx, replica.Config{
		Node:             p.opts.NodeID,
		DataDir:          p.opts.DataDir,
		Client:           client,
		Replicated:       p.ns.replicated,
		Capabilities:     p.capabilities(ctx, client),
		HoldWrites:       p.opts.HoldWrites,
		MaxDocumentBytes: p.opts.MaxDocumentBytes,
		DocCacheBytes:    p.opts.DocCacheBytes,
		MaxClockSkew:     p.opts.MaxClockSkew,
		Metrics:          p.rmet,
		Registerer:       p.reg,
		Faults:           p.opts.Faults,
		RetryRecordBytes: p.opts.RetryRecordBytes,
		StoreRetry:       p.opts.StoreRetry,
	}, p.log)
	if err != nil {
		return fail(fmt.Errorf("mongoproxy: %w", err))
	}
	ln, err := net.Listen("tcp", p.opts.Listen)
	if err != nil {
		_ = rep.Close()
		return fail(fmt.Errorf("mongoproxy: listen: %w", err))
	}
	p.client, p.reads, p.replica, p.core = client, reads, rep, rep
	p.ln = ln
	p.baseCtx, p.cancel = context.WithCancel(context.Background())
	p.state = stateRunning
	p.acceptWG.Add(1)
	go p.acceptLoop()
	p.settleWG.Go(func() { p.settleLoop(p.baseCtx) })
	primary, _ := p.up.Primary()
	p.log.Info("mongo proxy listening", "addr", ln.Addr().String(), "upstream", p.upstreamHosts, "primary", primary, "set_name", p.opts.SetName, "node", p.opts.NodeID)
	return nil
}

// connect connects the proxy's own client to the database and checks it
// answers.
func (p *Proxy) connect(ctx context.Context) (*mongo.Client, error) {
	copts := options.Client().ApplyURI(p.opts.Upstream).SetAppName("edgenode-mongoproxy").SetServerMonitor(p.up.monitor())
	if p.opts.SyncDatabase == nil && copts.WriteConcern == nil {
		// The op log forgets an op once the database acknowledged applying
		// it, so the acknowledgement must mean durable: journaled (MongoDB's
		// default does not wait for the journal). A write concern in the
		// URI is the operator's choice and kept.
		journal := true
		copts.SetWriteConcern(&writeconcern.WriteConcern{W: 1, Journal: &journal})
	}
	client, err := mongo.Connect(copts)
	if err != nil {
		return nil, fmt.Errorf("mongoproxy: connect to upstream: %w", err)
	}
	pingCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err = client.Ping(pingCtx, nil)
	cancel()
	if err != nil {
		_ = client.Disconnect(context.Background())
		return nil, fmt.Errorf("mongoproxy: upstream %s not reachable: %w", p.upstreamHosts, err)
	}
	return client, nil
}

// capabilities is what the replica core may rely on from the database:
// Options.Capabilities, or what the database says it is.
func (p *Proxy) capabilities(ctx context.Context, client *mongo.Client) replica.Capabilities {
	var caps replica.Capabilities
	if p.opts.Capabilities != nil {
		caps = *p.opts.Capabilities
	} else {
		caps = replica.Detect(ctx, client)
	}
	if caps.Sync == nil {
		caps.Sync = p.opts.SyncDatabase
	}
	return caps
}

// Replica is the replica core the proxy captures writes into (nil before
// Start): replication (package repl) runs on it. It is closed by
// Shutdown, so whatever uses it must stop first.
func (p *Proxy) Replica() *replica.Replica {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.replica
}

// Addr is the bound listen address (nil before Start).
func (p *Proxy) Addr() net.Addr {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln == nil {
		return nil
	}
	return p.ln.Addr()
}

// Shutdown stops accepting, closes idle client connections, lets requests
// in flight finish (until ctx expires, then closes everything), and closes
// the database client and the replica core.
func (p *Proxy) Shutdown(ctx context.Context) error {
	p.mu.Lock()
	if p.state != stateRunning {
		p.mu.Unlock()
		return nil
	}
	p.state = stateStopped
	p.closing.Store(true)
	_ = p.ln.Close()
	for c := range p.conns {
		c.closeIfIdle()
	}
	p.mu.Unlock()
	p.acceptWG.Wait()

	done := make(chan struct{})
	go func() { p.connWG.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		p.log.Warn("shutdown deadline reached; closing busy connections")
		p.mu.Lock()
		for c := range p.conns {
			c.forceClose()
		}
		p.mu.Unlock()
		p.cancel()
		<-done
	}
	// The settle loop stops before the core closes; what it did not
	// store stays logged, and the next start stores it (replay).
	p.cancel()
	p.settleWG.Wait()
	var errs []error
	dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := p.client.Disconnect(dctx); err != nil {
		errs = append(errs, fmt.Errorf("mongoproxy: disconnect: %w", err))
	}
	if err := p.reads.Disconnect(dctx); err != nil {
		errs = append(errs, fmt.Errorf("mongoproxy: disconnect read pool: %w", err))
	}
	if err := p.replica.Close(); err != nil {
		errs = append(errs, fmt.Errorf("mongoproxy: %w", err))
	}
	return errors.Join(errs...)
}

func (p *Proxy) acceptLoop() {
	defer p.acceptWG.Done()
	var backoff time.Duration
	var lastReject time.Time
	for {
		nc, err := p.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: back off, keep serving.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			p.log.Warn("accept failed", "err", err, "retry_in", backoff)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		p.mu.Lock()
		if p.closing.Load() {
			p.mu.Unlock()
			_ = nc.Close()
			return
		}
		if len(p.conns) >= p.opts.MaxConns {
			p.mu.Unlock()
			p.met.connsRejected.Inc()
			if time.Since(lastReject) > 10*time.Second {
				lastReject = time.Now()
				p.log.Warn("connection limit reached; closing new client connections", "max_conns", p.opts.MaxConns)
			}
			_ = nc.Close()
			continue
		}
		c := &clientConn{p: p, c: nc, id: p.connSeq.Add(1)}
		p.conns[c] = struct{}{}
		p.connWG.Add(1)
		p.mu.Unlock()
		p.met.conns.Inc()
		go c.serve()
	}
}

// DialInternal connects the node's own client to the proxy without a
// socket: the connection is an in-memory pipe served like a client
// connection, but trusted (internal). Only an internal connection may read
// or write the reserved namespaces that hold the fleet's secrets (see
// reservedDB); no listener anyone else can reach gives that right. Use it as
// the mongo driver's dialer (options.Client().SetDialer); network and addr
// are ignored. It fails once the proxy is shutting down or not started.
func (p *Proxy) DialInternal(ctx context.Context, network, addr string) (net.Conn, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	p.mu.Lock()
	if p.state != stateRunning || p.closing.Load() {
		p.mu.Unlock()
		return nil, errors.New("mongoproxy: internal dial: proxy not running")
	}
	server, client := net.Pipe()
	c := &clientConn{p: p, c: server, id: p.connSeq.Add(1), internal: true}
	p.conns[c] = struct{}{}
	p.connWG.Add(1)
	p.mu.Unlock()
	p.met.conns.Inc()
	go c.serve()
	return client, nil
}

func (p *Proxy) removeConn(c *clientConn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	p.met.conns.Dec()
	p.connWG.Done()
}

func (p *Proxy) nextRequestID() int32 { return p.reqID.Add(1) }
