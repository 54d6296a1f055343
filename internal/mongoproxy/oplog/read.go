package oplog

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"maps"

	bolt "go.etcd.io/bbolt"
	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
)

// Positions and reads: the applied watermarks, the ops still to apply,
// and the ops of an origin from a position.

// MarkApplied records that these ops were applied to the database. The log keeps, per origin, the
// highest seq below which everything has been applied, persisted lazily. An op that can never be
// applied must still be marked (after it is logged and counted), or everything after it is
// re-applied at every start.
func (l *Log) MarkApplied(ops ...*crdt.Op) error {
	l.closeMu.RLock()
	defer l.closeMu.RUnlock()
	if l.closed {
		return ErrClosed
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, op := range ops {
		if op.Origin == "" || op.Seq == 0 {
			return fmt.Errorf("oplog: mark applied: op without origin or seq")
		}
		w := l.applied[op.Origin]
		switch {
		case op.Seq <= w:
			continue
		case op.Seq == w+1:
			w++
			p := l.pending[op.Origin]
			for p[w+1] {
				delete(p, w+1)
				w++
			}
			l.applied[op.Origin] = w
			l.dirty = true
		default:
			if l.pending[op.Origin] == nil {
				l.pending[op.Origin] = map[uint64]bool{}
			}
			l.pending[op.Origin][op.Seq] = true
		}
	}
	return nil
}

// Applied returns the applied watermark of origin.
func (l *Log) Applied(origin string) uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.applied[origin]
}

// Unapplied returns the ops in the log (any origin) above their origin's applied watermark, by
// origin and then seq: at start, these may not have been applied before a crash.
func (l *Log) Unapplied() ([]*crdt.Op, error) {
	l.mu.Lock()
	applied := maps.Clone(l.applied)
	l.mu.Unlock()
	var out []*crdt.Op
	err := l.db.View(func(tx *bolt.Tx) error {
		ops := tx.Bucket(bucketOps)
		return ops.ForEachBucket(func(origin []byte) error {
			c := ops.Bucket(origin).Cursor()
			for k, v := c.Seek(seqKey(applied[string(origin)] + 1)); k != nil; k, v = c.Next() {
				op, err := decodeOp(k, v)
				if err != nil {
					return err
				}
				out = append(out, op)
			}
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("oplog: unapplied: %w", err)
	}
	return out, nil
}

// scanChunk is how many ops Scan reads per read transaction: fn runs outside the transaction, so
// a slow consumer never holds bbolt's mmap lock and stalls commits.
const scanChunk = 256

// Scan calls fn for origin's ops with seq > afterSeq, in seq order, until fn returns an error
// (which Scan returns) or the log ends.
func (l *Log) Scan(origin string, afterSeq uint64, fn func(*crdt.Op) error) error {
	for {
		var chunk []*crdt.Op
		err := l.db.View(func(tx *bolt.Tx) error {
			b := tx.Bucket(bucketOps).Bucket([]byte(origin))
			if b == nil {
				return nil
			}
			c := b.Cursor()
			for k, v := c.Seek(seqKey(afterSeq + 1)); k != nil && len(chunk) < scanChunk; k, v = c.Next() {
				op, err := decodeOp(k, v)
				if err != nil {
					return err
				}
				chunk = append(chunk, op)
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("oplog: scan %s: %w", origin, err)
		}
		for _, op := range chunk {
			if err := fn(op); err != nil {
				return err
			}
			afterSeq = op.Seq
		}
		if len(chunk) < scanChunk {
			return nil
		}
	}
}

// LastSeq returns the highest seq stored for origin (for the local origin: the last one assigned;
// it survives Trim).
func (l *Log) LastSeq(origin string) uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.last[origin]
}

// FirstSeq returns the lowest seq still stored for origin (0 if none): a peer whose position is
// below FirstSeq-1 cannot be served from the log any more and needs an initial sync.
func (l *Log) FirstSeq(origin string) uint64 {
	var first uint64
	_ = l.db.View(func(tx *bolt.Tx) error {
		if b := tx.Bucket(bucketOps).Bucket([]byte(origin)); b != nil {
			if k, _ := b.Cursor().First(); len(k) == 8 {
				first = binary.BigEndian.Uint64(k)
			}
		}
		return nil
	})
	return first
}

// MaxTimestamp returns the newest Timestamp ever appended, so the HLC can resume above it
// (crdt.Clock.Observe) after a restart even if the wall clock went back meanwhile.
func (l *Log) MaxTimestamp() crdt.Timestamp {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.maxTS
}

// AppliedAll returns the applied watermark of every origin the log knows.
func (l *Log) AppliedAll() map[string]uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return maps.Clone(l.applied)
}

// ResetApplied replaces every origin's applied watermark with the one in w (origins missing from
// w go to 0) and persists it at once. It is for an initial sync: the database now holds a copy of
// a peer's documents, which reflect exactly w, so whatever this log believed it had applied
// before no longer holds. Ops stored above the new watermarks stay and count as unapplied.
func (l *Log) ResetApplied(w map[string]uint64) error {
	l.closeMu.RLock()
	defer l.closeMu.RUnlock()
	if l.closed {
		return ErrClosed
	}
	l.mu.Lock()
	next := map[string]uint64{}
	for o := range l.applied {
		next[o] = 0
	}
	for o, s := range w {
		next[o] = s
	}
	l.mu.Unlock()
	err := l.db.Update(func(tx *bolt.Tx) error { return putWatermarks(tx.Bucket(bucketMeta), next) })
	if err != nil {
		return fmt.Errorf("oplog: reset applied watermarks: %w", err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	clear(l.pending)
	maps.Copy(l.applied, next)
	maps.Copy(l.persisted, next)
	l.dirty = false
	return nil
}

// Get returns origin's op with that seq, or nil if the log does not hold it.
func (l *Log) Get(origin string, seq uint64) (*crdt.Op, error) {
	var op *crdt.Op
	err := l.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketOps).Bucket([]byte(origin))
		if b == nil {
			return nil
		}
		v := b.Get(seqKey(seq))
		if v == nil {
			return nil
		}
		var err error
		op, err = decodeOp(seqKey(seq), v)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("oplog: get %s:%d: %w", origin, seq, err)
	}
	return op, nil
}

// ReadRaw returns the stored encodings (crdt.Op stable BSON, copied) of origin's ops with
// seq > afterSeq, in order and contiguous, at most maxOps of them and, beyond the first, at most
// maxBytes in total. It stops early at a gap (a trimmed or missing seq): the caller sees it from
// the returned ops' seqs. The bytes are not validated again; the reader of a peer's message
// must decode and validate them.
func (l *Log) ReadRaw(origin string, afterSeq uint64, maxOps, maxBytes int) (raws [][]byte, err error) {
	err = l.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketOps).Bucket([]byte(origin))
		if b == nil {
			return nil
		}
		c := b.Cursor()
		size := 0
		next := afterSeq + 1
		for k, v := c.Seek(seqKey(next)); k != nil && len(raws) < maxOps; k, v = c.Next() {
			if len(k) != 8 || binary.BigEndian.Uint64(k) != next {
				return nil
			}
			if len(raws) > 0 && size+len(v) > maxBytes {
				return nil
			}
			raws = append(raws, bytes.Clone(v))
			size += len(v)
			next++
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("oplog: read %s after %d: %w", origin, afterSeq, err)
	}
	return raws, nil
}

// Entries returns the number of ops stored.
func (l *Log) Entries() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.entries
}

func seqKey(seq uint64) []byte { return binary.BigEndian.AppendUint64(nil, seq) }

func seqValue(seq uint64) []byte { return binary.BigEndian.AppendUint64(nil, seq) }

func decodeOp(k, v []byte) (*crdt.Op, error) {
	op := &crdt.Op{}
	if err := op.UnmarshalBSON(v); err != nil {
		return nil, fmt.Errorf("entry %x: %w", k, err)
	}
	if len(k) != 8 || binary.BigEndian.Uint64(k) != op.Seq {
		return nil, fmt.Errorf("entry %x holds seq %d", k, op.Seq)
	}
	return op, nil
}

func encodeTS(t crdt.Timestamp) []byte {
	b, _ := bson.Marshal(bson.D{{Key: "w", Value: t.Wall}, {Key: "l", Value: int64(t.Logical)}, {Key: "n", Value: t.Node}})
	return b
}

func decodeTS(b []byte) (crdt.Timestamp, error) {
	var v struct {
		W int64  `bson:"w"`
		L int64  `bson:"l"`
		N string `bson:"n"`
	}
	if err := bson.Unmarshal(b, &v); err != nil {
		return crdt.Timestamp{}, fmt.Errorf("max timestamp: %w", err)
	}
	return crdt.Timestamp{Wall: v.W, Logical: uint32(v.L), Node: v.N}, nil
}
