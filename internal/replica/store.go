package replica

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"go.mongodb.org/mongo-driver/v2/x/bsonx/bsoncore"

	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
)

// This file reads and writes one document: its stored state (document
// plus metadata, or tombstone), the fold of ops into it (crdt.Apply) and
// the one conditional write that stores the result. Everything here runs
// under the document's lease.

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
	// stmts are the indexes of the items whose ops these are.
	stmts []int
	// size is base's stored size in bytes (the document with its metadata,
	// or its tombstone), as last read or written: what the cache charges.
	size int
}

func idFilter(id bson.RawValue) bson.D { return bson.D{{Key: "_id", Value: id}} }

// load reads a document and its metadata. With a filter, the document must
// also match it (re-checked under the lease, since the filter was resolved
// to _ids before the lease was taken); found reports that. Without a
// filter, found reports existence, and an absent document's tombstone is
// read.
func (r *Replica) load(ctx context.Context, ns string, id bson.RawValue, filter bson.Raw) (*docState, bool, error) {
	// The id may alias a client's message buffer; ops built from ds keep it.
	id = bson.RawValue{Type: id.Type, Value: bytes.Clone(id.Value)}
	ds := &docState{key: docKey(ns, id), ns: ns, id: id}
	if filter == nil {
		if c, ok := r.cache.get(ds.key); ok {
			ds.base, ds.inColl, ds.hasMeta = c.st, c.inColl, c.hasMeta
			ds.cur = ds.base
			return ds, ds.base.Doc != nil, nil
		}
	}
	q := any(idFilter(id))
	if filter != nil {
		q = bson.D{{Key: "$and", Value: bson.A{filter, idFilter(id)}}}
	}
	raw, err := r.coll(ns).FindOne(ctx, q).Raw()
	switch {
	case err == nil:
		if err := ds.setStored(raw); err != nil {
			return nil, false, err
		}
		ds.cur = ds.base
		if filter == nil {
			r.cache.remember(ds)
		}
		return ds, true, nil
	case !errors.Is(err, mongo.ErrNoDocuments):
		return nil, false, fmt.Errorf("read %s %v: %w", ns, id, err)
	case filter != nil:
		// Not matching (any more). The caller skips the document, so its
		// tombstone does not matter.
		return ds, false, nil
	}
	if err := r.loadTombstone(ctx, ds); err != nil {
		return nil, false, err
	}
	ds.cur = ds.base
	r.cache.remember(ds)
	return ds, false, nil
}

func (ds *docState) setStored(raw bson.Raw) error {
	var d bson.D
	if err := bson.Unmarshal(raw, &d); err != nil {
		return fmt.Errorf("decode %s %v: %w", ds.ns, ds.id, err)
	}
	mv, err := raw.LookupErr(crdt.MetaField)
	ds.hasMeta = err == nil
	meta, err := decodeMetaIn(mv, raw)
	if err != nil {
		return fmt.Errorf("%s %v: %w", ds.ns, ds.id, err)
	}
	d = slices.DeleteFunc(d, func(e bson.E) bool { return e.Key == crdt.MetaField })
	ds.base = crdt.State{Doc: d, Meta: meta}
	ds.inColl = true
	ds.size = len(raw)
	return nil
}

func (r *Replica) loadTombstone(ctx context.Context, ds *docState) error {
	ds.inColl, ds.hasMeta = false, false
	ds.base, ds.size = crdt.State{}, 0
	raw, err := r.metaColl(tombstoneColl).FindOne(ctx, bson.D{{Key: "_id", Value: ds.key}}).Raw()
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
	ds.base.Meta, ds.size = meta, len(raw)
	return nil
}

// reload re-reads the stored state (after a CAS conflict).
func (r *Replica) reload(ctx context.Context, ds *docState) error {
	raw, err := r.coll(ds.ns).FindOne(ctx, idFilter(ds.id)).Raw()
	switch {
	case err == nil:
		return ds.setStored(raw)
	case errors.Is(err, mongo.ErrNoDocuments):
		return r.loadTombstone(ctx, ds)
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
// origin's ops reach a document in Seq order (a document's lease is held
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
// only has to keep it. doc is the document the metadata is stored in (nil
// for a tombstone): values it holds are not copied (crdt.Meta.EncodeWith).
func encodeMeta(m *crdt.Meta, doc bson.Raw) bsoncore.Document {
	idx, b := bsoncore.AppendDocumentStart(nil)
	b = bsoncore.AppendInt64Element(b, "v", m.Version())
	b = bsoncore.AppendBinaryElement(b, "b", 0, m.EncodeWith(doc))
	b, _ = bsoncore.AppendDocumentEnd(b, idx)
	return b
}

// decodeMeta reverses encodeMeta for metadata stored apart from its
// document (a tombstone); an absent field is empty metadata.
func decodeMeta(rv bson.RawValue) (*crdt.Meta, error) { return decodeMetaIn(rv, nil) }

// decodeMetaIn reverses encodeMeta for metadata stored in doc. Both forms
// read: documents written before values were left in the document carry
// copies of them, and get the new form at their next write.
func decodeMetaIn(rv bson.RawValue, doc bson.Raw) (*crdt.Meta, error) {
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
	return crdt.DecodeMetaWith(bson.RawValue{Type: bson.TypeEmbeddedDocument, Value: data}, doc)
}

// withMeta encodes doc with the metadata appended as MetaField.
func withMeta(doc bson.D, m *crdt.Meta) (bson.Raw, error) {
	b, err := bson.Marshal(doc)
	if err != nil {
		return nil, err
	}
	meta := encodeMeta(m, b)
	b = b[:len(b)-1]
	b = bsoncore.AppendDocumentElement(b, crdt.MetaField, meta)
	b = append(b, 0)
	bsoncore.UpdateLength(b, 0, int32(len(b)))
	return b, nil
}

// casFilter is the filter of the write that replaces what ds.base read:
// conditional on the stored metadata version where the database makes
// that a compare-and-swap, on the _id alone where it does not (the lease
// serializes the core's writes either way).
func (ds *docState) casFilter(caps Capabilities) bson.D {
	if !caps.VersionedWrites {
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
func (r *Replica) store(ctx context.Context, ds *docState) error {
	if ds.cur.Doc == nil {
		return r.storeDeleted(ctx, ds)
	}
	c := r.coll(ds.ns)
	full, err := withMeta(ds.cur.Doc, ds.cur.Meta)
	if err != nil {
		return &applyError{err: fmt.Errorf("encode %s %v: %w", ds.ns, ds.id, err)}
	}
	ds.size = len(full)
	if ds.inColl {
		res, err := c.ReplaceOne(ctx, ds.casFilter(r.caps), full)
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
		if _, err := r.metaColl(tombstoneColl).DeleteOne(ctx, bson.D{{Key: "_id", Value: ds.key}}); err != nil {
			r.log.Warn("removing stale tombstone", "ns", ds.ns, "id", ds.id, "err", err)
		}
	}
	return nil
}

func (r *Replica) storeDeleted(ctx context.Context, ds *docState) error {
	m := encodeMeta(ds.cur.Meta, nil)
	tomb := bson.D{{Key: "_id", Value: ds.key}, {Key: "ns", Value: ds.ns}, {Key: "id", Value: ds.id}, {Key: "m", Value: bson.Raw(m)}}
	ds.size = len(ds.key) + len(ds.id.Value) + len(m)
	if _, err := r.metaColl(tombstoneColl).ReplaceOne(ctx, bson.D{{Key: "_id", Value: ds.key}}, tomb, options.Replace().SetUpsert(true)); err != nil {
		return classify(err)
	}
	if ds.inColl {
		res, err := r.coll(ds.ns).DeleteOne(ctx, ds.casFilter(r.caps))
		if err != nil {
			return classify(err)
		}
		if res.DeletedCount == 0 {
			return errCAS
		}
	}
	return nil
}

// storeAttempts bounds the writes (and re-reads) storeOps tries for one
// document. Each one that finds no primary first waits for the driver's
// server selection, so together they outlast an election.
const storeAttempts = 20

// storeOps folds ds.ops into the stored state and writes it, re-reading and
// re-folding on CAS conflicts (the ops are pure and idempotent, so folding
// them into a newer state is always right) and retrying transient errors
// (transient: the database unreachable, or between primaries) with a
// backoff, until storeAttempts, Config.StoreRetry or ctx runs out. A write the primary
// answered with a state-change error (it stepped down) is re-read and
// written again on the new primary: if it did take effect after all, the
// re-read state holds its ops and the fold changes nothing. On success
// ds.base is the new stored state and ds.ops is empty.
func (r *Replica) storeOps(ctx context.Context, ds *docState) error {
	ctx, cancel := context.WithTimeout(ctx, r.storeRetry)
	defer cancel()
	backoff := 50 * time.Millisecond
	// wait reports whether to try again after err, having waited.
	wait := func(attempt int, err error) bool {
		if attempt+1 >= storeAttempts || ctx.Err() != nil || !transient(err) {
			return false
		}
		r.log.Warn("retrying document write", "ns", ds.ns, "id", ds.id, "attempt", attempt+1, "err", err)
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return false
		}
		backoff = min(2*backoff, 2*time.Second)
		return true
	}
	stale := false // ds.base must be read again before the next fold
	for attempt := 0; ; attempt++ {
		if stale {
			if err := r.reload(ctx, ds); err != nil {
				if wait(attempt, err) {
					continue
				}
				return err
			}
			stale = false
		}
		next, changed, err := r.foldForStore(ds)
		if err != nil {
			return err
		}
		if !changed {
			ds.cur, ds.ops = ds.base, nil
			return nil
		}
		ds.cur = r.compact(next)
		err = r.store(ctx, ds)
		if err == nil {
			ds.base, ds.ops = ds.cur, nil
			ds.inColl, ds.hasMeta = ds.cur.Doc != nil, ds.cur.Doc != nil
			r.cache.remember(ds)
			return nil
		}
		r.cache.forget(ds.key)
		stale = true
		var ae *applyError
		switch {
		case errors.As(err, &ae):
			return err
		case errors.Is(err, errCAS):
			if attempt+1 >= storeAttempts || ctx.Err() != nil {
				return err
			}
			r.met.casRetries.Inc()
		case !wait(attempt, err):
			return err
		}
	}
}

// foldForStore folds ds.ops into the stored state with the namespace's
// newest drop applied first, and says whether there is anything to write.
func (r *Replica) foldForStore(ds *docState) (crdt.State, bool, error) {
	// A drop of the namespace newer than the stored state deletes what it
	// holds: that is a change to store even if the ops add nothing.
	start := r.withDrop(ds.ns, ds.id, ds.base)
	next, changed, late, err := foldChecked(start, ds.ops)
	if err != nil {
		return next, false, &applyError{err: err}
	}
	if len(late) > 0 {
		r.met.lateApplies.Add(float64(len(late)))
		r.log.Warn("an op changed a document after a later op of its origin had: a retried apply, or a double application",
			"ns", ds.ns, "id", ds.id, "origin", late[0].Origin, "seq", late[0].Seq, "seen", start.Meta.SeenSeq(late[0].Origin),
			"ts", late[0].TS.String(), "kind", late[0].Kind.String(), "ops", len(late))
	}
	if !changed && start.Meta != ds.base.Meta && (ds.inColl || start.Doc != nil) {
		changed = true // (a document absent anyway needs no tombstone: the drop record covers it)
	}
	return next, changed, nil
}
