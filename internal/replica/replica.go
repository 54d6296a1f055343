package replica

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.mongodb.org/mongo-driver/v2/mongo"

	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
	"github.com/edgenode/edgenode/internal/mongoproxy/oplog"
)

// Collections of the core's own database (MetaDB).
const (
	tombstoneColl = "tombstones"
	conflictColl  = "conflicts"
	replStateColl = "repl" // {_id: "state", origin, at}: this database is a synced replica
	ddlColl       = "ddl"  // DDL records, see ddl.go
)

// MetaDB is the core's own database: tombstones of deleted replicated
// documents, DDL records, parked conflicting operations and the synced
// marker. It is never replicated, and the front-end keeps clients from
// writing it.
const MetaDB = "edgenode_meta"

// Config configures a Replica.
type Config struct {
	// Node is the origin id of the ops this node captures (required).
	Node string
	// DataDir holds the op log (DataDir/oplog.db) (required).
	DataDir string
	// Client is the local database (required). The caller owns it: it
	// must outlive the Replica. Writes acknowledged through it must be
	// durable unless Capabilities.Sync is set.
	Client *mongo.Client
	// Replicated says whether this node replicates db.coll (required).
	Replicated func(db, coll string) bool
	// Capabilities is what the database can be relied on for (see
	// Detect).
	Capabilities Capabilities
	// HoldWrites, when set, starts with writes blocked for this reason
	// (see Replication.BlockWrites).
	HoldWrites string
	// MaxDocumentBytes caps a replicated document as stored (with its
	// metadata) and the op of each write (required, > 0).
	MaxDocumentBytes int
	// DocCacheBytes bounds the stored documents the core keeps in memory
	// (see docCache; 0 or less: none).
	DocCacheBytes int64
	// MaxClockSkew bounds how far ahead of the wall clock a peer's clock
	// reading may be (required, > 0).
	MaxClockSkew time.Duration
	// Metrics are the core's counters (NewMetrics; nil: unregistered ones).
	Metrics *Metrics
	// Registerer receives the op log's metrics (nil: none).
	Registerer prometheus.Registerer
	// Faults is a test hook (nil in production).
	Faults FaultHook
	// RetryRecordBytes bounds the records of retryable writes (0 or
	// less: no bound); SessionTTL is how long they are kept after a
	// session's last recorded statement (0: DefaultSessionTTL). See
	// "Retryable writes".
	RetryRecordBytes int64
	SessionTTL       time.Duration
	// StoreRetry bounds how long the store of a document keeps retrying
	// transient database errors, an election among them (0:
	// DefaultStoreRetry). See Settle.
	StoreRetry time.Duration
}

// DefaultStoreRetry is Config.StoreRetry's default: longer than a MongoDB
// election (electionTimeoutMillis, 10s, plus the vote and catch-up).
const DefaultStoreRetry = time.Minute

// Replica is the replica core: the op log, the clock, the convergent
// apply, DDL, tombstones and the write gate. See the package
// documentation; the front-end uses it as a Local, replication as a
// Replication.
type Replica struct {
	node       string
	client     *mongo.Client
	olog       *oplog.Log
	clock      *crdt.Clock
	caps       Capabilities
	replicated func(db, coll string) bool
	maxDoc     int
	maxSkew    time.Duration
	log        *slog.Logger
	met        *Metrics
	fault      FaultHook

	// Turns, in rank order (lockrank.go): the write gate, namespaces
	// (shared by document writes, exclusive for DDL), document leases.
	check rankChecker
	gate  gate
	nss   *leaseTable
	docs  *leaseTable

	// In-memory state behind leaf mutexes.
	holds  holds
	drops  drops
	subs   subscribers
	cache  *docCache  // owned entry by entry by the document lease holders
	groups groupTable // single-document writes waiting for their document (group.go)
	retry  *retryStore
	stable atomic.Pointer[crdt.Timestamp]
	// parked counts the records in edgenode_meta.conflicts, so that
	// settling them after a peer's batch costs nothing when there are none
	// (conflicts.go).
	parked atomic.Int64
	// unstored are the local ops whose store gave up on a transient error
	// (they are logged, unapplied); Settle stores them (settle.go).
	// storeRetry bounds storeOps.
	unstored   unstoredOps
	storeRetry time.Duration
}

// Open opens the op log, resumes the clock above its newest timestamp,
// reads the DDL state and re-applies the ops the log still holds as
// unapplied (a crash between a log append and its apply). The Replica is
// then ready for writes (unless held) and replication.
func Open(ctx context.Context, cfg Config, log *slog.Logger) (*Replica, error) {
	switch {
	case cfg.Node == "" || cfg.DataDir == "" || cfg.Client == nil || cfg.Replicated == nil:
		return nil, errors.New("replica: Node, DataDir, Client and Replicated are required")
	case cfg.MaxDocumentBytes <= 0 || cfg.MaxClockSkew <= 0:
		return nil, errors.New("replica: MaxDocumentBytes and MaxClockSkew must be positive")
	}
	if log == nil {
		log = slog.Default()
	}
	met := cfg.Metrics
	if met == nil {
		met, _ = NewMetrics(nil)
	}
	olog, err := oplog.Open(oplog.Options{Path: filepath.Join(cfg.DataDir, "oplog.db"), Origin: cfg.Node, SyncApplied: cfg.Capabilities.Sync}, log, cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("replica: open op log: %w", err)
	}
	r := &Replica{node: cfg.Node, client: cfg.Client, olog: olog, clock: crdt.NewClock(cfg.Node, nil), caps: cfg.Capabilities,
		replicated: cfg.Replicated, maxDoc: cfg.MaxDocumentBytes, maxSkew: cfg.MaxClockSkew, log: log, met: met, fault: cfg.Faults,
		drops: drops{m: map[string]crdt.Timestamp{}}, cache: newDocCache(cfg.DocCacheBytes, met), storeRetry: cfg.StoreRetry}
	if r.storeRetry <= 0 {
		r.storeRetry = DefaultStoreRetry
	}
	r.gate.check, r.holds.check, r.drops.check, r.subs.check, r.groups.check = &r.check, &r.check, &r.check, &r.check, &r.check
	r.unstored.check, r.unstored.added = &r.check, make(chan struct{}, 1)
	r.gate.exitFn = r.gate.exit
	r.nss = newLeaseTable(rankNamespace, &r.check)
	r.docs = newLeaseTable(rankDocument, &r.check)
	r.cache.docs = r.docs
	r.retry = newRetryStore(olog, cfg.SessionTTL, cfg.RetryRecordBytes, &r.check, met)
	if err := r.retry.load(); err != nil {
		_ = olog.Close()
		return nil, err
	}
	if cfg.HoldWrites != "" {
		r.gate.block(cfg.HoldWrites)
	}
	r.resumeClock(olog.MaxTimestamp())
	if err := r.start(ctx); err != nil {
		_ = olog.Close()
		return nil, err
	}
	return r, nil
}

func (r *Replica) start(ctx context.Context) error {
	if err := r.migrateKeys(ctx); err != nil {
		return fmt.Errorf("replica: %w", err)
	}
	if err := r.loadDDL(ctx); err != nil {
		return fmt.Errorf("replica: %w", err)
	}
	if err := r.countParked(ctx); err != nil {
		return fmt.Errorf("replica: %w", err)
	}
	unapplied, err := r.olog.Unapplied()
	if err != nil {
		return fmt.Errorf("replica: read unapplied ops: %w", err)
	}
	if len(unapplied) > 0 {
		r.log.Info("re-applying ops logged but not marked applied", "ops", len(unapplied))
		if err := r.applyOps(ctx, unapplied, "replay"); err != nil {
			return fmt.Errorf("replica: re-apply unapplied ops: %w", err)
		}
		r.met.replayed.Add(float64(len(unapplied)))
	}
	return nil
}

// Close closes the op log. Whatever uses the Replica (the front-end's
// connections, replication) must have stopped.
func (r *Replica) Close() error {
	if err := r.olog.Close(); err != nil {
		return fmt.Errorf("replica: close op log: %w", err)
	}
	return nil
}

// Origin is the origin id of this node's ops (Config.Node).
func (r *Replica) Origin() string { return r.node }

func splitNS(ns string) (db, coll string) {
	db, coll, _ = strings.Cut(ns, ".")
	return db, coll
}

func (r *Replica) coll(ns string) *mongo.Collection {
	db, c := splitNS(ns)
	return r.client.Database(db).Collection(c)
}

func (r *Replica) metaColl(name string) *mongo.Collection {
	return r.client.Database(MetaDB).Collection(name)
}
