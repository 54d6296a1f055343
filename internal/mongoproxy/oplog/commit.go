package oplog

import (
	"fmt"
	"maps"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
)

// The committer: one goroutine takes append requests from a channel and
// commits them in groups (one fsync per group), see the package
// documentation.

type committerState int

func (l *Log) run() {
	defer close(l.done)
	tick := time.NewTicker(l.opts.FlushInterval)
	defer tick.Stop()
	var batch []*request
	nOps := 0
	closing := false
	take := func(r *request) {
		if err := r.ctx.Err(); err != nil {
			r.result <- fmt.Errorf("oplog: append: %w", err) // never written
			return
		}
		batch = append(batch, r)
		nOps += len(r.ops)
	}
	state := stateIdle
	for {
		switch state {
		case stateIdle:
			select {
			case r, ok := <-l.reqs:
				if !ok {
					state = stateDone
					continue
				}
				take(r)
				state = stateCollect
			case <-tick.C:
				l.flushWatermarks()
			}
		case stateCollect:
		collect:
			for nOps < l.opts.MaxBatch {
				select {
				case r, ok := <-l.reqs:
					if !ok {
						closing = true
						break collect
					}
					take(r)
				default:
					break collect
				}
			}
			state = stateCommit
		case stateCommit:
			if len(batch) > 0 {
				err := l.commit(batch)
				for _, r := range batch {
					r.result <- err
				}
			}
			clear(batch)
			batch, nOps = batch[:0], 0
			state = stateIdle
			if closing {
				state = stateDone
			}
		case stateDone:
			l.flushWatermarks()
			return
		}
	}
}

// commitBatch is one transaction's view of the log while it writes a
// batch: copies of the positions it moves, published (publish) only once
// the transaction has committed.
type commitBatch struct {
	last    map[string]uint64
	applied map[string]uint64
	flush   map[string]uint64 // watermarks persisted with this commit (nil: none)
	maxTS   crdt.Timestamp
	touched map[string]bool // origins whose last seq moved
	local   []assigned      // local ops and the seqs they get
	written int
	size    int64
}

type assigned struct {
	op  *crdt.Op
	seq uint64
}

func (l *Log) commit(batch []*request) error {
	l.mu.Lock()
	cb := &commitBatch{last: maps.Clone(l.last), applied: maps.Clone(l.applied), maxTS: l.maxTS, touched: map[string]bool{}}
	if l.dirty && l.opts.SyncApplied == nil {
		cb.flush = cb.applied
	}
	l.mu.Unlock()

	start := time.Now()
	err := l.db.Update(func(tx *bolt.Tx) error { return cb.write(tx, batch) })
	l.m.commitSeconds.Observe(time.Since(start).Seconds())
	if err != nil {
		l.m.commitErrors.Inc()
		l.log.Error("op log commit failed", "ops", len(batch), "err", err)
		return fmt.Errorf("oplog: commit: %w", err)
	}
	l.publish(cb)
	return nil
}

// write stores the batch's ops (local ones get the next seqs of their
// origin, remote duplicates are skipped), the positions and the newest
// timestamp.
func (cb *commitBatch) write(tx *bolt.Tx, batch []*request) error {
	ops := tx.Bucket(bucketOps)
	for _, r := range batch {
		for _, op := range r.ops {
			if err := cb.put(ops, r.local, op); err != nil {
				return err
			}
		}
		if len(r.recs) > 0 {
			if err := putRecords(tx, r.recs); err != nil {
				return err
			}
		}
		if r.fence.Compare(cb.maxTS) > 0 {
			cb.maxTS = r.fence
		}
	}
	meta := tx.Bucket(bucketMeta)
	lb := meta.Bucket(bucketLast)
	for origin := range cb.touched {
		if err := lb.Put([]byte(origin), seqValue(cb.last[origin])); err != nil {
			return err
		}
	}
	if err := meta.Put(keyMaxTS, encodeTS(cb.maxTS)); err != nil {
		return err
	}
	if cb.flush != nil {
		if err := putWatermarks(meta, cb.flush); err != nil {
			return err
		}
	}
	cb.size = tx.Size()
	return nil
}

func (cb *commitBatch) put(ops *bolt.Bucket, local bool, op *crdt.Op) error {
	origin := op.Origin
	seq := op.Seq
	b, err := ops.CreateBucketIfNotExists([]byte(origin))
	if err != nil {
		return err
	}
	if local {
		seq = cb.last[origin] + 1
	} else if seq <= cb.applied[origin] || b.Get(seqKey(seq)) != nil {
		return nil // duplicate
	}
	// Encode with the seq being assigned without touching the caller's op
	// until the transaction has committed.
	enc := *op
	enc.Seq = seq
	v, err := enc.MarshalBSON()
	if err != nil {
		return err
	}
	if err := b.Put(seqKey(seq), v); err != nil {
		return err
	}
	if seq > cb.last[origin] {
		cb.last[origin] = seq
		cb.touched[origin] = true
	}
	if op.TS.Compare(cb.maxTS) > 0 {
		cb.maxTS = op.TS
	}
	if local {
		cb.local = append(cb.local, assigned{op, seq})
	}
	cb.written++
	return nil
}

// publish makes a committed batch visible: the local ops get their seqs,
// the log its positions.
func (l *Log) publish(cb *commitBatch) {
	for _, a := range cb.local {
		a.op.Seq = a.seq
	}
	l.mu.Lock()
	for o, s := range cb.last {
		if s > l.last[o] {
			l.last[o] = s
		}
	}
	if cb.maxTS.Compare(l.maxTS) > 0 {
		l.maxTS = cb.maxTS
	}
	l.entries += int64(cb.written)
	if cb.flush != nil {
		l.markPersisted(cb.flush)
	}
	l.mu.Unlock()
	nLocal := len(cb.local)
	l.m.appends.WithLabelValues("local").Add(float64(nLocal))
	l.m.appends.WithLabelValues("remote").Add(float64(cb.written - nLocal))
	l.m.batchOps.Observe(float64(cb.written))
	l.m.bytes.Set(float64(cb.size))
}

// markPersisted records what was written; called with l.mu held.
func (l *Log) markPersisted(w map[string]uint64) {
	maps.Copy(l.persisted, w)
	l.dirty = false
	for o, s := range l.applied {
		if l.persisted[o] != s {
			l.dirty = true // advanced meanwhile
		}
	}
}

func putWatermarks(meta *bolt.Bucket, w map[string]uint64) error {
	ab := meta.Bucket(bucketApplied)
	for origin, seq := range w {
		if err := ab.Put([]byte(origin), seqValue(seq)); err != nil {
			return err
		}
	}
	return nil
}

// flushWatermarks persists the applied watermark if it changed since it was last written.
func (l *Log) flushWatermarks() {
	l.mu.Lock()
	if !l.dirty {
		l.mu.Unlock()
		return
	}
	w := maps.Clone(l.applied)
	l.mu.Unlock()
	if l.opts.SyncApplied != nil {
		// Every op in w was applied before this point: make the database
		// hold it durably before the log forgets it needs applying.
		if err := l.opts.SyncApplied(); err != nil {
			l.log.Error("op log: database sync failed; applied watermark not persisted", "err", err)
			return
		}
	}
	err := l.db.Update(func(tx *bolt.Tx) error { return putWatermarks(tx.Bucket(bucketMeta), w) })
	if err != nil {
		l.log.Error("op log: persist applied watermark", "err", err)
		return
	}
	l.mu.Lock()
	l.markPersisted(w)
	l.mu.Unlock()
}
