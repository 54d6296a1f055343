package replica

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
)

// This file is the database side of an initial sync: the synced marker,
// taking a snapshot of this node's replicated data, and loading one. The
// protocol is package repl's.

// SyncedOrigin returns the origin recorded by the last completed sync in
// this database ("" when the database was never synced, for example
// because it was wiped). A value different from Origin means the op log
// and the database do not belong together (the op log was wiped).
func (r *Replica) SyncedOrigin(ctx context.Context) (string, error) {
	raw, err := r.metaColl(replStateColl).FindOne(ctx, bson.D{{Key: "_id", Value: "state"}}).Raw()
	if errors.Is(err, mongo.ErrNoDocuments) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("replica: read replication state: %w", err)
	}
	o, _ := raw.Lookup("origin").StringValueOK()
	return o, nil
}

// markSynced records in the database that it is a complete replica whose
// op log is this one (origin = Origin).
func (r *Replica) markSynced(ctx context.Context) error {
	doc := bson.D{{Key: "_id", Value: "state"}, {Key: "origin", Value: r.node}, {Key: "at", Value: time.Now().UTC()}}
	if _, err := r.metaColl(replStateColl).ReplaceOne(ctx, bson.D{{Key: "_id", Value: "state"}}, doc, options.Replace().SetUpsert(true)); err != nil {
		return fmt.Errorf("replica: record replication state: %w", err)
	}
	return nil
}

// replicatedNamespaces lists the collections this node replicates, sorted.
func (r *Replica) replicatedNamespaces(ctx context.Context) ([]string, error) {
	dbs, err := r.client.ListDatabaseNames(ctx, bson.D{})
	if err != nil {
		return nil, fmt.Errorf("list databases: %w", err)
	}
	var out []string
	for _, db := range dbs {
		switch db {
		case "admin", "local", "config", MetaDB:
			continue
		}
		names, err := r.client.Database(db).ListCollectionNames(ctx, bson.D{})
		if err != nil {
			return nil, fmt.Errorf("list collections of %s: %w", db, err)
		}
		for _, c := range names {
			if r.replicated(db, c) {
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
func (r *Replica) Snapshot(ctx context.Context, emit func(SnapshotItem) error) error {
	nss, err := r.replicatedNamespaces(ctx)
	if err != nil {
		return fmt.Errorf("replica: snapshot: %w", err)
	}
	for _, ns := range nss {
		if err := r.snapshotSchema(ctx, ns, emit); err != nil {
			return err
		}
	}
	for _, ns := range nss {
		if err := eachDoc(ctx, r.coll(ns), func(raw bson.Raw) error { return emit(SnapshotItem{Kind: SnapDoc, NS: ns, Doc: raw}) }); err != nil {
			return fmt.Errorf("replica: snapshot: %s: %w", ns, err)
		}
	}
	for _, m := range []struct {
		coll string
		kind SnapshotKind
	}{{tombstoneColl, SnapTombstone}, {ddlColl, SnapDDL}} {
		if err := eachDoc(ctx, r.metaColl(m.coll), func(raw bson.Raw) error { return emit(SnapshotItem{Kind: m.kind, Doc: raw}) }); err != nil {
			return fmt.Errorf("replica: snapshot: %s: %w", m.coll, err)
		}
	}
	return nil
}

// snapshotSchema emits a collection's options and its indexes but _id_.
func (r *Replica) snapshotSchema(ctx context.Context, ns string, emit func(SnapshotItem) error) error {
	db, c := splitNS(ns)
	specs, err := r.client.Database(db).ListCollections(ctx, bson.D{{Key: "name", Value: c}})
	if err != nil {
		return fmt.Errorf("replica: snapshot: list %s: %w", ns, err)
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
	idx, err := r.coll(ns).Indexes().List(ctx)
	if err != nil {
		return fmt.Errorf("replica: snapshot: indexes of %s: %w", ns, err)
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
		return fmt.Errorf("replica: snapshot: indexes of %s: %w", ns, err)
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
func (r *Replica) BeginSync(ctx context.Context) error {
	r.cache.purge()
	if _, err := r.metaColl(replStateColl).DeleteOne(ctx, bson.D{{Key: "_id", Value: "state"}}); err != nil {
		return fmt.Errorf("replica: begin sync: clear state: %w", err)
	}
	nss, err := r.replicatedNamespaces(ctx)
	if err != nil {
		return fmt.Errorf("replica: begin sync: %w", err)
	}
	for _, ns := range nss {
		if err := r.coll(ns).Drop(ctx); err != nil {
			return fmt.Errorf("replica: begin sync: drop %s: %w", ns, err)
		}
	}
	for _, c := range []string{tombstoneColl, ddlColl} {
		if err := r.metaColl(c).Drop(ctx); err != nil {
			return fmt.Errorf("replica: begin sync: drop %s.%s: %w", MetaDB, c, err)
		}
	}
	r.drops.reset(map[string]crdt.Timestamp{})
	return nil
}

// loadBatch gathers consecutive snapshot items of one target collection
// into one unordered insertMany. Items already present (a snapshot read
// during writes can meet a document twice; both copies include every op
// up to the vector) are left as they are.
type loadBatch struct {
	key  string // item kind plus namespace
	coll *mongo.Collection
	docs []any
}

func (b *loadBatch) flush(ctx context.Context) error {
	if len(b.docs) == 0 {
		return nil
	}
	_, err := b.coll.InsertMany(ctx, b.docs, options.InsertMany().SetOrdered(false))
	b.docs = b.docs[:0]
	if err == nil {
		return nil
	}
	var bwe mongo.BulkWriteException
	if errors.As(err, &bwe) && bwe.WriteConcernError == nil {
		for _, we := range bwe.WriteErrors {
			if we.Code != int(CodeDuplicateKey) && !strings.Contains(we.Message, "UNIQUE constraint failed") {
				return fmt.Errorf("store %s: %w", b.key, err)
			}
		}
		return nil
	}
	return fmt.Errorf("store %s: %w", b.key, err)
}

// LoadSnapshot stores snapshot items (after BeginSync). Items may come in
// any number of calls, in Snapshot's order. A document or record already
// present is left as it is.
//
// Only what this node replicates is stored: the source decides with its own
// configuration, which may differ, and a source holding a node certificate
// may send anything. An item of a namespace this node does not replicate
// (mongo.replicate minus mongo.local_only, never admin, local, config,
// edgenode_meta or system.* collections), or a tombstone or DDL record
// whose key does not match the namespace it claims, is skipped and
// returned in refused.
func (r *Replica) LoadSnapshot(ctx context.Context, items []SnapshotItem) (refused []RefusedItem, err error) {
	b := &loadBatch{}
	for _, it := range items {
		if ns, why := r.snapshotItemScope(&it); why != "" {
			refused = append(refused, RefusedItem{Kind: it.Kind, NS: ns, Why: why})
			continue
		}
		var target *mongo.Collection
		switch it.Kind {
		case SnapCollection, SnapIndex:
			if err := b.flush(ctx); err != nil {
				return refused, err
			}
			if err := r.loadSchema(ctx, it); err != nil {
				return refused, err
			}
			continue
		case SnapDoc:
			target = r.coll(it.NS)
		case SnapTombstone:
			target = r.metaColl(tombstoneColl)
		case SnapDDL:
			target = r.metaColl(ddlColl)
		default:
			return refused, fmt.Errorf("replica: load snapshot: unknown item kind %q", it.Kind)
		}
		if key := string(it.Kind) + it.NS; key != b.key || len(b.docs) >= 1000 {
			if err := b.flush(ctx); err != nil {
				return refused, fmt.Errorf("replica: load snapshot: %w", err)
			}
			b.key, b.coll = key, target
		}
		b.docs = append(b.docs, it.Doc)
	}
	if err := b.flush(ctx); err != nil {
		return refused, fmt.Errorf("replica: load snapshot: %w", err)
	}
	return refused, nil
}

// loadSchema creates a snapshot's collection or index.
func (r *Replica) loadSchema(ctx context.Context, it SnapshotItem) error {
	if it.Kind == SnapCollection {
		if err := r.createCollection(ctx, it.NS, it.Doc); err != nil {
			return fmt.Errorf("replica: load snapshot: %w", err)
		}
		return nil
	}
	if err := r.createIndex(ctx, it.NS, it.Doc); err != nil {
		// The database may not support an index its peer has (or a unique
		// index may already be violated by converging data): the documents
		// matter more.
		r.log.Warn("initial sync: index not created", "ns", it.NS, "index", it.Doc.String(), "err", err)
	}
	return nil
}

// snapshotItemScope returns the namespace a snapshot item writes to, and
// why it must not be stored here ("" when it may).
// A tombstone or DDL record keyed in an older form is rewritten in it
// under its current key.
func (r *Replica) snapshotItemScope(it *SnapshotItem) (ns, why string) {
	switch it.Kind {
	case SnapCollection, SnapIndex, SnapDoc:
		ns = it.NS
	case SnapTombstone:
		// Keyed by docKey(ns, id): the key, not the ns field, is what a
		// later write of the document finds. A peer of an older version
		// sends keys of format 1, stored here in the current form.
		ns, _ = it.Doc.Lookup("ns").StringValueOK()
		doc, _, err := rekey(tombstoneColl, it.Doc)
		if err != nil {
			return ns, "tombstone key outside its namespace"
		}
		if doc != nil {
			it.Doc = doc
		}
	case SnapDDL:
		rec, err := decodeDDLRecord(it.Doc)
		if err != nil {
			return "", "malformed DDL record"
		}
		ns = rec.ns
		doc, _, err := rekey(ddlColl, it.Doc)
		if err != nil || rec.op.NS != rec.ns || rec.op.Kind != crdt.DDL {
			return ns, "DDL record key or op outside its namespace"
		}
		if doc != nil {
			it.Doc = doc
		}
	default:
		return it.NS, "unknown item kind"
	}
	if strings.IndexByte(ns, 0) >= 0 {
		return ns, "malformed namespace"
	}
	if db, c := splitNS(ns); !r.replicated(db, c) {
		return ns, "not replicated here"
	}
	return ns, ""
}

// createCollection creates ns with listCollections options (an existing
// collection is fine).
func (r *Replica) createCollection(ctx context.Context, ns string, opts bson.Raw) error {
	db, c := splitNS(ns)
	cmd := bson.D{{Key: "create", Value: c}}
	if els, err := opts.Elements(); err == nil {
		for _, el := range els {
			cmd = append(cmd, bson.E{Key: el.Key(), Value: el.Value()})
		}
	}
	err := r.client.Database(db).RunCommand(ctx, cmd).Err()
	if err != nil && !IsCode(err, 48) { // NamespaceExists
		return fmt.Errorf("create %s: %w", ns, err)
	}
	return nil
}

// createIndex creates one index from its listIndexes specification.
func (r *Replica) createIndex(ctx context.Context, ns string, spec bson.Raw) error {
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
	return r.client.Database(db).RunCommand(ctx, bson.D{{Key: "createIndexes", Value: c}, {Key: "indexes", Value: bson.A{clean}}}).Err()
}

// FinishSync completes an initial sync: the op log's applied watermarks
// become vector (what the loaded snapshot reflects), this node's own ops
// above the vector (a database wiped under an intact op log) are applied
// again from the log, the DDL state is reloaded and the database is marked
// synced. Peers' ops above the vector are then streamed by replication.
func (r *Replica) FinishSync(ctx context.Context, vector map[string]uint64) error {
	r.cache.purge()
	if f := r.caps.Sync; f != nil {
		// The snapshot must be durable before the log says it is applied.
		if err := f(); err != nil {
			return fmt.Errorf("replica: finish sync: %w", err)
		}
	}
	if err := r.olog.ResetApplied(vector); err != nil {
		return fmt.Errorf("replica: finish sync: %w", err)
	}
	if err := r.loadDDL(ctx); err != nil {
		return fmt.Errorf("replica: finish sync: %w", err)
	}
	if err := r.reapplyOwn(ctx, vector[r.node]); err != nil {
		return fmt.Errorf("replica: finish sync: re-apply own ops: %w", err)
	}
	if err := r.markSynced(ctx); err != nil {
		return err
	}
	r.cache.purge()
	return nil
}

// reapplyOwn applies this node's ops after seq from the log again.
func (r *Replica) reapplyOwn(ctx context.Context, after uint64) error {
	var batch []*crdt.Op
	apply := func() error {
		if len(batch) == 0 {
			return nil
		}
		err := r.applyOps(ctx, batch, "sync")
		batch = batch[:0]
		return err
	}
	err := r.olog.Scan(r.node, after, func(op *crdt.Op) error {
		batch = append(batch, op)
		if len(batch) >= 512 {
			return apply()
		}
		return nil
	})
	if err == nil {
		err = apply()
	}
	return err
}
