package mongoproxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"go.mongodb.org/mongo-driver/v2/x/bsonx/bsoncore"

	lru "github.com/hashicorp/golang-lru/v2"

	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
	"github.com/edgenode/edgenode/internal/mongoproxy/oplog"
)

// Collections of the proxy's own database.
const (
	tombstoneColl = "tombstones"
	conflictColl  = "conflicts"
)

// chunkSize bounds how many documents one log append and one set of held
// stripes cover: multi-document writes are logged in groups (one fsync per
// group) without holding an unbounded number of locks.
const chunkSize = 64

// errCAS means the stored metadata version changed between read and write.
var errCAS = errors.New("mongoproxy: document changed underneath (metadata version mismatch)")

// applyError is a write the database refused for good (a unique index other
// than _id, a document it cannot store): retrying cannot help.
type applyError struct {
	unique bool
	err    error
}

func (e *applyError) Error() string { return e.err.Error() }
func (e *applyError) Unwrap() error { return e.err }

// engine turns captured writes into logged ops and applies ops to the
// local database: one read, a pure merge (crdt.Apply) and one conditional
// write per document, under the document's stripe lock.
type engine struct {
	node   string
	client *mongo.Client
	olog   *oplog.Log
	clock  *crdt.Clock
	locks  *stripes
	log    *slog.Logger
	met    *metrics

	// ferret is set when the database is FerretDB (buildInfo has
	// ferretdbVersion). FerretDB v1 on SQLite uses its _id index only for a
	// filter that is exactly {_id: <string or ObjectId>}; anything else scans
	// the collection. There the compare-and-swap write filters on _id alone
	// (FerretDB's conditional update is not atomic anyway, so the version
	// condition would protect nothing; the stripe lock is what serializes
	// the proxy's writes) and multi-document chunks read document by
	// document instead of with one $in query.
	ferret bool
	// maxDoc is Options.MaxDocumentBytes.
	maxDoc int

	// fault is a test hook called at named points ("after-append",
	// "after-apply"); nil in production.
	fault func(point string)

	onLocal atomic.Pointer[func([]*crdt.Op)]
	// onAppend is told as soon as local ops are durable in the log, before
	// they are applied here (replication can send them at once).
	onAppend atomic.Pointer[func()]
	stable   atomic.Pointer[func() crdt.Timestamp]

	// replicated says whether this node replicates a namespace.
	replicated func(db, coll string) bool

	// cache keeps the stored state of recently written documents, so a
	// write to a hot document skips the read (nil: disabled). It is only
	// read and written under the document's stripe lock, and an entry is
	// dropped whenever a write fails. The proxy is the only writer of its
	// replicated collections; if something else writes one behind its back,
	// the version-conditional write notices (on MongoDB) and re-reads.
	cache *lru.Cache[string, cachedDoc]

	// holds are the clock readings taken by local writes that may still
	// hand out timestamps whose ops are not yet in the log (see hold).
	holdMu  sync.Mutex
	holds   map[uint64]crdt.Timestamp
	holdSeq uint64

	// gate lets BlockWrites wait for local writes in flight; blocked is the
	// reason captured writes are refused (nil: accepted).
	gate    sync.RWMutex
	blocked atomic.Pointer[string]

	// nsl serializes DDL against document writes per namespace; nsDrops is
	// the newest drop of each namespace (see ddl.go).
	nsl     *nsLocks
	ddlMu   sync.Mutex
	nsDrops map[string]crdt.Timestamp
}

// hold registers a local write about to take timestamps from the clock: until
// release, Frontier stays at or below the clock reading at this moment, so
// every op with a timestamp at or below the frontier is already in the log.
func (e *engine) hold() (release func()) {
	e.holdMu.Lock()
	if e.holds == nil {
		e.holds = map[uint64]crdt.Timestamp{}
	}
	e.holdSeq++
	id := e.holdSeq
	e.holds[id] = e.clock.Last()
	e.holdMu.Unlock()
	return func() {
		e.holdMu.Lock()
		delete(e.holds, id)
		e.holdMu.Unlock()
	}
}

// frontier is a clock reading F such that every local op with a timestamp at
// or below F has been appended to the log already, and every later one will
// be above F.
func (e *engine) frontier() crdt.Timestamp {
	e.holdMu.Lock()
	defer e.holdMu.Unlock()
	f := e.clock.Last()
	for _, h := range e.holds {
		if h.Compare(f) < 0 {
			f = h
		}
	}
	return f
}

// enterWrite admits a captured write unless writes are blocked; exitWrite
// must follow when it returns true.
func (e *engine) enterWrite() (string, bool) {
	e.gate.RLock()
	if r := e.blocked.Load(); r != nil {
		e.gate.RUnlock()
		return *r, false
	}
	return "", true
}

func (e *engine) exitWrite() { e.gate.RUnlock() }

type cachedDoc struct {
	st              crdt.State
	inColl, hasMeta bool
}

func (e *engine) remember(ds *docState) {
	if e.cache != nil {
		e.cache.Add(ds.key, cachedDoc{st: ds.base, inColl: ds.inColl, hasMeta: ds.hasMeta})
	}
}

func (e *engine) forget(key string) {
	if e.cache != nil {
		e.cache.Remove(key)
	}
}

// purgeCache drops every cached document (collections were dropped or renamed).
func (e *engine) purgeCache() {
	if e.cache != nil {
		e.cache.Purge()
	}
}

// docState is one document during a batch: what is stored, and the ops of
// this batch to fold into it.
type docState struct {
	key     string
	ns      string
	id      bson.RawValue
	base    crdt.State // as stored (Doc nil: absent, Meta from the tombstone if any)
	inColl  bool       // the document is stored in its collection
	hasMeta bool       // the stored document carries MetaField (else CAS on its absence)
	cur     crdt.State // base with this batch's ops applied (pre-log preview)
	ops     []*crdt.Op
	// inserted are the ops insertFresh stored (ds.ops is then empty).
	inserted []*crdt.Op
}

func splitNS(ns string) (db, coll string) {
	db, coll, _ = strings.Cut(ns, ".")
	return db, coll
}

func (e *engine) coll(ns string) *mongo.Collection {
	db, c := splitNS(ns)
	return e.client.Database(db).Collection(c)
}

func (e *engine) metaColl(name string) *mongo.Collection {
	return e.client.Database(metaDB).Collection(name)
}

func idFilter(id bson.RawValue) bson.D { return bson.D{{Key: "_id", Value: id}} }

// load reads a document and its metadata. With a filter, the document must
// also match it (re-checked under the lock, since the filter was resolved to
// _ids before the lock was taken); found reports that. Without a filter,
// found reports existence, and an absent document's tombstone is read.
func (e *engine) load(ctx context.Context, ns string, id bson.RawValue, filter bson.Raw) (*docState, bool, error) {
	// The id may alias a client's message buffer; ops built from ds keep it.
	id = bson.RawValue{Type: id.Type, Value: bytes.Clone(id.Value)}
	ds := &docState{key: docKey(ns, id), ns: ns, id: id}
	if filter == nil && e.cache != nil {
		if c, ok := e.cache.Get(ds.key); ok {
			ds.base, ds.inColl, ds.hasMeta = c.st, c.inColl, c.hasMeta
			ds.cur = ds.base
			return ds, ds.base.Doc != nil, nil
		}
	}
	q := any(idFilter(id))
	if filter != nil {
		q = bson.D{{Key: "$and", Value: bson.A{filter, idFilter(id)}}}
	}
	raw, err := e.coll(ns).FindOne(ctx, q).Raw()
	switch {
	case err == nil:
		if err := ds.setStored(raw); err != nil {
			return nil, false, err
		}
		ds.cur = ds.base
		if filter == nil {
			e.remember(ds)
		}
		return ds, true, nil
	case !errors.Is(err, mongo.ErrNoDocuments):
		return nil, false, fmt.Errorf("read %s %v: %w", ns, id, err)
	case filter != nil:
		// Not matching (any more). The caller skips the document, so its
		// tombstone does not matter.
		return ds, false, nil
	}
	if err := e.loadTombstone(ctx, ds); err != nil {
		return nil, false, err
	}
	ds.cur = ds.base
	e.remember(ds)
	return ds, false, nil
}

func (ds *docState) setStored(raw bson.Raw) error {
	var d bson.D
	if err := bson.Unmarshal(raw, &d); err != nil {
		return fmt.Errorf("decode %s %v: %w", ds.ns, ds.id, err)
	}
	mv, err := raw.LookupErr(crdt.MetaField)
	ds.hasMeta = err == nil
	meta, err := decodeMeta(mv)
	if err != nil {
		return fmt.Errorf("%s %v: %w", ds.ns, ds.id, err)
	}
	d = slices.DeleteFunc(d, func(e bson.E) bool { return e.Key == crdt.MetaField })
	ds.base = crdt.State{Doc: d, Meta: meta}
	ds.inColl = true
	return nil
}

func (e *engine) loadTombstone(ctx context.Context, ds *docState) error {
	ds.inColl, ds.hasMeta = false, false
	ds.base = crdt.State{}
	raw, err := e.metaColl(tombstoneColl).FindOne(ctx, bson.D{{Key: "_id", Value: ds.key}}).Raw()
	if errors.Is(err, mongo.ErrNoDocuments) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read tombstone of %s %v: %w", ds.ns, ds.id, err)
	}
	meta, err := decodeMeta(raw.Lookup("m"))
	if err != nil {
		return fmt.Errorf("tombstone of %s %v: %w", ds.ns, ds.id, err)
	}
	ds.base.Meta = meta
	return nil
}

// reload re-reads the stored state (after a CAS conflict).
func (e *engine) reload(ctx context.Context, ds *docState) error {
	raw, err := e.coll(ds.ns).FindOne(ctx, idFilter(ds.id)).Raw()
	switch {
	case err == nil:
		return ds.setStored(raw)
	case errors.Is(err, mongo.ErrNoDocuments):
		return e.loadTombstone(ctx, ds)
	default:
		return fmt.Errorf("re-read %s %v: %w", ds.ns, ds.id, err)
	}
}

func cloneRaw(b bson.Raw) bson.Raw {
	if b == nil {
		return nil
	}
	return bytes.Clone(b)
}

// fold applies ops to st in order.
func fold(st crdt.State, ops []*crdt.Op) (crdt.State, bool, error) {
	st, changed, _, err := foldChecked(st, ops)
	return st, changed, err
}

// foldChecked is fold that also returns the ops that changed the document
// although a later op of the same origin had already changed it. Each
// origin's ops reach a document in Seq order (a document's lock is held
// from a local op's log append to its write; peers' ops are applied in
// order; a snapshot holds every op of an origin up to the newest it
// holds), so such an op is either one whose first apply failed (it stayed
// unapplied in the log while a later one went through) or an op applied a
// second time, which for $inc counts twice. Either way it is worth a loud
// line: see storeOps.
func foldChecked(st crdt.State, ops []*crdt.Op) (crdt.State, bool, []*crdt.Op, error) {
	changed := false
	var late []*crdt.Op
	for _, op := range ops {
		seen := st.Meta.SeenSeq(op.Origin)
		next, ch, err := crdt.Apply(st, op)
		if err != nil {
			return st, false, nil, err
		}
		if ch && op.Seq != 0 && op.Seq <= seen {
			late = append(late, op)
		}
		st, changed = next, changed || ch
	}
	return st, changed, late, nil
}

// encodeMeta wraps the metadata for storage as {v: version, b: BinData}.
// The version stays queryable for the compare-and-swap filter; the rest is
// opaque bytes. Opaque because the metadata's encoding nests arrays, which
// FerretDB v1 refuses to store, and because nobody queries it: the database
// only has to keep it.
func encodeMeta(m *crdt.Meta) bsoncore.Document {
	idx, b := bsoncore.AppendDocumentStart(nil)
	b = bsoncore.AppendInt64Element(b, "v", m.Version())
	b = bsoncore.AppendBinaryElement(b, "b", 0, m.Encode())
	b, _ = bsoncore.AppendDocumentEnd(b, idx)
	return b
}

// decodeMeta reverses encodeMeta; an absent field is empty metadata.
func decodeMeta(rv bson.RawValue) (*crdt.Meta, error) {
	if rv.Type == 0 {
		return crdt.DecodeMeta(rv)
	}
	if rv.Type != bson.TypeEmbeddedDocument {
		return nil, fmt.Errorf("%s is a %s, not a document", crdt.MetaField, rv.Type)
	}
	bin, err := bson.Raw(rv.Value).LookupErr("b")
	if err != nil || bin.Type != bson.TypeBinary {
		return nil, fmt.Errorf("%s has no metadata bytes", crdt.MetaField)
	}
	_, data := bin.Binary()
	return crdt.DecodeMeta(bson.RawValue{Type: bson.TypeEmbeddedDocument, Value: data})
}

// withMeta encodes doc with the metadata appended as MetaField.
func withMeta(doc bson.D, m *crdt.Meta) (bson.Raw, error) {
	b, err := bson.Marshal(doc)
	if err != nil {
		return nil, err
	}
	b = b[:len(b)-1]
	b = bsoncore.AppendDocumentElement(b, crdt.MetaField, encodeMeta(m))
	b = append(b, 0)
	bsoncore.UpdateLength(b, 0, int32(len(b)))
	return b, nil
}

func (ds *docState) casFilter(ferret bool) bson.D {
	if ferret {
		return idFilter(ds.id)
	}
	if ds.hasMeta {
		return bson.D{{Key: "_id", Value: ds.id}, {Key: crdt.MetaField + ".v", Value: ds.base.Meta.Version()}}
	}
	return bson.D{{Key: "_id", Value: ds.id}, {Key: crdt.MetaField, Value: bson.D{{Key: "$exists", Value: false}}}}
}

// store writes ds.cur over ds.base with one write conditional on the stored
// metadata version (errCAS when it moved). A deletion writes the tombstone
// before removing the document and a re-creation inserts the document before
// removing the tombstone: a crash in between leaves both, and the live
// document always wins at the next read (load ignores tombstones of
// documents that exist), which is right in both cases because the op that
// was being applied is still unapplied in the log and is replayed.
func (e *engine) store(ctx context.Context, ds *docState) error {
	c := e.coll(ds.ns)
	if ds.cur.Doc != nil {
		full, err := withMeta(ds.cur.Doc, ds.cur.Meta)
		if err != nil {
			return &applyError{err: fmt.Errorf("encode %s %v: %w", ds.ns, ds.id, err)}
		}
		if ds.inColl {
			res, err := c.ReplaceOne(ctx, ds.casFilter(e.ferret), full)
			if err != nil {
				return classify(err)
			}
			if res.MatchedCount == 0 {
				return errCAS
			}
			return nil
		}
		if _, err := c.InsertOne(ctx, full); err != nil {
			if isDuplicateKey(err) {
				// Either someone created the _id meanwhile (a CAS conflict) or
				// another unique index refused the document.
				n, cerr := c.CountDocuments(ctx, idFilter(ds.id))
				if cerr == nil && n > 0 {
					return errCAS
				}
			}
			return classify(err)
		}
		if ds.base.Meta != nil && !ds.base.Meta.Tombstone().IsZero() {
			// Best effort: a stale tombstone next to a live document is ignored.
			if _, err := e.metaColl(tombstoneColl).DeleteOne(ctx, bson.D{{Key: "_id", Value: ds.key}}); err != nil {
				e.log.Warn("removing stale tombstone", "ns", ds.ns, "id", ds.id, "err", err)
			}
		}
		return nil
	}
	tomb := bson.D{{Key: "_id", Value: ds.key}, {Key: "ns", Value: ds.ns}, {Key: "id", Value: ds.id}, {Key: "m", Value: bson.Raw(encodeMeta(ds.cur.Meta))}}
	if _, err := e.metaColl(tombstoneColl).ReplaceOne(ctx, bson.D{{Key: "_id", Value: ds.key}}, tomb, options.Replace().SetUpsert(true)); err != nil {
		return classify(err)
	}
	if ds.inColl {
		res, err := c.DeleteOne(ctx, ds.casFilter(e.ferret))
		if err != nil {
			return classify(err)
		}
		if res.DeletedCount == 0 {
			return errCAS
		}
	}
	return nil
}

// classify wraps database errors that retrying cannot fix as *applyError.
func classify(err error) error {
	if isDuplicateKey(err) {
		return &applyError{unique: true, err: err}
	}
	if mongo.IsNetworkError(err) || mongo.IsTimeout(err) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	var se mongo.ServerError
	if errors.As(err, &se) {
		return &applyError{err: err}
	}
	return err
}

// storeOps folds ds.ops into the stored state and writes it, re-reading and
// re-folding on CAS conflicts (the ops are pure and idempotent, so folding
// them into a newer state is always right) and retrying transient errors a
// few times. On success ds.base is the new stored state and ds.ops is empty.
func (e *engine) storeOps(ctx context.Context, ds *docState) error {
	backoff := 50 * time.Millisecond
	for attempt := 0; ; attempt++ {
		// A drop of the namespace newer than the stored state deletes what
		// it holds: that is a change to store even if the ops add nothing.
		start := e.withDrop(ds.ns, ds.id, ds.base)
		next, changed, late, err := foldChecked(start, ds.ops)
		if err != nil {
			return &applyError{err: err}
		}
		if len(late) > 0 {
			e.met.lateApplies.Add(float64(len(late)))
			e.log.Warn("an op changed a document after a later op of its origin had: a retried apply, or a double application",
				"ns", ds.ns, "id", ds.id, "origin", late[0].Origin, "seq", late[0].Seq, "seen", start.Meta.SeenSeq(late[0].Origin),
				"ts", late[0].TS.String(), "kind", late[0].Kind.String(), "ops", len(late))
		}
		if !changed && start.Meta != ds.base.Meta && (ds.inColl || start.Doc != nil) {
			changed = true // (a document absent anyway needs no tombstone: the drop record covers it)
		}
		if !changed {
			ds.cur, ds.ops = ds.base, nil
			return nil
		}
		if f := e.stable.Load(); f != nil {
			if m, ok := next.Meta.Compact((*f)()); ok {
				next.Meta = m
			}
		}
		ds.cur = next
		err = e.store(ctx, ds)
		if err == nil {
			ds.base, ds.ops = next, nil
			ds.inColl, ds.hasMeta = next.Doc != nil, next.Doc != nil
			e.remember(ds)
			return nil
		}
		e.forget(ds.key)
		var ae *applyError
		if errors.As(err, &ae) || attempt >= 20 || ctx.Err() != nil {
			return err
		}
		if errors.Is(err, errCAS) {
			e.met.casRetries.Inc()
		} else {
			e.log.Warn("retrying document write", "ns", ds.ns, "id", ds.id, "err", err)
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
				return ctx.Err()
			}
			backoff = min(2*backoff, 2*time.Second)
		}
		if err := e.reload(ctx, ds); err != nil {
			return err
		}
	}
}

// applyOps applies already-logged ops (from peers, or unapplied ones at
// start) to the local database, document by document. An op the database
// refuses for good (a peer's write colliding with a local unique index, or a
// document this database cannot store) is parked in edgenode_meta.conflicts
// with a log line and a metric, and counted as applied: replication never
// stalls on it. Transient errors return early; the remaining ops stay
// unapplied in the log and are applied by a later call or at restart.
func (e *engine) applyOps(ctx context.Context, ops []*crdt.Op, source string) error {
	var skipped []*crdt.Op
	ops = slices.DeleteFunc(slices.Clone(ops), func(op *crdt.Op) bool {
		db, coll := splitNS(op.NS)
		if e.replicated == nil || e.replicated(db, coll) {
			return false
		}
		skipped = append(skipped, op)
		return true
	})
	if len(skipped) > 0 {
		// A namespace this node does not replicate (configs differ between
		// nodes, or a system namespace): never written, but accounted for.
		e.met.conflicts.WithLabelValues("not_replicated").Add(float64(len(skipped)))
		e.log.Warn("skipping ops for namespaces this node does not replicate (check mongo.replicate/local_only on every node)",
			"ops", len(skipped), "first_ns", skipped[0].NS, "origin", skipped[0].Origin)
		if err := e.olog.MarkApplied(skipped...); err != nil {
			return fmt.Errorf("mark applied: %w", err)
		}
	}
	// DDL ops split the batch: the document ops before one are applied
	// before it, those after it after it.
	for len(ops) > 0 {
		i := slices.IndexFunc(ops, func(op *crdt.Op) bool { return op.Kind == crdt.DDL })
		if i < 0 {
			return e.applyDocOps(ctx, ops, source)
		}
		if err := e.applyDocOps(ctx, ops[:i], source); err != nil {
			return err
		}
		if err := e.applyDDLOp(ctx, ops[i], source); err != nil {
			return err
		}
		ops = ops[i+1:]
	}
	return nil
}

// applyDDLOp applies one logged DDL op and marks it applied.
func (e *engine) applyDDLOp(ctx context.Context, op *crdt.Op, source string) error {
	unlock := e.nsl.lock(op.NS)
	err := e.applyDDL(ctx, op)
	unlock()
	var ae *applyError
	if errors.As(err, &ae) {
		e.park(ctx, op, ae)
	} else if err != nil {
		return err
	}
	if err := e.olog.MarkApplied(op); err != nil {
		return fmt.Errorf("mark applied: %w", err)
	}
	e.met.opsApplied.WithLabelValues(source).Inc()
	return nil
}

func (e *engine) applyDocOps(ctx context.Context, ops []*crdt.Op, source string) error {
	if len(ops) == 0 {
		return nil
	}
	type group struct {
		ns  string
		id  bson.RawValue
		ops []*crdt.Op
	}
	var order []string
	groups := map[string]*group{}
	for _, op := range ops {
		k := docKey(op.NS, op.ID)
		g := groups[k]
		if g == nil {
			g = &group{ns: op.NS, id: op.ID}
			groups[k] = g
			order = append(order, k)
		}
		g.ops = append(g.ops, op)
	}
	if len(order) < 2*applyWorkers {
		for _, k := range order {
			g := groups[k]
			if err := e.applyGroup(ctx, k, g.ns, g.id, g.ops, source); err != nil {
				return err
			}
		}
		return nil
	}
	// Documents are independent: apply several at once (the database
	// serves connections in parallel; each document is still one
	// read-merge-write under its own lock).
	var (
		next     atomic.Int64
		firstErr atomic.Pointer[error]
		wg       sync.WaitGroup
	)
	for range applyWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for firstErr.Load() == nil {
				i := int(next.Add(1)) - 1
				if i >= len(order) {
					return
				}
				g := groups[order[i]]
				if err := e.applyGroup(ctx, order[i], g.ns, g.id, g.ops, source); err != nil {
					firstErr.CompareAndSwap(nil, &err)
				}
			}
		}()
	}
	wg.Wait()
	if err := firstErr.Load(); err != nil {
		return *err
	}
	return nil
}

// applyWorkers is how many documents applyOps writes at once.
const applyWorkers = 4

func (e *engine) applyGroup(ctx context.Context, key, ns string, id bson.RawValue, ops []*crdt.Op, source string) error {
	unlockNS := e.nsl.rlock(ns)
	defer unlockNS()
	unlock := e.locks.lock(key)
	defer unlock()
	ds, _, err := e.load(ctx, ns, id, nil)
	if err != nil {
		return err
	}
	ds.ops = slices.Clone(ops)
	err = e.storeOps(ctx, ds)
	var ae *applyError
	if errors.As(err, &ae) && len(ops) > 1 {
		// Find the culprit(s): apply one by one, parking what fails.
		if err := e.reload(ctx, ds); err != nil {
			return err
		}
		for _, op := range ops {
			ds.ops = []*crdt.Op{op}
			if err := e.storeOps(ctx, ds); err != nil {
				if !errors.As(err, &ae) {
					return err
				}
				e.park(ctx, op, ae)
				if err := e.reload(ctx, ds); err != nil {
					return err
				}
			}
		}
	} else if errors.As(err, &ae) {
		e.park(ctx, ops[0], ae)
	} else if err != nil {
		return err
	}
	if e.fault != nil {
		e.fault("after-apply")
	}
	if err := e.olog.MarkApplied(ops...); err != nil {
		return fmt.Errorf("mark applied: %w", err)
	}
	e.met.opsApplied.WithLabelValues(source).Add(float64(len(ops)))
	return nil
}

// park records an op the local database refused for good.
func (e *engine) park(ctx context.Context, op *crdt.Op, ae *applyError) {
	reason := "invalid"
	if ae.unique {
		reason = "unique"
	}
	e.met.conflicts.WithLabelValues(reason).Inc()
	e.log.Warn("operation refused by the local database; parked in edgenode_meta.conflicts",
		"reason", reason, "ns", op.NS, "id", op.ID, "origin", op.Origin, "seq", op.Seq, "ts", op.TS.String(), "err", ae.err)
	raw, err := op.MarshalBSON()
	if err != nil {
		e.log.Error("encoding parked op", "err", err)
		return
	}
	rec := bson.D{{Key: "_id", Value: fmt.Sprintf("%s:%d", op.Origin, op.Seq)}, {Key: "ns", Value: op.NS}, {Key: "id", Value: op.ID},
		{Key: "reason", Value: reason}, {Key: "error", Value: ae.err.Error()}, {Key: "at", Value: time.Now().UTC()}, {Key: "op", Value: bson.Raw(raw)}}
	if _, err := e.metaColl(conflictColl).ReplaceOne(ctx, bson.D{{Key: "_id", Value: rec[0].Value}}, rec, options.Replace().SetUpsert(true)); err != nil {
		e.log.Error("recording parked op", "err", err)
	}
}

// localItem is one document-level write of a client command.
type localItem struct {
	stmt   int
	id     bson.RawValue
	filter bson.Raw // re-checked under the lock; nil when the statement names the _id
	// compute decides the op for the document's current state (nil op:
	// nothing to write) or refuses with a write error. found: the document
	// exists (and matches the filter, when there is one). ts is the op's clock.
	compute func(st crdt.State, found bool, ts crdt.Timestamp) (*crdt.Op, *mongoError)
}

// outcome is what happened to one localItem.
type outcome struct {
	done   bool // processed (false: skipped after an ordered failure)
	found  bool
	op     *crdt.Op
	before bson.D // document before the op (nil: absent)
	after  bson.D // document after the op (nil: absent)
	err    *mongoError
}

// runLocal captures, logs and applies items (in order). With ordered, the
// first failure stops the rest. It returns the ops appended to the log.
func (e *engine) runLocal(ctx context.Context, ns string, items []localItem, ordered bool) ([]outcome, []*crdt.Op) {
	out := make([]outcome, len(items))
	var logged []*crdt.Op
	for start := 0; start < len(items); start += chunkSize {
		end := min(start+chunkSize, len(items))
		ops, stop := e.runChunk(ctx, ns, items[start:end], out[start:end], ordered)
		logged = append(logged, ops...)
		if stop {
			break
		}
	}
	if len(logged) > 0 {
		if f := e.onLocal.Load(); f != nil {
			(*f)(logged)
		}
	}
	return out, logged
}

func (e *engine) runChunk(ctx context.Context, ns string, items []localItem, out []outcome, ordered bool) (logged []*crdt.Op, stop bool) {
	release := e.hold()
	defer release()
	unlockNS := e.nsl.rlock(ns)
	defer unlockNS()
	keys := make([]string, len(items))
	for i, it := range items {
		keys[i] = docKey(ns, it.id)
	}
	unlock := e.locks.lock(keys...)
	defer unlock()

	states := map[string]*docState{}
	if len(items) > 1 && !e.ferret {
		// One query for all the documents (and one for their tombstones)
		// instead of one or two per document.
		if err := e.prefetch(ctx, ns, items, keys, states); err != nil {
			e.log.Warn("prefetching documents", "ns", ns, "err", err)
			clear(states)
		}
	}
	prefetched := len(states) > 0
	var order []*docState // documents with ops, in order of first op
	owner := map[*docState][]int{}
	var ops []*crdt.Op
	fail := func(i int, err *mongoError) {
		out[i] = outcome{done: true, err: err}
		if ordered {
			stop = true
		}
	}
	seen := map[string]bool{}
	for i, it := range items {
		ds := states[keys[i]]
		var found bool
		if ds != nil && prefetched && !seen[keys[i]] {
			// First use of a prefetched document: apply the item's filter.
			seen[keys[i]] = true
			found = ds.cur.Doc != nil
		} else if ds == nil {
			var err error
			ds, found, err = e.load(ctx, ns, it.id, it.filter)
			if err != nil {
				fail(i, errorf(codeInternalError, "edgenode: %v", err))
				if stop {
					break
				}
				continue
			}
			states[keys[i]] = ds
		} else {
			found = ds.cur.Doc != nil
		}
		if it.filter != nil && !found {
			out[i] = outcome{done: true}
			continue
		}
		ts := e.clock.Now()
		op, merr := it.compute(ds.cur, found, ts)
		if merr != nil {
			fail(i, merr)
			if stop {
				break
			}
			continue
		}
		if op == nil {
			out[i] = outcome{done: true, found: found, before: ds.cur.Doc, after: ds.cur.Doc}
			continue
		}
		// Ops outlive the request: nothing may alias the client's message buffer.
		op.Origin, op.TS, op.NS = e.node, ts, ns
		op.ID = ds.id
		op.Doc, op.Update = cloneRaw(op.Doc), cloneRaw(op.Update)
		next, _, err := crdt.Apply(ds.cur, op)
		if err == nil {
			err = e.checkSize(op, next)
		}
		if err != nil {
			var me *mongoError
			if !errors.As(err, &me) {
				me = errorf(codeBadValue, "edgenode: %v", err)
			}
			fail(i, me)
			if stop {
				break
			}
			continue
		}
		out[i] = outcome{done: true, found: found, op: op, before: ds.cur.Doc, after: next.Doc}
		ds.cur = next
		if len(ds.ops) == 0 {
			order = append(order, ds)
		}
		ds.ops = append(ds.ops, op)
		owner[ds] = append(owner[ds], i)
		ops = append(ops, op)
	}
	if len(ops) == 0 {
		return nil, stop
	}
	if err := e.olog.AppendLocal(ctx, ops); err != nil {
		e.log.Error("op log append failed; write refused", "ns", ns, "err", err)
		for _, ds := range order {
			for _, i := range owner[ds] {
				out[i] = outcome{done: true, err: errorf(codeInternalError, "edgenode: op log append failed: %v", err)}
			}
		}
		return nil, true
	}
	for _, op := range ops {
		e.met.opsCaptured.WithLabelValues(op.Kind.String()).Inc()
	}
	if f := e.onAppend.Load(); f != nil {
		(*f)()
	}
	logged = ops
	if e.fault != nil {
		e.fault("after-append")
	}
	var applied []*crdt.Op
	inserted := e.insertFresh(ctx, ns, order)
	undo := false // ordered: a refused write undoes every later document of the chunk
	for _, ds := range order {
		mine := slices.Clone(ds.ops)
		var err error
		if inserted[ds] {
			mine = ds.inserted
		} else if !undo {
			err = e.storeOps(ctx, ds)
		}
		var ae *applyError
		switch {
		case !undo && err == nil:
			applied = append(applied, mine...)
			continue
		case undo || errors.As(err, &ae):
			comp, cerr := e.compensate(ctx, ds, mine)
			if cerr != nil {
				e.log.Error("compensating a refused local write failed; it stays unapplied in the log and is retried at restart", "ns", ns, "id", ds.id, "err", cerr)
			} else {
				logged = append(logged, comp)
				applied = append(applied, mine...)
				applied = append(applied, comp)
			}
			for _, i := range owner[ds] {
				if undo {
					out[i] = outcome{}
				} else {
					out[i] = outcome{done: true, err: dbError(ae.err)}
				}
			}
			if ordered {
				undo, stop = true, true
			}
		default:
			e.log.Error("applying a logged local write failed; it stays in the log and is re-applied at restart", "ns", ns, "id", ds.id, "err", err)
			for _, i := range owner[ds] {
				out[i] = outcome{done: true, err: errorf(codeInternalError, "edgenode: write logged but not yet applied: %v", err)}
			}
			if ordered {
				stop = true
			}
		}
	}
	if len(applied) > 0 {
		if e.fault != nil {
			e.fault("after-apply")
		}
		if err := e.olog.MarkApplied(applied...); err != nil {
			e.log.Warn("marking ops applied", "err", err)
		}
		e.met.opsApplied.WithLabelValues("local").Add(float64(len(applied)))
	}
	return logged, stop
}

// checkSize refuses a write whose op, or whose document as stored with its
// metadata, would exceed maxDoc: replication could not carry it.
func (e *engine) checkSize(op *crdt.Op, next crdt.State) error {
	if n := len(op.Doc) + len(op.Update); n > e.maxDoc {
		return errorf(codeBSONObjectTooLarge, "edgenode: this write to %s is %d bytes; replicated writes are limited to %d (mongo.max_document_bytes): keep large blobs out of the database (the media cache), or make the collection local-only", op.NS, n, e.maxDoc)
	}
	if next.Doc == nil {
		return nil
	}
	// The stored form is the document plus metadata that repeats every
	// assigned value and keeps pending commutative ops: bounded cheaply
	// first (values twice, generously per pending op), encoded only when
	// it may be near the limit.
	raw, err := bson.Marshal(next.Doc)
	if err != nil {
		return err
	}
	if 2*len(raw)+256*next.Meta.PendingOps()+64<<10 < e.maxDoc {
		return nil
	}
	if n := len(raw) + len(next.Meta.Encode()); n > e.maxDoc {
		return errorf(codeBSONObjectTooLarge, "edgenode: after this write the document %v of %s would take %d bytes with its replication metadata; the limit is %d (mongo.max_document_bytes): keep large blobs out of the database (the media cache), or make the collection local-only", op.ID, op.NS, n, e.maxDoc)
	}
	return nil
}

// prefetch loads, with one query for the documents and one for the
// tombstones, every item that names its _id (no filter to re-check).
func (e *engine) prefetch(ctx context.Context, ns string, items []localItem, keys []string, states map[string]*docState) error {
	var ids bson.A
	want := map[string]bson.RawValue{}
	for i, it := range items {
		if it.filter != nil {
			continue
		}
		if _, dup := want[keys[i]]; !dup {
			want[keys[i]] = bson.RawValue{Type: it.id.Type, Value: bytes.Clone(it.id.Value)}
			ids = append(ids, it.id)
		}
	}
	if len(ids) < 2 {
		return nil
	}
	cur, err := e.coll(ns).Find(ctx, bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: ids}}}})
	if err != nil {
		return err
	}
	found := map[string]*docState{}
	for cur.Next(ctx) {
		raw := bson.Raw(bytes.Clone(cur.Current))
		id := raw.Lookup("_id")
		k := docKey(ns, id)
		if _, ok := want[k]; !ok {
			continue
		}
		ds := &docState{key: k, ns: ns, id: want[k]}
		if err := ds.setStored(raw); err != nil {
			_ = cur.Close(ctx)
			return err
		}
		ds.cur = ds.base
		found[k] = ds
	}
	if err := cur.Close(ctx); err != nil {
		return err
	}
	if err := cur.Err(); err != nil {
		return err
	}
	var missing bson.A
	for k := range want {
		if found[k] == nil {
			missing = append(missing, k)
		}
	}
	if len(missing) > 0 {
		tc, err := e.metaColl(tombstoneColl).Find(ctx, bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: missing}}}})
		if err != nil {
			return err
		}
		for tc.Next(ctx) {
			k, _ := tc.Current.Lookup("_id").StringValueOK()
			if _, ok := want[k]; !ok || found[k] != nil {
				continue
			}
			meta, err := decodeMeta(tc.Current.Lookup("m"))
			if err != nil {
				_ = tc.Close(ctx)
				return fmt.Errorf("tombstone %q: %w", k, err)
			}
			ds := &docState{key: k, ns: ns, id: want[k], base: crdt.State{Meta: meta}}
			ds.cur = ds.base
			found[k] = ds
		}
		if err := tc.Close(ctx); err != nil {
			return err
		}
		if err := tc.Err(); err != nil {
			return err
		}
	}
	for k, id := range want {
		ds := found[k]
		if ds == nil {
			ds = &docState{key: k, ns: ns, id: id}
		}
		states[k] = ds
	}
	return nil
}

// insertFresh stores, with one unordered insertMany, the documents of a
// chunk that did not exist and have no tombstone (the insertMany case).
// It returns those it stored; the others (and any the database refused)
// go through storeOps one by one.
func (e *engine) insertFresh(ctx context.Context, ns string, order []*docState) map[*docState]bool {
	var fresh []*docState
	var docs []any
	var nexts []crdt.State
	for _, ds := range order {
		if ds.inColl || (ds.base.Meta != nil && !ds.base.Meta.Tombstone().IsZero()) || len(ds.ops) == 0 {
			continue
		}
		next, changed, err := fold(e.withDrop(ds.ns, ds.id, ds.base), ds.ops)
		if err != nil || !changed || next.Doc == nil {
			continue
		}
		if f := e.stable.Load(); f != nil {
			if m, ok := next.Meta.Compact((*f)()); ok {
				next.Meta = m
			}
		}
		full, err := withMeta(next.Doc, next.Meta)
		if err != nil {
			continue
		}
		fresh, docs, nexts = append(fresh, ds), append(docs, full), append(nexts, next)
	}
	if len(fresh) < 2 {
		return nil
	}
	failed := map[int]bool{}
	if _, err := e.coll(ns).InsertMany(ctx, docs, options.InsertMany().SetOrdered(false)); err != nil {
		var bwe mongo.BulkWriteException
		if !errors.As(err, &bwe) || len(bwe.WriteErrors) == 0 {
			return nil // nothing known to be stored: all go one by one (the _id CAS sorts it out)
		}
		for _, we := range bwe.WriteErrors {
			failed[we.Index] = true
		}
	}
	out := map[*docState]bool{}
	for i, ds := range fresh {
		if failed[i] {
			continue
		}
		ds.inserted, ds.ops = ds.ops, nil
		ds.base, ds.cur = nexts[i], nexts[i]
		ds.inColl, ds.hasMeta = true, true
		e.remember(ds)
		out[ds] = true
	}
	return out
}

// compensate undoes logged local ops the database refused (a unique index
// other than _id): the ops are already durable and may already be on their
// way to peers, so instead of forgetting them the proxy logs a newer op that
// restores every path they touched (or deletes the document they created),
// and stores the result. Every replica ends in the same state as if the
// write had never happened (modulo writes concurrent with it).
func (e *engine) compensate(ctx context.Context, ds *docState, ops []*crdt.Op) (*crdt.Op, error) {
	if err := e.reload(ctx, ds); err != nil {
		return nil, err
	}
	comp := &crdt.Op{Origin: e.node, TS: e.clock.Now(), NS: ds.ns, ID: ds.id}
	if ds.base.Doc == nil {
		comp.Kind = crdt.Delete
	} else {
		base, err := bson.Marshal(ds.base.Doc)
		if err != nil {
			return nil, err
		}
		var paths []string
		for _, op := range ops {
			paths = append(paths, opPaths(op)...)
		}
		slices.Sort(paths)
		paths = slices.Compact(paths)
		paths = slices.DeleteFunc(paths, func(p string) bool {
			for _, q := range paths {
				if strings.HasPrefix(p, q+".") {
					return true
				}
			}
			return false
		})
		var set, unset bson.D
		for _, p := range paths {
			if v, err := bson.Raw(base).LookupErr(strings.Split(p, ".")...); err == nil {
				set = append(set, bson.E{Key: p, Value: v})
			} else {
				unset = append(unset, bson.E{Key: p, Value: ""})
			}
		}
		var u bson.D
		if len(set) > 0 {
			u = append(u, bson.E{Key: "$set", Value: set})
		}
		if len(unset) > 0 {
			u = append(u, bson.E{Key: "$unset", Value: unset})
		}
		if len(u) == 0 {
			u = bson.D{{Key: "$set", Value: bson.D{}}}
		}
		raw, err := bson.Marshal(u)
		if err != nil {
			return nil, err
		}
		comp.Kind, comp.Update = crdt.Update, raw
	}
	if err := e.olog.AppendLocal(ctx, []*crdt.Op{comp}); err != nil {
		return nil, fmt.Errorf("append compensating op: %w", err)
	}
	e.met.compensations.Inc()
	ds.ops = append(ds.ops, comp)
	if err := e.storeOps(ctx, ds); err != nil {
		return comp, fmt.Errorf("store compensated state: %w", err)
	}
	return comp, nil
}

// opPaths lists the field paths an op writes.
func opPaths(op *crdt.Op) []string {
	var out []string
	switch op.Kind {
	case crdt.Insert:
		els, _ := op.Doc.Elements()
		for _, el := range els {
			if el.Key() != "_id" {
				out = append(out, el.Key())
			}
		}
	case crdt.Update:
		ops, _ := op.Update.Elements()
		for _, o := range ops {
			if o.Value().Type != bson.TypeEmbeddedDocument {
				continue
			}
			fields, _ := bson.Raw(o.Value().Value).Elements()
			for _, f := range fields {
				out = append(out, f.Key())
			}
		}
	}
	return out
}

// dbError turns a database error into the client's write error, keeping
// its code when it has one.
func dbError(err error) *mongoError {
	if isDuplicateKey(err) && !mongo.IsDuplicateKeyError(err) {
		return errorf(codeDuplicateKey, "E11000 duplicate key error (%v)", err)
	}
	var we mongo.WriteException
	if errors.As(err, &we) && len(we.WriteErrors) > 0 {
		return &mongoError{Code: int32(we.WriteErrors[0].Code), Msg: we.WriteErrors[0].Message}
	}
	var ce mongo.CommandError
	if errors.As(err, &ce) {
		return &mongoError{Code: ce.Code, Msg: ce.Message}
	}
	if isDuplicateKey(err) {
		return &mongoError{Code: codeDuplicateKey, Msg: err.Error()}
	}
	return errorf(codeInternalError, "edgenode: %v", err)
}

// isDuplicateKey recognizes unique index violations: error 11000 (MongoDB,
// and FerretDB on insert) and FerretDB v1's update path, which reports the
// SQLite constraint as an internal error instead.
func isDuplicateKey(err error) bool {
	return mongo.IsDuplicateKeyError(err) || strings.Contains(err.Error(), "UNIQUE constraint failed")
}
