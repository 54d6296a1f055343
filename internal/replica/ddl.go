package replica

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"go.mongodb.org/mongo-driver/v2/x/bsonx/bsoncore"

	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
)

// DDL replication (see the package documentation, "DDL").
//
// Every DDL op has a namespace and a key: "collection" for create and drop,
// "index:<name>" for createIndexes and dropIndexes. The newest op per
// (namespace, key) wins, by timestamp, whatever the order of arrival: the
// winner is recorded in edgenode_meta.ddl and an older op arriving later is
// ignored. A drop also deletes, with the drop's timestamp as a tombstone,
// every document of the collection: a document written after the drop (by
// clock) survives with only what was written after it, exactly like a
// per-document delete, so data converges even when drops race with writes.
// The newest drop of each namespace is kept in memory (drops) and folded
// into every document read from that namespace before an op is applied.
//
// DDL holds its namespace exclusively, so no document write of the
// namespace runs meanwhile.

// ddlRecord is the winning DDL op of one (namespace, key).
type ddlRecord struct {
	ns, key string
	op      *crdt.Op
}

// ddlDropKey is the record holding a namespace's newest drop (the collection
// key may meanwhile be won by a newer create).
const ddlDropKey = "drop"

// drops is the newest drop of each namespace. Its mutex is a leaf. It
// changes under the namespace's exclusive turn (or while nothing is
// applied: sync, start), and is read under its shared one.
type drops struct {
	check *rankChecker
	mu    sync.Mutex
	m     map[string]crdt.Timestamp
}

func (d *drops) get(ns string) crdt.Timestamp {
	d.check.acquire(rankLeaf)
	defer d.check.release(rankLeaf)
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.m[ns]
}

func (d *drops) set(ns string, ts crdt.Timestamp) {
	d.check.acquire(rankLeaf)
	defer d.check.release(rankLeaf)
	d.mu.Lock()
	defer d.mu.Unlock()
	d.m[ns] = ts
}

func (d *drops) reset(m map[string]crdt.Timestamp) {
	d.check.acquire(rankLeaf)
	defer d.check.release(rankLeaf)
	d.mu.Lock()
	defer d.mu.Unlock()
	d.m = m
}

// loadDDL reads the newest drop of every namespace from the records.
func (r *Replica) loadDDL(ctx context.Context) error {
	m := map[string]crdt.Timestamp{}
	cur, err := r.metaColl(ddlColl).Find(ctx, bson.D{{Key: "key", Value: ddlDropKey}})
	if err != nil {
		return fmt.Errorf("read DDL records: %w", err)
	}
	defer cur.Close(ctx)
	for cur.Next(ctx) {
		rec, err := decodeDDLRecord(cur.Current)
		if err != nil {
			return err
		}
		m[rec.ns] = rec.op.TS
	}
	if err := cur.Err(); err != nil {
		return fmt.Errorf("read DDL records: %w", err)
	}
	r.drops.reset(m)
	return nil
}

func decodeDDLRecord(raw bson.Raw) (*ddlRecord, error) {
	ns, _ := raw.Lookup("ns").StringValueOK()
	key, _ := raw.Lookup("key").StringValueOK()
	v, err := raw.LookupErr("op")
	if err != nil || v.Type != bson.TypeBinary {
		return nil, fmt.Errorf("DDL record %s/%s has no op", ns, key)
	}
	_, data := v.Binary()
	op := &crdt.Op{}
	if err := op.UnmarshalBSON(data); err != nil {
		return nil, fmt.Errorf("DDL record %s/%s: %w", ns, key, err)
	}
	return &ddlRecord{ns: ns, key: key, op: op}, nil
}

func (r *Replica) loadRecord(ctx context.Context, ns, key string) (*ddlRecord, error) {
	raw, err := r.metaColl(ddlColl).FindOne(ctx, bson.D{{Key: "_id", Value: ddlID(ns, key)}}).Raw()
	if errors.Is(err, mongo.ErrNoDocuments) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read DDL record %s/%s: %w", ns, key, err)
	}
	return decodeDDLRecord(raw)
}

func (r *Replica) saveRecord(ctx context.Context, ns, key string, op *crdt.Op) error {
	enc, err := op.MarshalBSON()
	if err != nil {
		return err
	}
	doc := bson.D{{Key: "_id", Value: ddlID(ns, key)}, {Key: "ns", Value: ns}, {Key: "key", Value: key},
		{Key: "ts", Value: op.TS.String()}, {Key: "op", Value: bson.Binary{Data: enc}}}
	if _, err := r.metaColl(ddlColl).ReplaceOne(ctx, bson.D{{Key: "_id", Value: doc[0].Value}}, doc, options.Replace().SetUpsert(true)); err != nil {
		return fmt.Errorf("write DDL record %s/%s: %w", ns, key, err)
	}
	return nil
}

// listRecords returns the records of ns.
func (r *Replica) listRecords(ctx context.Context, ns string) ([]*ddlRecord, error) {
	cur, err := r.metaColl(ddlColl).Find(ctx, bson.D{{Key: "ns", Value: ns}})
	if err != nil {
		return nil, fmt.Errorf("read DDL records of %s: %w", ns, err)
	}
	defer cur.Close(ctx)
	var out []*ddlRecord
	for cur.Next(ctx) {
		rec, err := decodeDDLRecord(cur.Current)
		if err != nil {
			return nil, err
		}
		out = append(out, rec)
	}
	return out, cur.Err()
}

// withDrop folds the newest drop of the document's namespace into its
// stored state: whatever is older than the drop is gone.
func (r *Replica) withDrop(ns string, id bson.RawValue, st crdt.State) crdt.State {
	d := r.drops.get(ns)
	if d.IsZero() {
		return st
	}
	if st.Meta != nil && st.Meta.Tombstone().Compare(d) >= 0 {
		return st
	}
	next, changed, err := crdt.Apply(st, &crdt.Op{Origin: d.Node, TS: d, NS: ns, ID: id, Kind: crdt.Delete})
	if err != nil || !changed {
		return st
	}
	return next
}

// applyDDL executes a logged DDL op, local or remote, idempotently. The
// caller holds the namespace exclusively.
func (r *Replica) applyDDL(ctx context.Context, op *crdt.Op) error {
	cmd, err := op.DDLCommand()
	if err != nil {
		return &applyError{err: err}
	}
	if cmd == crdt.DDLDrop {
		return r.ddlDrop(ctx, op)
	}
	key := op.ID.StringValue()
	rec, err := r.loadRecord(ctx, op.NS, key)
	if err != nil {
		return err
	}
	if rec != nil && rec.op.TS.Compare(op.TS) >= 0 {
		return nil // an older op (or this one again): the newer one stands
	}
	if op.TS.Compare(r.drops.get(op.NS)) <= 0 {
		return nil // the collection was dropped after it: gone with it
	}
	db, coll := splitNS(op.NS)
	switch cmd {
	case crdt.DDLCreate:
		err = r.createCollection(ctx, op.NS, withoutField(op.Doc, crdt.DDLCreate))
	case crdt.DDLCreateIndexes:
		err = r.createIndex(ctx, op.NS, indexSpec(op))
	case crdt.DDLDropIndexes:
		err = r.client.Database(db).RunCommand(ctx, bson.D{{Key: "dropIndexes", Value: coll}, {Key: "index", Value: op.Doc.Lookup("index").StringValue()}}).Err()
		if IsCode(err, 26, 27) { // NamespaceNotFound, IndexNotFound: already so
			err = nil
		}
	}
	if err != nil {
		if mongo.IsNetworkError(err) || mongo.IsTimeout(err) || ctx.Err() != nil {
			return err
		}
		// The database refuses it for good (an index this database cannot
		// build, a unique index the converged data violates): the newer
		// op still wins the record, and the refusal is parked and counted.
		r.park(ctx, op, &applyError{err: err})
	}
	return r.saveRecord(ctx, op.NS, key, op)
}

// withoutField returns doc without its top-level field key.
func withoutField(doc bson.Raw, key string) bson.Raw {
	elems, err := doc.Elements()
	if err != nil {
		return doc
	}
	idx, b := bsoncore.AppendDocumentStart(nil)
	for _, e := range elems {
		if e.Key() != key {
			b = append(b, e...)
		}
	}
	b, _ = bsoncore.AppendDocumentEnd(b, idx)
	return b
}

// ddlDrop applies a drop: the namespace's newest drop moves forward, the
// collection key may change hands, every document older than the newest
// drop goes, indexes created before it go, and the collection itself is
// dropped when nothing newer than the drop remains in it.
func (r *Replica) ddlDrop(ctx context.Context, op *crdt.Op) error {
	ns := op.NS
	dts := r.drops.get(ns)
	if op.TS.Compare(dts) > 0 {
		if err := r.saveRecord(ctx, ns, ddlDropKey, op); err != nil {
			return err
		}
		r.drops.set(ns, op.TS)
		dts = op.TS
	}
	rec, err := r.loadRecord(ctx, ns, crdt.DDLKey(""))
	if err != nil {
		return err
	}
	if rec == nil || rec.op.TS.Compare(op.TS) < 0 {
		if err := r.saveRecord(ctx, ns, crdt.DDLKey(""), op); err != nil {
			return err
		}
		rec = &ddlRecord{ns: ns, key: crdt.DDLKey(""), op: op}
	}
	r.cache.purge()
	survivors, err := r.dropDocs(ctx, ns, dts)
	if err != nil {
		return err
	}
	keep, err := r.dropIndexesBefore(ctx, ns, dts)
	if err != nil {
		return err
	}
	if c, _ := rec.op.DDLCommand(); survivors == 0 && c == crdt.DDLDrop {
		if err := r.coll(ns).Drop(ctx); err != nil {
			return fmt.Errorf("drop %s: %w", ns, err)
		}
		for _, k := range keep {
			if err := r.createIndex(ctx, ns, indexSpec(k.op)); err != nil {
				r.log.Warn("re-creating an index after a drop", "ns", ns, "err", err)
			}
		}
	}
	r.cache.purge()
	return nil
}

// dropIndexesBefore drops the indexes of ns created before the drop at dts
// (and their records), and returns the records of those created after it.
func (r *Replica) dropIndexesBefore(ctx context.Context, ns string, dts crdt.Timestamp) ([]*ddlRecord, error) {
	recs, err := r.listRecords(ctx, ns)
	if err != nil {
		return nil, err
	}
	db, coll := splitNS(ns)
	var keep []*ddlRecord
	for _, rec := range recs {
		if !strings.HasPrefix(rec.key, "index:") {
			continue
		}
		if rec.op.TS.Compare(dts) > 0 {
			if c, _ := rec.op.DDLCommand(); c == crdt.DDLCreateIndexes {
				keep = append(keep, rec)
			}
			continue
		}
		name := strings.TrimPrefix(rec.key, "index:")
		if err := r.client.Database(db).RunCommand(ctx, bson.D{{Key: "dropIndexes", Value: coll}, {Key: "index", Value: name}}).Err(); err != nil && !IsCode(err, 26, 27) {
			r.log.Warn("dropping an index of a dropped collection", "ns", ns, "index", name, "err", err)
		}
		if _, err := r.metaColl(ddlColl).DeleteOne(ctx, bson.D{{Key: "_id", Value: ddlID(ns, rec.key)}}); err != nil {
			return nil, fmt.Errorf("delete DDL record: %w", err)
		}
	}
	return keep, nil
}

// dropDocs removes every document of ns that the drop at dts deletes and
// returns how many remain (documents written after the drop). Documents
// that survive are rewritten with the drop folded into their metadata.
// The caller holds ns exclusively; each document is written under its
// lease.
func (r *Replica) dropDocs(ctx context.Context, ns string, dts crdt.Timestamp) (int, error) {
	var survivors, ids []bson.RawValue
	n := 0
	err := eachDoc(ctx, r.coll(ns), func(raw bson.Raw) error {
		n++
		ds := &docState{ns: ns, id: raw.Lookup("_id")}
		ids = append(ids, ds.id)
		if err := ds.setStored(raw); err != nil {
			return err
		}
		if st := r.withDrop(ns, ds.id, ds.base); st.Doc != nil {
			survivors = append(survivors, ds.id)
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("drop %s: read documents: %w", ns, err)
	}
	if n == 0 {
		return 0, nil
	}
	if len(survivors) == 0 {
		// Nothing newer than the drop: every document goes at once.
		if _, err := r.coll(ns).DeleteMany(ctx, bson.D{}); err != nil {
			return 0, fmt.Errorf("drop %s: %w", ns, err)
		}
		return 0, nil
	}
	// Some documents were written after the drop: each one goes through the
	// ordinary apply, which folds the drop in (withDrop) and stores what
	// is left; the documents older than it get tombstones like any delete.
	// (The ids were collected first: a cursor does not survive the writes.)
	for _, id := range ids {
		if err := r.dropDoc(ctx, ns, id, dts); err != nil {
			return 0, fmt.Errorf("drop %s: %w", ns, err)
		}
	}
	return len(survivors), nil
}

func (r *Replica) dropDoc(ctx context.Context, ns string, id bson.RawValue, dts crdt.Timestamp) error {
	doc := r.docs.acquire(true, docKey(ns, id))
	defer doc.release()
	ds, _, err := r.load(ctx, ns, id, nil)
	if err != nil {
		return err
	}
	ds.ops = []*crdt.Op{{Origin: dts.Node, TS: dts, NS: ns, ID: ds.id, Kind: crdt.Delete}}
	return r.storeOps(ctx, ds)
}

// logDDL logs ops this node made (a DDL command the database accepted, or
// a drop about to be executed).
func (r *Replica) logDDL(ctx context.Context, ops []*crdt.Op) error {
	if err := r.olog.AppendLocal(ctx, ops); err != nil {
		return fmt.Errorf("append DDL ops: %w", err)
	}
	for _, op := range ops {
		r.met.opsCaptured.WithLabelValues(op.Kind.String()).Inc()
	}
	return nil
}

// newDDL builds a local DDL op for ns (timestamp from the clock).
func (r *Replica) newDDL(ns, key string, cmd bson.D) (*crdt.Op, error) {
	raw, err := bson.Marshal(cmd)
	if err != nil {
		return nil, err
	}
	op := &crdt.Op{Origin: r.node, TS: r.clock.Now(), NS: ns, ID: bsonString(key), Kind: crdt.DDL, Doc: raw}
	if _, err := op.DDLCommand(); err != nil {
		return nil, err
	}
	return op, nil
}

func bsonString(s string) bson.RawValue {
	_, v, _ := bson.MarshalValue(s)
	return bson.RawValue{Type: bson.TypeString, Value: v}
}

// Drop drops a replicated collection: logged first, then executed like a
// peer's drop, so that documents written concurrently on other nodes after
// it survive everywhere alike. It returns the number of indexes the
// collection had (for the reply).
func (r *Replica) Drop(ctx context.Context, ns string) (int, error) {
	turn := r.nss.acquire(true, ns)
	defer turn.release()
	unhold := r.hold()
	defer unhold()
	nIdx := 0
	if specs, err := r.coll(ns).Indexes().ListSpecifications(ctx); err == nil {
		nIdx = len(specs)
	}
	_, coll := splitNS(ns)
	op, err := r.newDDL(ns, crdt.DDLKey(""), bson.D{{Key: crdt.DDLDrop, Value: coll}})
	if err != nil {
		return 0, err
	}
	if err := r.logDDL(ctx, []*crdt.Op{op}); err != nil {
		return 0, err
	}
	if err := r.applyDDL(ctx, op); err != nil {
		return 0, err
	}
	if err := r.olog.MarkApplied(op); err != nil {
		r.log.Warn("marking ops applied", "err", err)
	}
	r.met.opsApplied.WithLabelValues("local").Inc()
	r.notify()
	return nIdx, nil
}

// BeginDDL takes ns exclusively for a DDL command the front-end forwards
// (see Local).
func (r *Replica) BeginDDL(ns string) *DDLTurn {
	return &DDLTurn{r: r, ns: ns, turn: r.nss.acquire(true, ns)}
}

// commitDDL logs DDL the database has just accepted from a client (create,
// createIndexes, dropIndexes), records it as the newest for its keys and
// tells replication. The caller holds ns exclusively (DDLTurn).
func (r *Replica) commitDDL(ctx context.Context, ns string, changes []DDLChange) {
	if len(changes) == 0 {
		return
	}
	unhold := r.hold()
	defer unhold()
	var ops []*crdt.Op
	for _, c := range changes {
		op, err := r.newDDL(ns, c.Key, c.Cmd)
		if err != nil {
			r.log.Warn("DDL not replicated: cannot build its op", "ns", ns, "err", err)
			continue
		}
		ops = append(ops, op)
	}
	if len(ops) == 0 {
		return
	}
	if err := r.logDDL(ctx, ops); err != nil {
		r.log.Error("DDL applied locally but not logged: it will not replicate (run it again)", "ns", ns, "err", err)
		return
	}
	for _, op := range ops {
		if err := r.saveRecord(ctx, ns, op.ID.StringValue(), op); err != nil {
			r.log.Warn("recording DDL", "ns", ns, "err", err)
		}
	}
	if err := r.olog.MarkApplied(ops...); err != nil {
		r.log.Warn("marking ops applied", "err", err)
	}
	r.met.opsApplied.WithLabelValues("local").Add(float64(len(ops)))
	r.notify()
}

// indexSpec is the index specification of a (validated) createIndexes op.
func indexSpec(op *crdt.Op) bson.Raw {
	vals, _ := bson.Raw(op.Doc.Lookup("indexes").Value).Values()
	return bson.Raw(vals[0].Value)
}
