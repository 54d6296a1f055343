package mongoproxy

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
	"github.com/edgenode/edgenode/internal/mongoproxy/oplog"
)

// This file is what replication (package repl) needs from the proxy: the op
// log, the clock, a gate on local writes, and the two halves of an initial
// sync (taking a snapshot of this node's replicated data, and loading one).

// Collections of the proxy's own database used by replication.
const (
	replStateColl = "repl" // {_id: "state", origin, at}: this database is a synced replica
	ddlColl       = "ddl"  // DDL records, see ddl.go
)

// Origin is the origin id of the ops this proxy captures (Options.NodeID).
func (p *Proxy) Origin() string { return p.opts.NodeID }

func (p *Proxy) running() (*engine, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state != stateRunning {
		return nil, errors.New("mongoproxy: not running")
	}
	return p.eng, nil
}

// OpLog is the op log (nil before Start). It is closed by Shutdown, so
// whatever uses it must stop first.
func (p *Proxy) OpLog() *oplog.Log {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.eng == nil {
		return nil
	}
	return p.eng.olog
}

// OnLocalAppend registers fn, called (on the client's goroutine; it must
// not block) as soon as a local write's ops are durable in the op log,
// before they are applied locally: replication sends them from the log at
// once. Valid after Start.
func (p *Proxy) OnLocalAppend(fn func()) {
	p.mu.Lock()
	eng := p.eng
	p.mu.Unlock()
	if eng != nil {
		eng.onAppend.Store(&fn)
	}
}

// Frontier returns a clock reading F such that every op this node has
// captured or will capture with a timestamp at or below F is already in the
// op log (local writes in progress hold it back), and every op it captures
// later has a larger timestamp. Zero before Start.
func (p *Proxy) Frontier() crdt.Timestamp {
	p.mu.Lock()
	eng := p.eng
	p.mu.Unlock()
	if eng == nil {
		return crdt.Timestamp{}
	}
	return eng.frontier()
}

// ObserveClock folds a peer's clock reading into this node's HLC, so that
// writes made here afterwards are ordered after everything that peer did.
// A reading more than MaxClockSkew ahead of the wall clock is not folded
// in: a *ClockSkewError says so.
func (p *Proxy) ObserveClock(ts crdt.Timestamp) error {
	p.mu.Lock()
	eng := p.eng
	p.mu.Unlock()
	if eng == nil {
		return nil
	}
	if ahead, ok := eng.clock.ObserveWithin(ts, p.opts.MaxClockSkew); !ok {
		return &ClockSkewError{TS: ts, Ahead: ahead, Max: p.opts.MaxClockSkew}
	}
	return nil
}

// CheckClock returns a *ClockSkewError when ts is more than MaxClockSkew
// ahead of this node's wall clock (ApplyRemote would refuse an op carrying
// it), nil otherwise.
func (p *Proxy) CheckClock(ts crdt.Timestamp) error {
	p.mu.Lock()
	eng := p.eng
	p.mu.Unlock()
	if eng == nil {
		return nil
	}
	return p.checkClock(eng, ts)
}

func (p *Proxy) checkClock(eng *engine, ts crdt.Timestamp) error {
	if ahead := eng.clock.Ahead(ts); ahead > p.opts.MaxClockSkew {
		return &ClockSkewError{TS: ts, Ahead: ahead, Max: p.opts.MaxClockSkew}
	}
	return nil
}

// ClockSkewError reports a peer's clock reading more than MaxClockSkew
// ahead of this node's wall clock. The reading was not folded into this
// node's clock, and nothing carrying it was logged or applied.
type ClockSkewError struct {
	TS    crdt.Timestamp
	Ahead time.Duration // how far TS is ahead of the wall clock
	Max   time.Duration // Options.MaxClockSkew
}

func (e *ClockSkewError) Error() string {
	return fmt.Sprintf("mongoproxy: clock reading %s is %v ahead of this node's wall clock (more than mongo.max_clock_skew, %v)", e.TS, e.Ahead.Round(time.Millisecond), e.Max)
}

// resumeClock starts the clock above the op log's newest timestamp: this
// node's ops keep increasing (and stay distinct) across restarts, and
// every clock reading it announced stays below what it stamps next. A
// newest timestamp more than MaxClockSkew ahead of the wall clock cannot
// have come from a reading this node accepted since it bounds them (every
// one was at most MaxClockSkew ahead when it was folded in), so it comes
// from a wall clock set back, or from a version that did not bound peers'
// readings: the clock then resumes MaxClockSkew ahead of the wall clock,
// which is still above everything accepted under the bound, and says so.
func (p *Proxy) resumeClock(clock *crdt.Clock, newest crdt.Timestamp) {
	bound := p.opts.MaxClockSkew
	ahead, ok := clock.ObserveWithin(newest, bound)
	if ok {
		return
	}
	clock.Observe(crdt.Timestamp{Wall: time.Now().Add(bound).UnixMilli()})
	p.log.Error("the op log's clock is far ahead of this node's wall clock: the clock resumes mongo.max_clock_skew ahead of the wall clock instead. "+
		"Either this node's wall clock was set back (check NTP), or an earlier version accepted a peer's clock that ran ahead. "+
		"Writes already stamped in the future keep winning over newer ones until the wall clock gets there",
		"op_log_clock", newest.String(), "ahead", ahead.Round(time.Second), "max_clock_skew", bound)
}

// BlockWrites makes the proxy refuse captured writes (and replicated DDL)
// with error 10107 NotWritablePrimary naming reason, and waits until the
// local writes already in progress have finished. Reads and local-only
// collections are not affected. Before Start it sets the initial state
// (see Options.HoldWrites).
func (p *Proxy) BlockWrites(reason string) {
	p.mu.Lock()
	eng := p.eng
	if eng == nil {
		p.opts.HoldWrites = reason
		p.mu.Unlock()
		return
	}
	p.mu.Unlock()
	eng.blocked.Store(&reason)
	eng.gate.Lock()   // waits for writes in flight (they hold the gate shared)
	eng.gate.Unlock() //lint:ignore SA2001 the empty section is the point: a barrier
}

// AllowWrites undoes BlockWrites (and Options.HoldWrites).
func (p *Proxy) AllowWrites() {
	p.mu.Lock()
	eng := p.eng
	p.opts.HoldWrites = ""
	p.mu.Unlock()
	if eng != nil {
		eng.blocked.Store(nil)
	}
}

// WritesBlocked returns the reason writes are refused ("" when accepted).
func (p *Proxy) WritesBlocked() string {
	p.mu.Lock()
	eng := p.eng
	reason := p.opts.HoldWrites
	p.mu.Unlock()
	if eng != nil {
		if r := eng.blocked.Load(); r != nil {
			return *r
		}
		return ""
	}
	return reason
}

// SyncedOrigin returns the origin recorded by MarkSynced in this database
// ("" when the database was never synced, for example because it was
// wiped). A value different from Origin means the op log and the database
// do not belong together (the op log was wiped).
func (p *Proxy) SyncedOrigin(ctx context.Context) (string, error) {
	eng, err := p.running()
	if err != nil {
		return "", err
	}
	raw, err := eng.metaColl(replStateColl).FindOne(ctx, bson.D{{Key: "_id", Value: "state"}}).Raw()
	if errors.Is(err, mongo.ErrNoDocuments) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("mongoproxy: read replication state: %w", err)
	}
	o, _ := raw.Lookup("origin").StringValueOK()
	return o, nil
}

// MarkSynced records in the database that it is a complete replica whose
// op log is this proxy's (origin = Origin).
func (p *Proxy) MarkSynced(ctx context.Context) error {
	eng, err := p.running()
	if err != nil {
		return err
	}
	doc := bson.D{{Key: "_id", Value: "state"}, {Key: "origin", Value: p.opts.NodeID}, {Key: "at", Value: time.Now().UTC()}}
	if _, err := eng.metaColl(replStateColl).ReplaceOne(ctx, bson.D{{Key: "_id", Value: "state"}}, doc, options.Replace().SetUpsert(true)); err != nil {
		return fmt.Errorf("mongoproxy: record replication state: %w", err)
	}
	return nil
}

// SnapshotKind says what a SnapshotItem carries.
type SnapshotKind byte

// The kinds of SnapshotItem, in the order Snapshot emits them.
const (
	SnapCollection SnapshotKind = 'c' // Doc: listCollections options of NS
	SnapIndex      SnapshotKind = 'i' // Doc: an index specification (listIndexes) of NS
	SnapDoc        SnapshotKind = 'd' // Doc: a stored document of NS, metadata included
	SnapTombstone  SnapshotKind = 't' // Doc: a tombstone record (NS empty)
	SnapDDL        SnapshotKind = 'r' // Doc: a DDL record (NS empty)
)

// SnapshotItem is one element of a snapshot.
type SnapshotItem struct {
	Kind SnapshotKind
	NS   string
	Doc  bson.Raw
}

// AppliedVector returns, for every origin, the position up to which all its
// ops are applied to this database. Taken before Snapshot, it is the point
// from which a node loading the snapshot must stream: every op at or below
// it is in the documents Snapshot reads afterwards (documents only move
// forward), and ops above it that are already in them are harmless to
// apply again.
func (p *Proxy) AppliedVector() (map[string]uint64, error) {
	eng, err := p.running()
	if err != nil {
		return nil, err
	}
	return eng.olog.AppliedAll(), nil
}

// replicatedNamespaces lists the collections this node replicates, sorted.
func (e *engine) replicatedNamespaces(ctx context.Context) ([]string, error) {
	dbs, err := e.client.ListDatabaseNames(ctx, bson.D{})
	if err != nil {
		return nil, fmt.Errorf("list databases: %w", err)
	}
	var out []string
	for _, db := range dbs {
		switch db {
		case "admin", "local", "config", metaDB:
			continue
		}
		names, err := e.client.Database(db).ListCollectionNames(ctx, bson.D{})
		if err != nil {
			return nil, fmt.Errorf("list collections of %s: %w", db, err)
		}
		for _, c := range names {
			if e.replicated == nil || e.replicated(db, c) {
				out = append(out, db+"."+c)
			}
		}
	}
	slices.Sort(out)
	return out, nil
}

// Snapshot reads every replicated collection (its options and indexes),
// every replicated document with its metadata, every tombstone and every DDL
// record, and calls emit for each, in that order. It reads while writes go
// on; see AppliedVector for why that is correct.
func (p *Proxy) Snapshot(ctx context.Context, emit func(SnapshotItem) error) error {
	eng, err := p.running()
	if err != nil {
		return err
	}
	nss, err := eng.replicatedNamespaces(ctx)
	if err != nil {
		return fmt.Errorf("mongoproxy: snapshot: %w", err)
	}
	for _, ns := range nss {
		db, c := splitNS(ns)
		specs, err := eng.client.Database(db).ListCollections(ctx, bson.D{{Key: "name", Value: c}})
		if err != nil {
			return fmt.Errorf("mongoproxy: snapshot: list %s: %w", ns, err)
		}
		var opts bson.Raw
		for specs.Next(ctx) {
			if o, err := specs.Current.LookupErr("options"); err == nil && o.Type == bson.TypeEmbeddedDocument {
				opts = slices.Clone(bson.Raw(o.Value))
			}
		}
		_ = specs.Close(ctx)
		if opts == nil {
			opts = bson.Raw{5, 0, 0, 0, 0}
		}
		if err := emit(SnapshotItem{Kind: SnapCollection, NS: ns, Doc: opts}); err != nil {
			return err
		}
		idx, err := eng.coll(ns).Indexes().List(ctx)
		if err != nil {
			return fmt.Errorf("mongoproxy: snapshot: indexes of %s: %w", ns, err)
		}
		for idx.Next(ctx) {
			if name, _ := idx.Current.Lookup("name").StringValueOK(); name == "_id_" {
				continue
			}
			if err := emit(SnapshotItem{Kind: SnapIndex, NS: ns, Doc: slices.Clone(idx.Current)}); err != nil {
				_ = idx.Close(ctx)
				return err
			}
		}
		if err := idx.Close(ctx); err != nil {
			return fmt.Errorf("mongoproxy: snapshot: indexes of %s: %w", ns, err)
		}
	}
	for _, ns := range nss {
		if err := eachDoc(ctx, eng.coll(ns), func(raw bson.Raw) error { return emit(SnapshotItem{Kind: SnapDoc, NS: ns, Doc: raw}) }); err != nil {
			return fmt.Errorf("mongoproxy: snapshot: %s: %w", ns, err)
		}
	}
	for _, m := range []struct {
		coll string
		kind SnapshotKind
	}{{tombstoneColl, SnapTombstone}, {ddlColl, SnapDDL}} {
		if err := eachDoc(ctx, eng.metaColl(m.coll), func(raw bson.Raw) error { return emit(SnapshotItem{Kind: m.kind, Doc: raw}) }); err != nil {
			return fmt.Errorf("mongoproxy: snapshot: %s: %w", m.coll, err)
		}
	}
	return nil
}

func eachDoc(ctx context.Context, c *mongo.Collection, fn func(bson.Raw) error) error {
	cur, err := c.Find(ctx, bson.D{}, options.Find().SetBatchSize(1000))
	if err != nil {
		return err
	}
	defer cur.Close(ctx)
	for cur.Next(ctx) {
		if err := fn(slices.Clone(cur.Current)); err != nil {
			return err
		}
	}
	return cur.Err()
}

// BeginSync empties this database of everything replicated (every
// replicated collection, the tombstones, the DDL records and the synced
// marker) before a snapshot is loaded. Block writes first (BlockWrites), and
// apply no peer's ops until FinishSync.
func (p *Proxy) BeginSync(ctx context.Context) error {
	eng, err := p.running()
	if err != nil {
		return err
	}
	eng.purgeCache()
	if _, err := eng.metaColl(replStateColl).DeleteOne(ctx, bson.D{{Key: "_id", Value: "state"}}); err != nil {
		return fmt.Errorf("mongoproxy: begin sync: clear state: %w", err)
	}
	nss, err := eng.replicatedNamespaces(ctx)
	if err != nil {
		return fmt.Errorf("mongoproxy: begin sync: %w", err)
	}
	for _, ns := range nss {
		if err := eng.coll(ns).Drop(ctx); err != nil {
			return fmt.Errorf("mongoproxy: begin sync: drop %s: %w", ns, err)
		}
	}
	for _, c := range []string{tombstoneColl, ddlColl} {
		if err := eng.metaColl(c).Drop(ctx); err != nil {
			return fmt.Errorf("mongoproxy: begin sync: drop %s.%s: %w", metaDB, c, err)
		}
	}
	eng.resetDDL()
	return nil
}

// RefusedItem is a snapshot item LoadSnapshot did not store.
type RefusedItem struct {
	Kind SnapshotKind
	NS   string // its namespace (for a tombstone or DDL record, the one it claims)
	Why  string
}

// LoadSnapshot stores snapshot items (after BeginSync). Items may come in
// any number of calls, in Snapshot's order. A document or record already
// present is left as it is (a snapshot read during writes can meet a
// document twice; both copies include every op up to the vector).
//
// Only what this node replicates is stored: the source decides with its own
// configuration, which may differ, and a source holding a node certificate
// may send anything. An item of a namespace this node does not replicate
// (mongo.replicate minus mongo.local_only, never admin, local, config,
// edgenode_meta or system.* collections), or a tombstone or DDL record
// whose key does not match the namespace it claims, is skipped and
// returned in refused.
func (p *Proxy) LoadSnapshot(ctx context.Context, items []SnapshotItem) (refused []RefusedItem, err error) {
	eng, err := p.running()
	if err != nil {
		return nil, err
	}
	var batchNS string
	var batch []any
	var batchColl *mongo.Collection
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		_, err := batchColl.InsertMany(ctx, batch, options.InsertMany().SetOrdered(false))
		batch = batch[:0]
		if err == nil {
			return nil
		}
		var bwe mongo.BulkWriteException
		if errors.As(err, &bwe) && bwe.WriteConcernError == nil {
			for _, we := range bwe.WriteErrors {
				if we.Code != int(codeDuplicateKey) && !strings.Contains(we.Message, "UNIQUE constraint failed") {
					return fmt.Errorf("store %s: %w", batchNS, err)
				}
			}
			return nil
		}
		return fmt.Errorf("store %s: %w", batchNS, err)
	}
	for _, it := range items {
		if ns, why := p.snapshotItemScope(it); why != "" {
			refused = append(refused, RefusedItem{Kind: it.Kind, NS: ns, Why: why})
			continue
		}
		var target *mongo.Collection
		key := string(it.Kind) + it.NS
		switch it.Kind {
		case SnapCollection:
			if err := flush(); err != nil {
				return refused, err
			}
			if err := eng.createCollection(ctx, it.NS, it.Doc); err != nil {
				return refused, fmt.Errorf("mongoproxy: load snapshot: %w", err)
			}
			continue
		case SnapIndex:
			if err := flush(); err != nil {
				return refused, err
			}
			if err := eng.createIndex(ctx, it.NS, it.Doc); err != nil {
				// The database may not support an index its peer has (or a
				// unique index may already be violated by converging data):
				// the documents matter more.
				eng.log.Warn("initial sync: index not created", "ns", it.NS, "index", it.Doc.String(), "err", err)
			}
			continue
		case SnapDoc:
			target = eng.coll(it.NS)
		case SnapTombstone:
			target = eng.metaColl(tombstoneColl)
		case SnapDDL:
			target = eng.metaColl(ddlColl)
		default:
			return refused, fmt.Errorf("mongoproxy: load snapshot: unknown item kind %q", it.Kind)
		}
		if key != batchNS || len(batch) >= 1000 {
			if err := flush(); err != nil {
				return refused, fmt.Errorf("mongoproxy: load snapshot: %w", err)
			}
			batchNS, batchColl = key, target
		}
		batch = append(batch, it.Doc)
	}
	if err := flush(); err != nil {
		return refused, fmt.Errorf("mongoproxy: load snapshot: %w", err)
	}
	return refused, nil
}

// snapshotItemScope returns the namespace a snapshot item writes to, and
// why it must not be stored here ("" when it may).
func (p *Proxy) snapshotItemScope(it SnapshotItem) (ns, why string) {
	switch it.Kind {
	case SnapCollection, SnapIndex, SnapDoc:
		ns = it.NS
	case SnapTombstone:
		// Keyed by docKey(ns, _id): the key, not the ns field, is what a
		// later write of the document finds.
		ns, _ = it.Doc.Lookup("ns").StringValueOK()
		if key, _ := it.Doc.Lookup("_id").StringValueOK(); !strings.HasPrefix(key, ns+"\x00") {
			return ns, "tombstone key outside its namespace"
		}
	case SnapDDL:
		rec, err := decodeDDLRecord(it.Doc)
		if err != nil {
			return "", "malformed DDL record"
		}
		ns = rec.ns
		if id, _ := it.Doc.Lookup("_id").StringValueOK(); id != ddlID(rec.ns, rec.key) || rec.op.NS != rec.ns || rec.op.Kind != crdt.DDL {
			return ns, "DDL record key or op outside its namespace"
		}
	default:
		return it.NS, "unknown item kind"
	}
	if strings.IndexByte(ns, 0) >= 0 {
		return ns, "malformed namespace"
	}
	if db, c := splitNS(ns); !p.ns.replicated(db, c) {
		return ns, "not replicated here"
	}
	return ns, ""
}

// createCollection creates ns with listCollections options (an existing
// collection is fine).
func (e *engine) createCollection(ctx context.Context, ns string, opts bson.Raw) error {
	db, c := splitNS(ns)
	cmd := bson.D{{Key: "create", Value: c}}
	if els, err := opts.Elements(); err == nil {
		for _, el := range els {
			cmd = append(cmd, bson.E{Key: el.Key(), Value: el.Value()})
		}
	}
	err := e.client.Database(db).RunCommand(ctx, cmd).Err()
	if err != nil && !isCode(err, 48) { // NamespaceExists
		return fmt.Errorf("create %s: %w", ns, err)
	}
	return nil
}

// createIndex creates one index from its listIndexes specification.
func (e *engine) createIndex(ctx context.Context, ns string, spec bson.Raw) error {
	db, c := splitNS(ns)
	var clean bson.D
	els, err := spec.Elements()
	if err != nil {
		return err
	}
	for _, el := range els {
		switch el.Key() {
		case "ns", "v":
			// Reported by listIndexes; createIndexes does not need them
			// (MongoDB picks the version) and FerretDB refuses them.
			continue
		}
		clean = append(clean, bson.E{Key: el.Key(), Value: el.Value()})
	}
	return e.client.Database(db).RunCommand(ctx, bson.D{{Key: "createIndexes", Value: c}, {Key: "indexes", Value: bson.A{clean}}}).Err()
}

func isCode(err error, codes ...int32) bool {
	var ce mongo.CommandError
	if errors.As(err, &ce) {
		return slices.Contains(codes, ce.Code)
	}
	var se mongo.ServerError
	if errors.As(err, &se) {
		for _, c := range codes {
			if se.HasErrorCode(int(c)) {
				return true
			}
		}
	}
	return false
}

// FinishSync completes an initial sync: the op log's applied watermarks
// become vector (what the loaded snapshot reflects), this node's own ops
// above the vector (a database wiped under an intact op log) are applied
// again from the log, the DDL state is reloaded and the database is marked
// synced. Peers' ops above the vector are then streamed by replication.
func (p *Proxy) FinishSync(ctx context.Context, vector map[string]uint64) error {
	eng, err := p.running()
	if err != nil {
		return err
	}
	eng.purgeCache()
	if f := p.opts.SyncDatabase; f != nil {
		// The snapshot must be durable before the log says it is applied.
		if err := f(); err != nil {
			return fmt.Errorf("mongoproxy: finish sync: %w", err)
		}
	}
	if err := eng.olog.ResetApplied(vector); err != nil {
		return fmt.Errorf("mongoproxy: finish sync: %w", err)
	}
	if err := eng.loadDDL(ctx); err != nil {
		return fmt.Errorf("mongoproxy: finish sync: %w", err)
	}
	self := p.opts.NodeID
	var batch []*crdt.Op
	apply := func() error {
		if len(batch) == 0 {
			return nil
		}
		err := eng.applyOps(ctx, batch, "sync")
		batch = batch[:0]
		return err
	}
	err = eng.olog.Scan(self, vector[self], func(op *crdt.Op) error {
		batch = append(batch, op)
		if len(batch) >= 512 {
			return apply()
		}
		return nil
	})
	if err == nil {
		err = apply()
	}
	if err != nil {
		return fmt.Errorf("mongoproxy: finish sync: re-apply own ops: %w", err)
	}
	if err := p.MarkSynced(ctx); err != nil {
		return err
	}
	eng.purgeCache()
	return nil
}
