package replica

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
	"github.com/edgenode/edgenode/internal/mongoproxy/oplog"
)

// This file holds the multi-document shortcuts of a chunk (one read for
// many documents, one insert for many new ones) and its undo
// (compensation). The chunk holds every document's lease.

// prefetch loads, with one query for the documents and one for the
// tombstones, every item that names its _id (no filter to re-check).
func (r *Replica) prefetch(ctx context.Context, ns string, items []Item, keys []string, states map[string]*docState) error {
	var ids bson.A
	want := map[string]bson.RawValue{}
	for i, it := range items {
		if it.Filter != nil {
			continue
		}
		if _, dup := want[keys[i]]; !dup {
			want[keys[i]] = bson.RawValue{Type: it.ID.Type, Value: bytes.Clone(it.ID.Value)}
			ids = append(ids, it.ID)
		}
	}
	if len(ids) < 2 {
		return nil
	}
	found, err := r.prefetchDocs(ctx, ns, ids, want)
	if err != nil {
		return err
	}
	if err := r.prefetchTombstones(ctx, ns, want, found); err != nil {
		return err
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

func (r *Replica) prefetchDocs(ctx context.Context, ns string, ids bson.A, want map[string]bson.RawValue) (map[string]*docState, error) {
	cur, err := r.coll(ns).Find(ctx, bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: ids}}}})
	if err != nil {
		return nil, err
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
			return nil, err
		}
		ds.cur = ds.base
		found[k] = ds
	}
	if err := cur.Close(ctx); err != nil {
		return nil, err
	}
	return found, cur.Err()
}

func (r *Replica) prefetchTombstones(ctx context.Context, ns string, want map[string]bson.RawValue, found map[string]*docState) error {
	var missing bson.A
	for k := range want {
		if found[k] == nil {
			missing = append(missing, k)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	tc, err := r.metaColl(tombstoneColl).Find(ctx, bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: missing}}}})
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
		ds := &docState{key: k, ns: ns, id: want[k], base: crdt.State{Meta: meta}, size: len(tc.Current)}
		ds.cur = ds.base
		found[k] = ds
	}
	if err := tc.Close(ctx); err != nil {
		return err
	}
	return tc.Err()
}

// insertFresh stores, with one unordered insertMany, the documents of a
// chunk that did not exist and have no tombstone (the insertMany case).
// It returns those it stored; the others (and any the database refused)
// go through storeOps one by one.
func (r *Replica) insertFresh(ctx context.Context, ns string, order []*docState) map[*docState]bool {
	var fresh []*docState
	var docs []any
	var nexts []crdt.State
	for _, ds := range order {
		if ds.inColl || (ds.base.Meta != nil && !ds.base.Meta.Tombstone().IsZero()) || len(ds.ops) == 0 {
			continue
		}
		next, changed, err := fold(r.withDrop(ds.ns, ds.id, ds.base), ds.ops)
		if err != nil || !changed || next.Doc == nil {
			continue
		}
		next = r.compact(next)
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
	if _, err := r.coll(ns).InsertMany(ctx, docs, options.InsertMany().SetOrdered(false)); err != nil {
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
		ds.inColl, ds.hasMeta, ds.size = true, true, len(docs[i].(bson.Raw))
		r.cache.remember(ds)
		out[ds] = true
	}
	return out
}

// compensate undoes logged local ops the database refused (a unique index
// other than _id): the ops are already durable and may already be on their
// way to peers, so instead of forgetting them the core logs a newer op that
// restores every path they touched (or deletes the document they created),
// and stores the result. Every replica ends in the same state as if the
// write had never happened (modulo writes concurrent with it).
// recs are written with it (see chunk.undo).
func (r *Replica) compensate(ctx context.Context, ds *docState, ops []*crdt.Op, recs []oplog.Record) (*crdt.Op, error) {
	if err := r.reload(ctx, ds); err != nil {
		return nil, err
	}
	comp := &crdt.Op{Origin: r.node, TS: r.clock.Now(), NS: ds.ns, ID: ds.id}
	if ds.base.Doc == nil {
		comp.Kind = crdt.Delete
	} else {
		u, err := restoreUpdate(ds.base.Doc, ops)
		if err != nil {
			return nil, err
		}
		comp.Kind, comp.Update = crdt.Update, u
	}
	if err := r.olog.AppendLocalRecords(ctx, []*crdt.Op{comp}, recs); err != nil {
		return nil, fmt.Errorf("append compensating op: %w", err)
	}
	r.met.compensations.Inc()
	ds.ops = append(ds.ops, comp)
	if err := r.storeOps(ctx, ds); err != nil {
		return comp, fmt.Errorf("store compensated state: %w", err)
	}
	return comp, nil
}

// restoreUpdate is the update that sets every path ops write back to its
// value in doc ($unset where doc has none).
func restoreUpdate(doc bson.D, ops []*crdt.Op) (bson.Raw, error) {
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
	u := setToValues(doc, paths)
	if len(u) == 0 {
		u = bson.D{{Key: "$set", Value: bson.D{}}}
	}
	return bson.Marshal(u)
}

// setToValues is the update that writes paths to their values in doc:
// $set where doc has one, $unset where not (nil: no path). The
// compensation of a refused batch and a conflict's resolution both
// restore a document's fields this way.
func setToValues(doc bson.D, paths []string) bson.D {
	var set, unset bson.D
	for _, p := range paths {
		if v, ok := lookupPath(doc, p); ok {
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
	return u
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
