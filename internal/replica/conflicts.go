package replica

// Parked conflicts: listing, showing, resolving and settling them.
//
// A peer's op that the local database refuses for good (a unique index
// other than _id) is parked in edgenode_meta.conflicts and counted as
// applied (apply.go). The record is this node's alone: edgenode_meta never
// replicates. So the nodes disagree about the op's document while a record
// exists: the op's origin (and any node where it did not collide) has it,
// this node does not, and where two nodes took colliding writes each has
// parked the other's.
//
// An operator settles one record on one node, and the settlement
// replicates, because it is made of ordinary captured writes, newer than
// everything they override:
//
//   - keep stored: the parked op's document is written back, on every node,
//     to what this node stores: each path the op touched is $set to this
//     node's value or $unset where this node has none, and a document this
//     node does not have is deleted. The parked op loses everywhere.
//   - keep parked: the documents the op collides with here (found through
//     the collection's unique indexes) are deleted, then the op's document
//     is written as it is once the op is applied: each path it touched is
//     $set (or $unset) to that value. The parked op wins everywhere.
//
// The record is then dropped here. Every other node, after applying a
// batch of a peer's ops, tries the ops it has parked in the batch's
// namespaces again (settleParked): one that now applies, because the
// resolution removed its obstacle or made it lose to a newer write, is
// applied through the ordinary merge (so its fields count exactly as on the
// nodes that never parked it) and its record is dropped. So after one
// resolution on one node, every node holds the same document and no record
// of the collision is left. Ops parked for another reason (a document the
// database cannot store) are tried again the same way, and can be settled
// with keep stored.

import (
	"context"
	"encoding/json"
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

// ErrNoConflict is returned for a conflict id that has no record here.
var ErrNoConflict = errors.New("replica: no such conflict")

// Keep says which side of a unique-key collision a resolution keeps.
type Keep int

// The sides of a collision.
const (
	// KeepStored keeps what this node stores: the parked op loses
	// everywhere.
	KeepStored Keep = iota + 1
	// KeepParked keeps the parked op: the documents it collides with are
	// deleted everywhere and it is applied everywhere.
	KeepParked
)

// ParseKeep parses "stored" or "parked".
func ParseKeep(s string) (Keep, error) {
	switch s {
	case "stored":
		return KeepStored, nil
	case "parked":
		return KeepParked, nil
	}
	return 0, fmt.Errorf("keep must be \"stored\" or \"parked\", not %q", s)
}

func (k Keep) String() string {
	switch k {
	case KeepStored:
		return "stored"
	case KeepParked:
		return "parked"
	}
	return fmt.Sprintf("keep(%d)", int(k))
}

// Conflict is one parked op, as operators see it. Documents and values are
// MongoDB Extended JSON (relaxed).
type Conflict struct {
	ID     string          `json:"id"` // origin:seq of the parked op
	NS     string          `json:"ns"`
	DocID  json.RawMessage `json:"doc_id"`
	Reason string          `json:"reason"` // unique, invalid
	Error  string          `json:"error"`
	At     time.Time       `json:"at"` // when it was parked here
	Origin string          `json:"origin"`
	Seq    uint64          `json:"seq"`
	Kind   string          `json:"kind"`  // insert, update, delete
	Clock  string          `json:"clock"` // the op's hybrid clock
	Op     json.RawMessage `json:"op"`    // the inserted document or the update
	// Filled by Conflict only: this node's copy of the op's document (null:
	// none), and the documents the op collides with here.
	Stored    json.RawMessage   `json:"stored,omitempty"`
	Colliding []json.RawMessage `json:"colliding,omitempty"`
}

// parkedRecord is a record of edgenode_meta.conflicts, decoded.
type parkedRecord struct {
	id     string
	reason string
	errMsg string
	at     time.Time
	op     *crdt.Op
}

func decodeParked(raw bson.Raw) (*parkedRecord, error) {
	rec := &parkedRecord{}
	var ok bool
	if rec.id, ok = raw.Lookup("_id").StringValueOK(); !ok {
		return nil, errors.New("conflict record without a string _id")
	}
	rec.reason, _ = raw.Lookup("reason").StringValueOK()
	rec.errMsg, _ = raw.Lookup("error").StringValueOK()
	if dt, ok := raw.Lookup("at").DateTimeOK(); ok {
		rec.at = time.UnixMilli(dt).UTC()
	}
	opRaw, ok := raw.Lookup("op").DocumentOK()
	if !ok {
		return nil, fmt.Errorf("conflict %s: no op", rec.id)
	}
	rec.op = &crdt.Op{}
	if err := rec.op.UnmarshalBSON(opRaw); err != nil {
		return nil, fmt.Errorf("conflict %s: %w", rec.id, err)
	}
	return rec, nil
}

func (rec *parkedRecord) view() (Conflict, error) {
	c := Conflict{ID: rec.id, NS: rec.op.NS, Reason: rec.reason, Error: rec.errMsg, At: rec.at,
		Origin: rec.op.Origin, Seq: rec.op.Seq, Kind: rec.op.Kind.String(), Clock: rec.op.TS.String()}
	var err error
	if c.DocID, err = extJSONValue(rec.op.ID); err != nil {
		return c, err
	}
	body := rec.op.Update
	if rec.op.Kind == crdt.Insert || rec.op.Kind == crdt.DDL {
		body = rec.op.Doc
	}
	if body == nil {
		c.Op = json.RawMessage("null")
		return c, nil
	}
	c.Op, err = bson.MarshalExtJSON(body, false, false)
	return c, err
}

// extJSONValue encodes one value as relaxed Extended JSON.
func extJSONValue(v bson.RawValue) (json.RawMessage, error) {
	b, err := bson.MarshalExtJSON(bson.D{{Key: "v", Value: v}}, false, false)
	if err != nil {
		return nil, err
	}
	var wrap struct{ V json.RawMessage }
	if err := json.Unmarshal(b, &wrap); err != nil {
		return nil, err
	}
	return wrap.V, nil
}

func extJSONDoc(d bson.D) (json.RawMessage, error) {
	if d == nil {
		return json.RawMessage("null"), nil
	}
	return bson.MarshalExtJSON(d, false, false)
}

// countParked reads how many records there are (at start).
func (r *Replica) countParked(ctx context.Context) error {
	n, err := r.metaColl(conflictColl).CountDocuments(ctx, bson.D{})
	if err != nil {
		return fmt.Errorf("count parked conflicts: %w", err)
	}
	r.parked.Store(n)
	r.met.parked.Set(float64(n))
	return nil
}

func (r *Replica) addParked(n int64) {
	if n != 0 {
		r.met.parked.Set(float64(r.parked.Add(n)))
	}
}

// Conflicts lists the parked ops, oldest first.
func (r *Replica) Conflicts(ctx context.Context) ([]Conflict, error) {
	cur, err := r.metaColl(conflictColl).Find(ctx, bson.D{}, options.Find().SetSort(bson.D{{Key: "at", Value: 1}, {Key: "_id", Value: 1}}))
	if err != nil {
		return nil, fmt.Errorf("replica: list conflicts: %w", err)
	}
	defer cur.Close(ctx)
	out := []Conflict{}
	for cur.Next(ctx) {
		rec, err := decodeParked(cur.Current)
		if err != nil {
			return nil, fmt.Errorf("replica: %w", err)
		}
		c, err := rec.view()
		if err != nil {
			return nil, fmt.Errorf("replica: conflict %s: %w", rec.id, err)
		}
		out = append(out, c)
	}
	if err := cur.Err(); err != nil {
		return nil, fmt.Errorf("replica: list conflicts: %w", err)
	}
	return out, nil
}

func (r *Replica) parkedByID(ctx context.Context, id string) (*parkedRecord, error) {
	raw, err := r.metaColl(conflictColl).FindOne(ctx, bson.D{{Key: "_id", Value: id}}).Raw()
	if errors.Is(err, mongo.ErrNoDocuments) {
		return nil, fmt.Errorf("%w: %q", ErrNoConflict, id)
	}
	if err != nil {
		return nil, fmt.Errorf("replica: read conflict %s: %w", id, err)
	}
	rec, err := decodeParked(raw)
	if err != nil {
		return nil, fmt.Errorf("replica: %w", err)
	}
	return rec, nil
}

// Conflict shows one parked op with this node's copy of its document and
// the stored documents it collides with.
func (r *Replica) Conflict(ctx context.Context, id string) (Conflict, error) {
	rec, err := r.parkedByID(ctx, id)
	if err != nil {
		return Conflict{}, err
	}
	c, err := rec.view()
	if err != nil {
		return c, fmt.Errorf("replica: conflict %s: %w", id, err)
	}
	if rec.op.Kind == crdt.DDL {
		return c, nil
	}
	st, err := r.peek(ctx, rec.op)
	if err != nil {
		return c, err
	}
	if c.Stored, err = extJSONDoc(st.Doc); err != nil {
		return c, err
	}
	next, _, err := crdt.Apply(st, rec.op)
	if err != nil {
		return c, fmt.Errorf("replica: conflict %s: %w", id, err)
	}
	colliding, err := r.colliding(ctx, rec.op.NS, rec.op.ID, next.Doc)
	if err != nil {
		return c, err
	}
	for _, d := range colliding {
		j, err := bson.MarshalExtJSON(d, false, false)
		if err != nil {
			return c, err
		}
		c.Colliding = append(c.Colliding, j)
	}
	return c, nil
}

// peek reads the op's document as stored, without its lease: for showing,
// and for finding what it collides with before the resolution's writes
// (which read it again under their leases).
func (r *Replica) peek(ctx context.Context, op *crdt.Op) (crdt.State, error) {
	ds := &docState{key: docKey(op.NS, op.ID), ns: op.NS, id: op.ID}
	if err := r.reload(ctx, ds); err != nil {
		return crdt.State{}, fmt.Errorf("replica: %w", err)
	}
	return ds.base, nil
}

// colliding returns the stored documents other than id that doc (the op's
// document as it would be) collides with on a unique index of ns.
func (r *Replica) colliding(ctx context.Context, ns string, id bson.RawValue, doc bson.D) ([]bson.Raw, error) {
	if doc == nil {
		return nil, nil // a deleted document collides with nothing
	}
	cur, err := r.coll(ns).Indexes().List(ctx)
	if err != nil {
		return nil, fmt.Errorf("replica: list indexes of %s: %w", ns, err)
	}
	var specs []bson.Raw
	for cur.Next(ctx) {
		if u, _ := cur.Current.Lookup("unique").BooleanOK(); u {
			specs = append(specs, slices.Clone(cur.Current))
		}
	}
	err = cur.Err()
	_ = cur.Close(ctx)
	if err != nil {
		return nil, fmt.Errorf("replica: list indexes of %s: %w", ns, err)
	}
	var out []bson.Raw
	seen := map[string]bool{}
	for _, spec := range specs {
		key, ok := spec.Lookup("key").DocumentOK()
		if !ok {
			continue
		}
		elems, err := key.Elements()
		if err != nil {
			return nil, fmt.Errorf("replica: index of %s: %w", ns, err)
		}
		sparse, _ := spec.Lookup("sparse").BooleanOK()
		and := bson.A{bson.D{{Key: "_id", Value: bson.D{{Key: "$ne", Value: id}}}}}
		present := false
		for _, e := range elems {
			v, ok := lookupPath(doc, e.Key())
			present = present || ok
			// A missing field is indexed as null, and {f: null} matches
			// both null and missing, as the index does.
			and = append(and, bson.D{{Key: e.Key(), Value: v}})
		}
		if sparse && !present {
			continue
		}
		if pf, ok := spec.Lookup("partialFilterExpression").DocumentOK(); ok {
			and = append(and, pf)
		}
		c, err := r.coll(ns).Find(ctx, bson.D{{Key: "$and", Value: and}},
			options.Find().SetProjection(bson.D{{Key: crdt.MetaField, Value: 0}}).SetLimit(16))
		if err != nil {
			return nil, fmt.Errorf("replica: find documents colliding in %s: %w", ns, err)
		}
		for c.Next(ctx) {
			k := string(c.Current.Lookup("_id").Value)
			if !seen[k] {
				seen[k] = true
				out = append(out, slices.Clone(c.Current))
			}
		}
		err = c.Err()
		_ = c.Close(ctx)
		if err != nil {
			return nil, fmt.Errorf("replica: find documents colliding in %s: %w", ns, err)
		}
	}
	return out, nil
}

// lookupPath finds a dotted path in a document (through embedded
// documents only, as the merge's field paths do).
func lookupPath(d bson.D, path string) (any, bool) {
	head, rest, dotted := strings.Cut(path, ".")
	for _, e := range d {
		if e.Key != head {
			continue
		}
		if !dotted {
			return e.Value, true
		}
		sub, ok := e.Value.(bson.D)
		if !ok {
			return nil, false
		}
		return lookupPath(sub, rest)
	}
	return nil, false
}

// touchedPaths are the paths op writes: an insert's top-level fields, an
// update's operator targets.
func touchedPaths(op *crdt.Op) ([]string, error) {
	var paths []string
	switch op.Kind {
	case crdt.Insert:
		elems, err := op.Doc.Elements()
		if err != nil {
			return nil, err
		}
		for _, e := range elems {
			if e.Key() != "_id" {
				paths = append(paths, e.Key())
			}
		}
	case crdt.Update:
		ops, err := op.Update.Elements()
		if err != nil {
			return nil, err
		}
		for _, o := range ops {
			fields, ok := o.Value().DocumentOK()
			if !ok {
				continue
			}
			fe, err := fields.Elements()
			if err != nil {
				return nil, err
			}
			for _, f := range fe {
				paths = append(paths, f.Key())
			}
		}
	}
	slices.Sort(paths)
	return slices.Compact(paths), nil
}

// reassert is the op that writes paths of a document to their values in
// doc: $set where doc has one, $unset where not; a delete when the
// document does not exist. Nil when there is nothing to write.
func reassert(doc bson.D, paths []string) (*crdt.Op, error) {
	if doc == nil {
		return &crdt.Op{Kind: crdt.Delete}, nil
	}
	u := setToValues(doc, paths)
	if u == nil {
		return nil, nil
	}
	raw, err := bson.Marshal(u)
	if err != nil {
		return nil, fmt.Errorf("encode the update: %w", err)
	}
	return &crdt.Op{Kind: crdt.Update, Update: raw}, nil
}

// Resolve settles the parked op id on every node (see the comment at the
// top of this file) and drops its record here. It goes through the write
// gate like a client's write: a node that does not take writes (not
// synced yet) refuses with a *BlockedError.
func (r *Replica) Resolve(ctx context.Context, id string, keep Keep) (Conflict, error) {
	rec, err := r.parkedByID(ctx, id)
	if err != nil {
		return Conflict{}, err
	}
	view, err := rec.view()
	if err != nil {
		return view, fmt.Errorf("replica: conflict %s: %w", id, err)
	}
	op := rec.op
	switch {
	case op.Kind == crdt.DDL:
		return view, fmt.Errorf("replica: conflict %s is a parked index or collection change: run it again, or drop what it collides with, through the proxy", id)
	case keep == KeepParked && rec.reason != "unique":
		return view, fmt.Errorf("replica: conflict %s was parked because %s (reason %s): only a unique-key collision can be resolved by keeping the parked op", id, rec.errMsg, rec.reason)
	case keep != KeepParked && keep != KeepStored:
		return view, fmt.Errorf("replica: resolve %s: %v is not a side", id, keep)
	}
	db, coll := splitNS(op.NS)
	if !r.replicated(db, coll) {
		return view, fmt.Errorf("replica: conflict %s: %s is not replicated on this node any more", id, op.NS)
	}
	paths, err := touchedPaths(op)
	if err != nil {
		return view, fmt.Errorf("replica: conflict %s: %w", id, err)
	}
	done, err := r.Admit()
	if err != nil {
		return view, err
	}
	defer done()
	if keep == KeepParked {
		st, err := r.peek(ctx, op)
		if err != nil {
			return view, err
		}
		next, _, err := crdt.Apply(st, op)
		if err != nil {
			return view, fmt.Errorf("replica: conflict %s: %w", id, err)
		}
		others, err := r.colliding(ctx, op.NS, op.ID, next.Doc)
		if err != nil {
			return view, err
		}
		var dels []Item
		for _, d := range others {
			dels = append(dels, Item{ID: d.Lookup("_id"), Compute: func(_ crdt.State, found bool, _ crdt.Timestamp) (*crdt.Op, error) {
				if !found {
					return nil, nil
				}
				return &crdt.Op{Kind: crdt.Delete}, nil
			}})
		}
		if err := firstErr(r.Write(ctx, op.NS, dels, true)); err != nil {
			return view, fmt.Errorf("replica: conflict %s: delete the colliding documents: %w", id, err)
		}
	}
	item := Item{ID: op.ID, Compute: func(st crdt.State, found bool, _ crdt.Timestamp) (*crdt.Op, error) {
		if keep == KeepStored {
			if !found {
				return reassert(nil, paths)
			}
			return reassert(st.Doc, paths)
		}
		next, _, err := crdt.Apply(st, op)
		if err != nil {
			return nil, err
		}
		return reassert(next.Doc, paths)
	}}
	if err := firstErr(r.Write(ctx, op.NS, []Item{item}, true)); err != nil {
		return view, fmt.Errorf("replica: conflict %s: write the kept document: %w", id, err)
	}
	if err := r.dropParked(ctx, id); err != nil {
		return view, err
	}
	r.log.Info("conflict resolved: the resolution replicates to every node", "conflict", id, "keep", keep.String(), "ns", op.NS, "id", op.ID)
	return view, nil
}

func firstErr(out []Outcome) error {
	for _, o := range out {
		if o.Err != nil {
			return o.Err
		}
	}
	return nil
}

func (r *Replica) dropParked(ctx context.Context, id string) error {
	res, err := r.metaColl(conflictColl).DeleteOne(ctx, bson.D{{Key: "_id", Value: id}})
	if err != nil {
		return fmt.Errorf("replica: drop conflict record %s: %w", id, err)
	}
	r.addParked(-res.DeletedCount)
	return nil
}

// settleParked tries again the parked ops of the namespaces a peer's batch
// just wrote, and drops the records of those that now apply. Errors are
// logged, never returned: the batch itself was applied, and the records
// stay for the next batch or an operator.
func (r *Replica) settleParked(ctx context.Context, batch []*crdt.Op) {
	if r.parked.Load() <= 0 {
		return
	}
	var nss []string
	for _, op := range batch {
		if op.Kind != crdt.DDL && !slices.Contains(nss, op.NS) {
			nss = append(nss, op.NS)
		}
	}
	if len(nss) == 0 {
		return
	}
	cur, err := r.metaColl(conflictColl).Find(ctx, bson.D{{Key: "ns", Value: bson.D{{Key: "$in", Value: nss}}}})
	if err != nil {
		r.log.Warn("reading parked conflicts to settle", "err", err)
		return
	}
	var recs []*parkedRecord
	for cur.Next(ctx) {
		if rec, err := decodeParked(cur.Current); err == nil && rec.op.Kind != crdt.DDL {
			recs = append(recs, rec)
		}
	}
	_ = cur.Close(ctx)
	for _, rec := range recs {
		ok, err := r.retryParked(ctx, rec.op)
		if err != nil {
			r.log.Warn("retrying a parked op", "conflict", rec.id, "err", err)
			continue
		}
		if !ok {
			continue
		}
		if err := r.dropParked(ctx, rec.id); err != nil {
			r.log.Warn("dropping a settled conflict", "err", err)
			continue
		}
		r.log.Info("parked op applies now: conflict settled", "conflict", rec.id, "ns", rec.op.NS, "id", rec.op.ID)
	}
}

// retryParked applies op again under its document's lease; false when the
// database still refuses it.
func (r *Replica) retryParked(ctx context.Context, op *crdt.Op) (bool, error) {
	ns := r.nss.acquire(false, op.NS)
	defer ns.release()
	key := docKey(op.NS, op.ID)
	doc := r.docs.acquire(true, key)
	defer doc.release()
	ds, _, err := r.load(ctx, op.NS, op.ID, nil)
	if err != nil {
		return false, err
	}
	ds.ops = []*crdt.Op{op}
	err = r.storeOps(ctx, ds)
	var ae *applyError
	if errors.As(err, &ae) {
		return false, nil
	}
	return err == nil, err
}
