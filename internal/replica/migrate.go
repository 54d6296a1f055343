package replica

import (
	"context"
	"errors"
	"fmt"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// keyFormat is the form of the keys this core stores (see keys.go). The
// database records the form its keys have in edgenode_meta.repl
// {_id: "keys", format}; a database without that record may hold keys of
// format 1, which migrateKeys converts.
const keyFormat = 2

// migrateKeys rewrites the tombstones and DDL records stored with keys of
// format 1 (namespace NUL id) under their current keys, then records the
// format so that later starts skip the scan. It runs at Open, before
// anything reads them. A crash part-way is harmless: each record is written
// under its new key before its old one is removed, and the next start
// scans again.
func (r *Replica) migrateKeys(ctx context.Context) error {
	var rec struct {
		Format int `bson:"format"`
	}
	err := r.metaColl(replStateColl).FindOne(ctx, bson.D{{Key: "_id", Value: "keys"}}).Decode(&rec)
	if err != nil && !errors.Is(err, mongo.ErrNoDocuments) {
		return fmt.Errorf("read key format: %w", err)
	}
	if rec.Format >= keyFormat {
		return nil
	}
	total := 0
	for _, c := range []string{tombstoneColl, ddlColl} {
		// Until a pass finds nothing: a cursor need not see every record
		// while the collection changes under it.
		for {
			n, err := r.migratePass(ctx, c)
			if err != nil {
				return err
			}
			total += n
			if n == 0 {
				break
			}
		}
	}
	if total > 0 {
		r.log.Info("converted stored keys to the current form", "records", total, "format", keyFormat)
	}
	_, err = r.metaColl(replStateColl).ReplaceOne(ctx, bson.D{{Key: "_id", Value: "keys"}},
		bson.D{{Key: "_id", Value: "keys"}, {Key: "format", Value: keyFormat}}, options.Replace().SetUpsert(true))
	if err != nil {
		return fmt.Errorf("record key format: %w", err)
	}
	return nil
}

// migratePass rekeys every record of meta collection c whose _id is not
// its current key, and returns how many it rewrote.
func (r *Replica) migratePass(ctx context.Context, c string) (int, error) {
	coll := r.metaColl(c)
	cur, err := coll.Find(ctx, bson.D{})
	if err != nil {
		return 0, fmt.Errorf("convert keys of %s.%s: %w", MetaDB, c, err)
	}
	defer cur.Close(ctx)
	n := 0
	for cur.Next(ctx) {
		doc, old, err := rekey(c, cur.Current)
		if err != nil {
			return n, fmt.Errorf("convert keys of %s.%s: %w", MetaDB, c, err)
		}
		if doc == nil {
			continue
		}
		newID := doc.Lookup("_id")
		if _, err := coll.ReplaceOne(ctx, bson.D{{Key: "_id", Value: newID}}, doc, options.Replace().SetUpsert(true)); err != nil {
			return n, fmt.Errorf("convert key %q of %s.%s: %w", old, MetaDB, c, err)
		}
		if _, err := coll.DeleteOne(ctx, bson.D{{Key: "_id", Value: old}}); err != nil {
			return n, fmt.Errorf("convert key %q of %s.%s: %w", old, MetaDB, c, err)
		}
		n++
	}
	if err := cur.Err(); err != nil {
		return n, fmt.Errorf("convert keys of %s.%s: %w", MetaDB, c, err)
	}
	return n, nil
}

// rekey returns record doc of meta collection c (tombstoneColl or ddlColl)
// under its current key, and its old key, when its _id is its key of
// format 1; nil when its _id is already its current key. Any other _id is
// an error: the record does not belong to the namespace it names.
func rekey(c string, doc bson.Raw) (bson.Raw, string, error) {
	id, _ := doc.Lookup("_id").StringValueOK()
	ns, _ := doc.Lookup("ns").StringValueOK()
	var cur, legacy string
	switch c {
	case tombstoneColl:
		v, err := doc.LookupErr("id")
		if err != nil {
			return nil, id, fmt.Errorf("tombstone %q has no id", id)
		}
		cur, legacy = docKey(ns, v), legacyDocKey(ns, v)
	case ddlColl:
		key, _ := doc.Lookup("key").StringValueOK()
		cur, legacy = ddlID(ns, key), legacyDDLID(ns, key)
	default:
		return nil, id, fmt.Errorf("no keys in %s", c)
	}
	switch id {
	case cur:
		return nil, id, nil
	case legacy:
	default:
		return nil, id, fmt.Errorf("record %q is not keyed by its namespace %q", id, ns)
	}
	elems, err := doc.Elements()
	if err != nil {
		return nil, id, err
	}
	out := bson.D{{Key: "_id", Value: cur}}
	for _, e := range elems {
		if e.Key() != "_id" {
			out = append(out, bson.E{Key: e.Key(), Value: e.Value()})
		}
	}
	b, err := bson.Marshal(out)
	return b, id, err
}
