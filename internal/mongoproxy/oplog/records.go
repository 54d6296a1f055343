package oplog

import (
	"bytes"
	"context"
	"fmt"

	bolt "go.etcd.io/bbolt"

	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
)

// Records are small key/value entries the log's owner keeps beside the
// ops, written in the same transaction as an append so that they are
// durable exactly when the ops are: the replica core keeps there what it
// knows of retryable writes (see package replica, "Retryable writes"). The
// log does not interpret them; they never travel with ops and Trim leaves
// them alone.

var bucketRecords = []byte("records")

// Record is one change to the records: Value stored under Key, or, with
// Delete, Key removed; with DeletePrefix every key that starts with Key
// removed.
type Record struct {
	Key          []byte
	Value        []byte
	Delete       bool
	DeletePrefix bool
}

// AppendLocalRecords is AppendLocal with records written in the same
// transaction (in order, after the ops): both are durable, or neither. ops
// may be empty (records alone, still fsync'd and shared with concurrent
// appends).
func (l *Log) AppendLocalRecords(ctx context.Context, ops []*crdt.Op, recs []Record) error {
	for _, op := range ops {
		op.Origin = l.opts.Origin
		if err := op.Validate(); err != nil {
			return fmt.Errorf("oplog: append: %w", err)
		}
	}
	for _, r := range recs {
		if len(r.Key) == 0 || len(r.Key) > bolt.MaxKeySize {
			return fmt.Errorf("oplog: append: record key of %d bytes", len(r.Key))
		}
	}
	if len(ops) == 0 && len(recs) == 0 {
		return nil
	}
	return l.enqueue(&request{ctx: ctx, ops: ops, local: true, recs: recs, result: make(chan error, 1)})
}

// RecordValue returns a copy of the record stored under key (nil: none).
func (l *Log) RecordValue(key []byte) ([]byte, error) {
	var v []byte
	err := l.db.View(func(tx *bolt.Tx) error {
		if b := tx.Bucket(bucketRecords); b != nil {
			v = bytes.Clone(b.Get(key))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("oplog: read record: %w", err)
	}
	return v, nil
}

// ForEachRecord calls fn for every record whose key starts with prefix, in
// key order; key and value are valid only during the call.
func (l *Log) ForEachRecord(prefix []byte, fn func(key, value []byte) error) error {
	err := l.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketRecords)
		if b == nil {
			return nil
		}
		c := b.Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			if err := fn(k, v); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("oplog: read records: %w", err)
	}
	return nil
}

// putRecords applies a request's records inside the commit transaction.
func putRecords(tx *bolt.Tx, recs []Record) error {
	b, err := tx.CreateBucketIfNotExists(bucketRecords)
	if err != nil {
		return err
	}
	for _, r := range recs {
		switch {
		case r.DeletePrefix:
			c := b.Cursor()
			for k, _ := c.Seek(r.Key); k != nil && bytes.HasPrefix(k, r.Key); k, _ = c.Seek(r.Key) {
				if err := c.Delete(); err != nil {
					return err
				}
			}
		case r.Delete:
			if err := b.Delete(r.Key); err != nil {
				return err
			}
		default:
			if err := b.Put(r.Key, r.Value); err != nil {
				return err
			}
		}
	}
	return nil
}
