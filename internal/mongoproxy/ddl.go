package mongoproxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"slices"
	"strings"
	"sync"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

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
// The newest drop of each namespace is kept in memory (nsDrops) and folded
// into every document read from that namespace before an op is applied.

// ddlRecord is the winning DDL op of one (namespace, key).
type ddlRecord struct {
	ns, key string
	op      *crdt.Op
}

func ddlID(ns, key string) string { return ns + "\x00" + key }

// ddlDropKey is the record holding a namespace's newest drop (the collection
// key may meanwhile be won by a newer create).
const ddlDropKey = "drop"

// nsLocks serialize DDL on a namespace against document writes to it:
// document writes hold their namespace's stripe shared, DDL exclusively.
type nsLocks struct {
	seed maphash.Seed
	mu   [64]sync.RWMutex
}

func newNSLocks() *nsLocks { return &nsLocks{seed: maphash.MakeSeed()} }

func (l *nsLocks) idx(ns string) int { return int(maphash.String(l.seed, ns) % uint64(len(l.mu))) }

func (l *nsLocks) rlock(ns string) func() {
	m := &l.mu[l.idx(ns)]
	m.RLock()
	return m.RUnlock
}

// lock takes the stripes of every namespace exclusively, in index order.
func (l *nsLocks) lock(nss ...string) func() {
	var idx []int
	for _, ns := range nss {
		idx = append(idx, l.idx(ns))
	}
	slices.Sort(idx)
	idx = slices.Compact(idx)
	for _, i := range idx {
		l.mu[i].Lock()
	}
	return func() {
		for j := len(idx) - 1; j >= 0; j-- {
			l.mu[idx[j]].Unlock()
		}
	}
}

// dropTS returns the newest drop of ns (zero if none).
func (e *engine) dropTS(ns string) crdt.Timestamp {
	e.ddlMu.Lock()
	defer e.ddlMu.Unlock()
	return e.nsDrops[ns]
}

func (e *engine) resetDDL() {
	e.ddlMu.Lock()
	e.nsDrops = map[string]crdt.Timestamp{}
	e.ddlMu.Unlock()
}

// loadDDL reads the newest drop of every namespace from the records.
func (e *engine) loadDDL(ctx context.Context) error {
	drops := map[string]crdt.Timestamp{}
	cur, err := e.metaColl(ddlColl).Find(ctx, bson.D{{Key: "key", Value: ddlDropKey}})
	if err != nil {
		return fmt.Errorf("read DDL records: %w", err)
	}
	defer cur.Close(ctx)
	for cur.Next(ctx) {
		rec, err := decodeDDLRecord(cur.Current)
		if err != nil {
			return err
		}
		drops[rec.ns] = rec.op.TS
	}
	if err := cur.Err(); err != nil {
		return fmt.Errorf("read DDL records: %w", err)
	}
	e.ddlMu.Lock()
	e.nsDrops = drops
	e.ddlMu.Unlock()
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

func (e *engine) loadRecord(ctx context.Context, ns, key string) (*ddlRecord, error) {
	raw, err := e.metaColl(ddlColl).FindOne(ctx, bson.D{{Key: "_id", Value: ddlID(ns, key)}}).Raw()
	if errors.Is(err, mongo.ErrNoDocuments) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read DDL record %s/%s: %w", ns, key, err)
	}
	return decodeDDLRecord(raw)
}

func (e *engine) saveRecord(ctx context.Context, ns, key string, op *crdt.Op) error {
	enc, err := op.MarshalBSON()
	if err != nil {
		return err
	}
	doc := bson.D{{Key: "_id", Value: ddlID(ns, key)}, {Key: "ns", Value: ns}, {Key: "key", Value: key},
		{Key: "ts", Value: op.TS.String()}, {Key: "op", Value: bson.Binary{Data: enc}}}
	if _, err := e.metaColl(ddlColl).ReplaceOne(ctx, bson.D{{Key: "_id", Value: doc[0].Value}}, doc, options.Replace().SetUpsert(true)); err != nil {
		return fmt.Errorf("write DDL record %s/%s: %w", ns, key, err)
	}
	return nil
}

// listRecords returns the records of ns.
func (e *engine) listRecords(ctx context.Context, ns string) ([]*ddlRecord, error) {
	cur, err := e.metaColl(ddlColl).Find(ctx, bson.D{{Key: "ns", Value: ns}})
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
func (e *engine) withDrop(ns string, id bson.RawValue, st crdt.State) crdt.State {
	d := e.dropTS(ns)
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
// caller holds the namespace exclusively (nsLocks.lock).
func (e *engine) applyDDL(ctx context.Context, op *crdt.Op) error {
	cmd, err := op.DDLCommand()
	if err != nil {
		return &applyError{err: err}
	}
	if cmd == crdt.DDLDrop {
		return e.ddlDrop(ctx, op)
	}
	key := op.ID.StringValue()
	rec, err := e.loadRecord(ctx, op.NS, key)
	if err != nil {
		return err
	}
	if rec != nil && rec.op.TS.Compare(op.TS) >= 0 {
		return nil // an older op (or this one again): the newer one stands
	}
	if op.TS.Compare(e.dropTS(op.NS)) <= 0 {
		return nil // the collection was dropped after it: gone with it
	}
	db, coll := splitNS(op.NS)
	switch cmd {
	case crdt.DDLCreate:
		opts, _ := removeTopLevel(op.Doc, crdt.DDLCreate)
		err = e.createCollection(ctx, op.NS, opts)
	case crdt.DDLCreateIndexes:
		spec := indexSpec(op)
		err = e.createIndex(ctx, op.NS, spec)
	case crdt.DDLDropIndexes:
		err = e.client.Database(db).RunCommand(ctx, bson.D{{Key: "dropIndexes", Value: coll}, {Key: "index", Value: op.Doc.Lookup("index").StringValue()}}).Err()
		if isCode(err, 26, 27) { // NamespaceNotFound, IndexNotFound: already so
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
		e.park(ctx, op, &applyError{err: err})
	}
	return e.saveRecord(ctx, op.NS, key, op)
}

// ddlDrop applies a drop: the namespace's newest drop moves forward, the
// collection key may change hands, every document older than the newest
// drop goes, indexes created before it go, and the collection itself is
// dropped when nothing newer than the drop remains in it.
func (e *engine) ddlDrop(ctx context.Context, op *crdt.Op) error {
	ns := op.NS
	dts := e.dropTS(ns)
	if op.TS.Compare(dts) > 0 {
		if err := e.saveRecord(ctx, ns, ddlDropKey, op); err != nil {
			return err
		}
		e.ddlMu.Lock()
		e.nsDrops[ns] = op.TS
		e.ddlMu.Unlock()
		dts = op.TS
	}
	rec, err := e.loadRecord(ctx, ns, crdt.DDLKey(""))
	if err != nil {
		return err
	}
	if rec == nil || rec.op.TS.Compare(op.TS) < 0 {
		if err := e.saveRecord(ctx, ns, crdt.DDLKey(""), op); err != nil {
			return err
		}
		rec = &ddlRecord{ns: ns, key: crdt.DDLKey(""), op: op}
	}
	e.purgeCache()
	survivors, err := e.dropDocs(ctx, ns, dts)
	if err != nil {
		return err
	}
	recs, err := e.listRecords(ctx, ns)
	if err != nil {
		return err
	}
	db, coll := splitNS(ns)
	var keep []*ddlRecord // indexes created after the drop
	for _, r := range recs {
		if !strings.HasPrefix(r.key, "index:") {
			continue
		}
		if r.op.TS.Compare(dts) > 0 {
			if c, _ := r.op.DDLCommand(); c == crdt.DDLCreateIndexes {
				keep = append(keep, r)
			}
			continue
		}
		name := strings.TrimPrefix(r.key, "index:")
		if err := e.client.Database(db).RunCommand(ctx, bson.D{{Key: "dropIndexes", Value: coll}, {Key: "index", Value: name}}).Err(); err != nil && !isCode(err, 26, 27) {
			e.log.Warn("dropping an index of a dropped collection", "ns", ns, "index", name, "err", err)
		}
		if _, err := e.metaColl(ddlColl).DeleteOne(ctx, bson.D{{Key: "_id", Value: ddlID(ns, r.key)}}); err != nil {
			return fmt.Errorf("delete DDL record: %w", err)
		}
	}
	if c, _ := rec.op.DDLCommand(); survivors == 0 && c == crdt.DDLDrop {
		if err := e.coll(ns).Drop(ctx); err != nil {
			return fmt.Errorf("drop %s: %w", ns, err)
		}
		for _, r := range keep {
			spec := indexSpec(r.op)
			if err := e.createIndex(ctx, ns, spec); err != nil {
				e.log.Warn("re-creating an index after a drop", "ns", ns, "err", err)
			}
		}
	}
	e.purgeCache()
	return nil
}

// dropDocs removes every document of ns that the drop at dts deletes and
// returns how many remain (documents written after the drop). Documents
// that survive are rewritten with the drop folded into their metadata.
func (e *engine) dropDocs(ctx context.Context, ns string, dts crdt.Timestamp) (int, error) {
	var survivors, ids []bson.RawValue
	n := 0
	err := eachDoc(ctx, e.coll(ns), func(raw bson.Raw) error {
		n++
		ds := &docState{ns: ns, id: raw.Lookup("_id")}
		ids = append(ids, ds.id)
		if err := ds.setStored(raw); err != nil {
			return err
		}
		if st := e.withDrop(ns, ds.id, ds.base); st.Doc != nil {
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
		if _, err := e.coll(ns).DeleteMany(ctx, bson.D{}); err != nil {
			return 0, fmt.Errorf("drop %s: %w", ns, err)
		}
		return 0, nil
	}
	// Some documents were written after the drop: each one goes through the
	// ordinary apply, which folds the drop in (withDrop) and stores what
	// is left; the documents older than it get tombstones like any delete.
	// (The ids were collected first: a cursor does not survive the writes.)
	for _, id := range ids {
		key := docKey(ns, id)
		unlock := e.locks.lock(key)
		ds, _, err := e.load(ctx, ns, id, nil)
		if err == nil {
			ds.ops = []*crdt.Op{{Origin: dts.Node, TS: dts, NS: ns, ID: ds.id, Kind: crdt.Delete}}
			err = e.storeOps(ctx, ds)
		}
		unlock()
		if err != nil {
			return 0, fmt.Errorf("drop %s: %w", ns, err)
		}
	}
	return len(survivors), nil
}

// localDDL logs ops this node made (a DDL command the database accepted, or
// a drop about to be executed) and hands them to replication.
func (e *engine) logDDL(ctx context.Context, ops []*crdt.Op) error {
	if err := e.olog.AppendLocal(ctx, ops); err != nil {
		return fmt.Errorf("append DDL ops: %w", err)
	}
	for _, op := range ops {
		e.met.opsCaptured.WithLabelValues(op.Kind.String()).Inc()
	}
	return nil
}

// newDDL builds a local DDL op for ns (timestamp from the clock).
func (e *engine) newDDL(ns, key string, cmd bson.D) (*crdt.Op, error) {
	raw, err := bson.Marshal(cmd)
	if err != nil {
		return nil, err
	}
	op := &crdt.Op{Origin: e.node, TS: e.clock.Now(), NS: ns, ID: bsonString(key), Kind: crdt.DDL, Doc: raw}
	if _, err := op.DDLCommand(); err != nil {
		return nil, err
	}
	return op, nil
}

func bsonString(s string) bson.RawValue {
	_, v, _ := bson.MarshalValue(s)
	return bson.RawValue{Type: bson.TypeString, Value: v}
}

// localDrop drops a replicated collection through the engine: logged first,
// then executed like a peer's drop, so that documents written concurrently
// on other nodes after it survive everywhere alike. It returns the number of
// indexes the collection had (for the reply).
func (e *engine) localDrop(ctx context.Context, ns string) (int, error) {
	release := e.hold()
	defer release()
	unlock := e.nsl.lock(ns)
	defer unlock()
	nIdx := 0
	if specs, err := e.coll(ns).Indexes().ListSpecifications(ctx); err == nil {
		nIdx = len(specs)
	}
	_, coll := splitNS(ns)
	op, err := e.newDDL(ns, crdt.DDLKey(""), bson.D{{Key: crdt.DDLDrop, Value: coll}})
	if err != nil {
		return 0, err
	}
	if err := e.logDDL(ctx, []*crdt.Op{op}); err != nil {
		return 0, err
	}
	if err := e.applyDDL(ctx, op); err != nil {
		return 0, err
	}
	if err := e.olog.MarkApplied(op); err != nil {
		e.log.Warn("marking ops applied", "err", err)
	}
	e.met.opsApplied.WithLabelValues("local").Inc()
	if f := e.onLocal.Load(); f != nil {
		(*f)([]*crdt.Op{op})
	}
	return nIdx, nil
}

// afterLocalDDL logs DDL the database has just accepted from a client
// (create, createIndexes, dropIndexes), records it as the newest for its
// keys and hands it to replication, before the client gets the answer. A
// crash between the database's answer and this leaves the change local;
// running the command again replicates it.
func (e *engine) afterLocalDDL(ctx context.Context, ns string, cmds []ddlCmd) {
	if len(cmds) == 0 {
		return
	}
	release := e.hold()
	defer release()
	var ops []*crdt.Op
	for _, c := range cmds {
		op, err := e.newDDL(ns, c.key, c.cmd)
		if err != nil {
			e.log.Warn("DDL not replicated: cannot build its op", "ns", ns, "err", err)
			continue
		}
		ops = append(ops, op)
	}
	if len(ops) == 0 {
		return
	}
	if err := e.logDDL(ctx, ops); err != nil {
		e.log.Error("DDL applied locally but not logged: it will not replicate (run it again)", "ns", ns, "err", err)
		return
	}
	for _, op := range ops {
		if err := e.saveRecord(ctx, ns, op.ID.StringValue(), op); err != nil {
			e.log.Warn("recording DDL", "ns", ns, "err", err)
		}
	}
	if err := e.olog.MarkApplied(ops...); err != nil {
		e.log.Warn("marking ops applied", "err", err)
	}
	e.met.opsApplied.WithLabelValues("local").Add(float64(len(ops)))
	if f := e.onLocal.Load(); f != nil {
		(*f)(ops)
	}
}

// ddlCmd is one replicated DDL change: its key and normalized command.
type ddlCmd struct {
	key string
	cmd bson.D
}

// indexSpec is the index specification of a (validated) createIndexes op.
func indexSpec(op *crdt.Op) bson.Raw {
	vals, _ := bson.Raw(op.Doc.Lookup("indexes").Value).Values()
	return bson.Raw(vals[0].Value)
}

// genericFields are command fields that are not part of a DDL change.
var genericFields = map[string]bool{
	"$db": true, "lsid": true, "$clusterTime": true, "writeConcern": true, "comment": true, "apiVersion": true,
	"apiStrict": true, "apiDeprecationErrors": true, "$readPreference": true, "txnNumber": true, "autocommit": true,
	"startTransaction": true, "commitQuorum": true, "maxTimeMS": true, "$audit": true, "$client": true,
}

// ddlActions are the privileges DDL on a replicated namespace needs.
var ddlActions = map[string]string{
	"drop": actDropCollection, "create": actCreateCollection, "createindexes": actCreateIndex, "dropindexes": actDropIndex,
}

// dispatchDDL captures DDL on replicated namespaces (ok=false: not
// replicated, forward as is). drop (and the replicated collections of
// dropDatabase) is executed by the engine; create, createIndexes and
// dropIndexes are forwarded, so the client gets the database's own answer,
// and logged once it succeeded.
func (p *Proxy) dispatchDDL(ctx context.Context, cmd *command, lower string, c *clientConn) (dispatched, bool) {
	e := p.eng
	if lower == "dropdatabase" {
		switch cmd.db {
		case "", "admin", "local", "config":
			return dispatched{}, false
		case metaDB:
			return p.refused(errorf(codeBadValue, "edgenode: the database %s is reserved for the proxy's metadata and cannot be dropped", metaDB)), true
		}
		// Checked before the proxy looks into the database with its own
		// credentials.
		if merr, err := c.authorize(cmd.name, cmd.db, "", actDropDatabase); err != nil {
			return dispatched{closeErr: err}, true
		} else if merr != nil {
			return p.refused(merr), true
		}
		names, err := e.client.Database(cmd.db).ListCollectionNames(ctx, bson.D{})
		if err != nil {
			return p.refused(errorf(codeInternalError, "edgenode: list collections of %s: %v", cmd.db, err)), true
		}
		var nss []string
		for _, c := range names {
			if p.ns.replicated(cmd.db, c) {
				nss = append(nss, cmd.db+"."+c)
			}
		}
		if len(nss) == 0 {
			return dispatched{}, false
		}
		reason, ok := e.enterWrite()
		if !ok {
			return p.refused(notWritable(reason)), true
		}
		defer e.exitWrite()
		for _, ns := range nss {
			dctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
			_, err := e.localDrop(dctx, ns)
			cancel()
			if err != nil {
				return p.refused(errorf(codeInternalError, "edgenode: drop %s: %v", ns, err)), true
			}
		}
		// The rest (local-only collections, the database itself) as usual.
		p.met.commands.WithLabelValues("captured").Inc()
		return dispatched{purgeAfter: true}, true
	}
	if cmd.db == metaDB {
		return p.refused(errorf(codeBadValue, "edgenode: the database %s is reserved for the proxy's metadata", metaDB)), true
	}
	if !p.ns.replicated(cmd.db, cmd.coll) {
		return dispatched{}, false
	}
	ns := cmd.ns()
	if merr, err := c.authorize(cmd.name, cmd.db, cmd.coll, ddlActions[lower]); err != nil {
		return dispatched{closeErr: err}, true
	} else if merr != nil {
		return p.refused(merr), true
	}
	reason, ok := e.enterWrite()
	if !ok {
		return p.refused(notWritable(reason)), true
	}
	p.met.commands.WithLabelValues("captured").Inc()
	if lower == "drop" {
		defer e.exitWrite()
		dctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		nIdx, err := e.localDrop(dctx, ns)
		if err != nil {
			return dispatched{reply: errorReply(errorf(codeInternalError, "edgenode: drop %s: %v", ns, err))}, true
		}
		reply, _ := bson.Marshal(bson.D{{Key: "nIndexesWas", Value: int32(nIdx)}, {Key: "ns", Value: ns}, {Key: "ok", Value: 1.0}})
		return dispatched{reply: reply}, true
	}
	unlock := e.nsl.lock(ns)
	cmds, err := p.ddlCommands(ctx, cmd, lower)
	if err != nil {
		unlock()
		e.exitWrite()
		return p.refused(errorf(codeInternalError, "edgenode: %v", err)), true
	}
	return dispatched{after: func(reply bson.Raw) {
		defer e.exitWrite()
		defer unlock()
		if reply == nil {
			return
		}
		if ok, _ := reply.Lookup("ok").AsFloat64OK(); ok != 1 {
			return
		}
		actx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		e.afterLocalDDL(actx, ns, cmds)
	}}, true
}

func notWritable(reason string) *mongoError {
	return errorf(codeNotWritablePrimary, "edgenode: this node does not accept writes to replicated collections right now (%s); retry, or write through another node", reason)
}

// ddlCommands turns a create, createIndexes or dropIndexes command into the
// replicated changes it makes (one per index).
func (p *Proxy) ddlCommands(ctx context.Context, cmd *command, lower string) ([]ddlCmd, error) {
	switch lower {
	case "create":
		d := bson.D{{Key: crdt.DDLCreate, Value: cmd.coll}}
		els, err := cmd.body.Elements()
		if err != nil {
			return nil, err
		}
		for _, el := range els[1:] {
			if !genericFields[el.Key()] {
				d = append(d, bson.E{Key: el.Key(), Value: el.Value()})
			}
		}
		return []ddlCmd{{key: crdt.DDLKey(""), cmd: d}}, nil
	case "createindexes":
		var specs []bson.Raw
		if v, err := cmd.body.LookupErr("indexes"); err == nil && v.Type == bson.TypeArray {
			vals, _ := bson.Raw(v.Value).Values()
			for _, v := range vals {
				if v.Type == bson.TypeEmbeddedDocument {
					specs = append(specs, bson.Raw(v.Value))
				}
			}
		}
		for _, s := range cmd.seqs {
			if s.Identifier == "indexes" {
				for _, d := range s.Docs {
					specs = append(specs, bson.Raw(d))
				}
			}
		}
		var out []ddlCmd
		for _, spec := range specs {
			name, ok := spec.Lookup("name").StringValueOK()
			if !ok || name == "" {
				// MongoDB itself refuses an index without a name.
				continue
			}
			out = append(out, ddlCmd{key: crdt.DDLKey(name), cmd: bson.D{{Key: crdt.DDLCreateIndexes, Value: cmd.coll}, {Key: "indexes", Value: bson.A{slices.Clone(spec)}}}})
		}
		return out, nil
	case "dropindexes":
		v, err := cmd.body.LookupErr("index")
		if err != nil {
			return nil, nil // the database will refuse it
		}
		var names []string
		switch v.Type {
		case bson.TypeString:
			if n := v.StringValue(); n != "*" {
				names = []string{n}
				break
			}
			specs, err := p.eng.coll(cmd.ns()).Indexes().ListSpecifications(ctx)
			if err != nil && !isCode(err, 26) {
				return nil, fmt.Errorf("list indexes of %s: %w", cmd.ns(), err)
			}
			for _, s := range specs {
				if s.Name != "_id_" {
					names = append(names, s.Name)
				}
			}
		case bson.TypeArray:
			vals, _ := bson.Raw(v.Value).Values()
			for _, x := range vals {
				if n, ok := x.StringValueOK(); ok {
					names = append(names, n)
				}
			}
		case bson.TypeEmbeddedDocument:
			specs, err := p.eng.coll(cmd.ns()).Indexes().ListSpecifications(ctx)
			if err != nil && !isCode(err, 26) {
				return nil, fmt.Errorf("list indexes of %s: %w", cmd.ns(), err)
			}
			for _, s := range specs {
				if bytes.Equal(s.KeysDocument, v.Value) {
					names = append(names, s.Name)
				}
			}
		}
		var out []ddlCmd
		for _, n := range names {
			out = append(out, ddlCmd{key: crdt.DDLKey(n), cmd: bson.D{{Key: crdt.DDLDropIndexes, Value: cmd.coll}, {Key: "index", Value: n}}})
		}
		return out, nil
	}
	return nil, nil
}
