// Package oplog is the durable operation log of the Mongo layer: every captured write is appended
// here, fsync'd, before it is applied to the database and before the client is answered; peers'
// operations are stored here before they are applied; after a crash, whatever may not have been
// applied is applied again (Unapplied), which is safe because crdt.Apply is idempotent.
//
// # Why bbolt
//
// go.etcd.io/bbolt is one file, pure Go, ACID with copy-on-write B+trees and no background
// compaction or write-ahead log to tune, and has been battle-tested under etcd for years. Its
// write model is exactly what a log needs: one writer at a time, and one fsync per committed
// read-write transaction. That makes group commit simple and effective: a single committer
// goroutine takes every append queued while the previous transaction was being fsync'd and writes
// them all in one transaction, so N concurrent appenders share one fsync instead of paying for N.
// (An LSM such as pebble batches the same way through its WAL but brings compactions, many files
// and far more surface than an append-mostly log needs.)
//
// # Layout
//
//	bucket "ops"  / bucket <origin> / 8-byte big-endian seq -> crdt.Op stable BSON
//	bucket "meta" / "maxts"   -> newest Timestamp ever appended (the HLC resumes above it)
//	              / bucket "last"    / <origin> -> highest seq stored (survives Trim, so local seqs never repeat)
//	              / bucket "applied" / <origin> -> contiguous applied watermark
//	              / bucket "acks"    / <peer>   -> the peer's acknowledged position in our local ops
//
// # Group commit
//
// Append requests go through a channel to one committer goroutine, a small state machine:
// idle (block for the first request or the watermark flush tick) → collect (take whatever else is
// already queued, without waiting, up to MaxBatch ops; drop requests whose context is already
// cancelled) → commit (one bbolt transaction + fsync; local ops get their seqs here, in commit
// order) → reply → idle again, or done once Close has closed the queue and it is drained.
// An Append that returns nil is durable; one that returns an error wrote nothing (a request whose
// context is cancelled after it was taken into a batch still completes: it is then durable).
//
// The applied watermark is persisted lazily (with the next commit, every FlushInterval, and on
// Close): a lagging watermark only makes Unapplied return ops that were already applied. With
// Options.SyncApplied (a database that does not make each write durable on return) it is
// persisted only after that sync, so the log keeps every op until the database holds it durably.
// Trim only removes ops below the persisted watermarks.
package oplog

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	bolt "go.etcd.io/bbolt"
	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
)

// Options configures a Log.
type Options struct {
	Path   string // the bbolt file (created if missing); required
	Origin string // this node's id: the origin of local ops; required
	// MaxBatch caps the ops written in one transaction (default 1024). A single request larger than
	// that is still written whole.
	MaxBatch int
	// FlushInterval is how often a changed applied watermark is persisted when no append carries it
	// (default 1s).
	FlushInterval time.Duration
	// LockTimeout bounds the wait for the file lock held by another process (default 5s).
	LockTimeout time.Duration
	// SyncApplied, when set, is called before applied watermarks are persisted and must make
	// durable every database write completed before the call (an embedded database that does
	// not fsync each commit, say). Watermarks are then persisted only by the flush tick, Trim
	// and Close, after it returns nil; Trim removes only ops below persisted watermarks. So an
	// op leaves the log only once the database holds it durably, and after a power loss
	// whatever the database lost is applied again from the log.
	SyncApplied func() error
}

// ErrClosed is returned by operations on a closed Log.
var ErrClosed = errors.New("oplog: closed")

var (
	bucketOps     = []byte("ops")
	bucketMeta    = []byte("meta")
	bucketLast    = []byte("last")
	bucketApplied = []byte("applied")
	bucketAcks    = []byte("acks")
	keyMaxTS      = []byte("maxts")
)

// Log is the durable op log. Safe for concurrent use.
type Log struct {
	opts Options
	db   *bolt.DB
	log  *slog.Logger
	m    *metrics

	// closeMu guards sending on reqs against Close closing it: senders hold it shared.
	closeMu sync.RWMutex
	closed  bool
	reqs    chan *request
	done    chan struct{} // closed when the committer has exited

	mu        sync.Mutex
	last      map[string]uint64 // highest seq stored per origin
	applied   map[string]uint64 // contiguous applied watermark per origin
	pending   map[string]map[uint64]bool
	dirty     bool // applied changed since last persisted
	acks      map[string]uint64
	maxTS     crdt.Timestamp
	entries   int64
	persisted map[string]uint64 // applied watermark as last written
}

type request struct {
	ctx    context.Context
	ops    []*crdt.Op
	local  bool
	fence  crdt.Timestamp // raise the persisted max timestamp to at least this (Fence)
	result chan error
}

// Open opens (creating if needed) the log at opts.Path and starts its committer.
func Open(opts Options, log *slog.Logger, reg prometheus.Registerer) (*Log, error) {
	if opts.Path == "" || opts.Origin == "" {
		return nil, errors.New("oplog: Path and Origin are required")
	}
	if opts.MaxBatch <= 0 {
		opts.MaxBatch = 1024
	}
	if opts.FlushInterval <= 0 {
		opts.FlushInterval = time.Second
	}
	if opts.LockTimeout <= 0 {
		opts.LockTimeout = 5 * time.Second
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	db, err := bolt.Open(opts.Path, 0o600, &bolt.Options{
		Timeout: opts.LockTimeout,
		// The freelist is rebuilt by scanning at open instead of being written by every commit:
		// less to fsync per append.
		NoFreelistSync: true,
		FreelistType:   bolt.FreelistMapType,
	})
	if err != nil {
		return nil, fmt.Errorf("oplog: open %s: %w", opts.Path, err)
	}
	l := &Log{
		opts: opts, db: db, log: log.With("component", "oplog"),
		reqs: make(chan *request, 256), done: make(chan struct{}),
		last: map[string]uint64{}, applied: map[string]uint64{}, pending: map[string]map[uint64]bool{},
		acks: map[string]uint64{}, persisted: map[string]uint64{},
	}
	if err := l.load(); err != nil {
		db.Close()
		return nil, err
	}
	if l.m, err = newMetrics(reg, l); err != nil {
		db.Close()
		return nil, err
	}
	_ = db.View(func(tx *bolt.Tx) error { l.m.bytes.Set(float64(tx.Size())); return nil })
	go l.run()
	l.log.Info("op log open", "path", opts.Path, "entries", l.entries, "last_local_seq", l.last[opts.Origin], "max_ts", l.maxTS)
	return l, nil
}

func (l *Log) load() error {
	err := l.db.Update(func(tx *bolt.Tx) error {
		ops, err := tx.CreateBucketIfNotExists(bucketOps)
		if err != nil {
			return err
		}
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		for name, into := range map[string]map[string]uint64{string(bucketLast): l.last, string(bucketApplied): l.applied, string(bucketAcks): l.acks} {
			b, err := meta.CreateBucketIfNotExists([]byte(name))
			if err != nil {
				return err
			}
			if err := b.ForEach(func(k, v []byte) error {
				if len(v) != 8 {
					return fmt.Errorf("bad %s value for %q", name, k)
				}
				into[string(k)] = binary.BigEndian.Uint64(v)
				return nil
			}); err != nil {
				return err
			}
		}
		if v := meta.Get(keyMaxTS); v != nil {
			if l.maxTS, err = decodeTS(v); err != nil {
				return err
			}
		}
		return ops.ForEachBucket(func(origin []byte) error {
			b := ops.Bucket(origin)
			l.entries += int64(b.Stats().KeyN)
			// The "last" record is written in the same transaction as the ops, so it is never
			// behind; this only guards against a file from an older layout.
			if k, _ := b.Cursor().Last(); k != nil && binary.BigEndian.Uint64(k) > l.last[string(origin)] {
				l.last[string(origin)] = binary.BigEndian.Uint64(k)
			}
			return nil
		})
	})
	if err != nil {
		return fmt.Errorf("oplog: load %s: %w", l.opts.Path, err)
	}
	maps.Copy(l.persisted, l.applied)
	return nil
}

// Close stops accepting appends, commits those already queued, persists the applied watermark and
// closes the file.
func (l *Log) Close() error {
	l.closeMu.Lock()
	if l.closed {
		l.closeMu.Unlock()
		return ErrClosed
	}
	l.closed = true
	close(l.reqs) // no sender is mid-send: they hold closeMu shared
	l.closeMu.Unlock()
	<-l.done
	if err := l.db.Close(); err != nil {
		return fmt.Errorf("oplog: close: %w", err)
	}
	return nil
}

// AppendLocal assigns the next local Seq to each op (setting op.Seq and op.Origin), writes them
// and fsyncs, sharing the transaction with concurrent callers, and returns once they are durable.
// On error nothing was written.
func (l *Log) AppendLocal(ctx context.Context, ops []*crdt.Op) error {
	for _, op := range ops {
		op.Origin = l.opts.Origin
		if err := op.Validate(); err != nil {
			return fmt.Errorf("oplog: append: %w", err)
		}
	}
	return l.submit(ctx, ops, true)
}

// AppendRemote stores peers' ops durably. Ops already stored, or at or below their origin's
// applied watermark, are ignored.
func (l *Log) AppendRemote(ctx context.Context, ops []*crdt.Op) error {
	for _, op := range ops {
		if err := op.Validate(); err != nil {
			return fmt.Errorf("oplog: append remote: %w", err)
		}
		if op.Origin == "" || op.Seq == 0 {
			return fmt.Errorf("oplog: append remote: op without origin or seq")
		}
	}
	return l.submit(ctx, ops, false)
}

// Fence durably raises the newest timestamp the log remembers (MaxTimestamp) to at least ts,
// sharing a transaction with concurrent appends. The HLC resumes above MaxTimestamp after a
// restart, so once Fence returns no op this node creates later, even after a crash, has a
// timestamp at or below ts: replication announces clock readings to peers only once they are
// fenced (see package repl).
func (l *Log) Fence(ctx context.Context, ts crdt.Timestamp) error {
	if ts.Compare(l.MaxTimestamp()) <= 0 {
		return nil
	}
	return l.enqueue(&request{ctx: ctx, fence: ts, result: make(chan error, 1)})
}

func (l *Log) submit(ctx context.Context, ops []*crdt.Op, local bool) error {
	if len(ops) == 0 {
		return nil
	}
	return l.enqueue(&request{ctx: ctx, ops: ops, local: local, result: make(chan error, 1)})
}

func (l *Log) enqueue(r *request) error {
	ctx := r.ctx
	l.closeMu.RLock()
	if l.closed {
		l.closeMu.RUnlock()
		return ErrClosed
	}
	select {
	case l.reqs <- r:
	case <-ctx.Done():
		l.closeMu.RUnlock()
		return fmt.Errorf("oplog: append: %w", ctx.Err())
	}
	l.closeMu.RUnlock()
	// Wait for the outcome even if ctx ends now: the committer decides whether the request made it
	// into a transaction, and the caller must know whether the ops are durable.
	return <-r.result
}

type committerState int

const (
	stateIdle    committerState = iota // waiting for a request or the flush tick
	stateCollect                       // draining what is already queued into the batch
	stateCommit                        // writing and fsyncing the batch
	stateDone                          // queue closed and drained
)

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

// commit writes one batch in one transaction.
func (l *Log) commit(batch []*request) error {
	l.mu.Lock()
	last := maps.Clone(l.last)
	applied := maps.Clone(l.applied)
	var flush map[string]uint64
	if l.dirty && l.opts.SyncApplied == nil {
		flush = applied
	}
	maxTS := l.maxTS
	l.mu.Unlock()

	type assigned struct {
		op  *crdt.Op
		seq uint64
	}
	var local []assigned
	var written int
	var sizeBytes int64
	start := time.Now()
	err := l.db.Update(func(tx *bolt.Tx) error {
		ops := tx.Bucket(bucketOps)
		touched := map[string]bool{}
		for _, r := range batch {
			for _, op := range r.ops {
				origin := op.Origin
				seq := op.Seq
				b, err := ops.CreateBucketIfNotExists([]byte(origin))
				if err != nil {
					return err
				}
				if r.local {
					seq = last[origin] + 1
				} else if seq <= applied[origin] || b.Get(seqKey(seq)) != nil {
					continue // duplicate
				}
				// Encode with the seq being assigned without touching the caller's op until the
				// transaction has committed.
				enc := *op
				enc.Seq = seq
				v, err := enc.MarshalBSON()
				if err != nil {
					return err
				}
				if err := b.Put(seqKey(seq), v); err != nil {
					return err
				}
				if seq > last[origin] {
					last[origin] = seq
					touched[origin] = true
				}
				if op.TS.Compare(maxTS) > 0 {
					maxTS = op.TS
				}
				if r.local {
					local = append(local, assigned{op, seq})
				}
				written++
			}
			if r.fence.Compare(maxTS) > 0 {
				maxTS = r.fence
			}
		}
		meta := tx.Bucket(bucketMeta)
		lb := meta.Bucket(bucketLast)
		for origin := range touched {
			if err := lb.Put([]byte(origin), seqValue(last[origin])); err != nil {
				return err
			}
		}
		if err := meta.Put(keyMaxTS, encodeTS(maxTS)); err != nil {
			return err
		}
		if flush != nil {
			if err := putWatermarks(meta, flush); err != nil {
				return err
			}
		}
		sizeBytes = tx.Size()
		return nil
	})
	l.m.commitSeconds.Observe(time.Since(start).Seconds())
	if err != nil {
		l.m.commitErrors.Inc()
		l.log.Error("op log commit failed", "ops", len(batch), "err", err)
		return fmt.Errorf("oplog: commit: %w", err)
	}
	for _, a := range local {
		a.op.Seq = a.seq
	}
	l.mu.Lock()
	for o, s := range last {
		if s > l.last[o] {
			l.last[o] = s
		}
	}
	if maxTS.Compare(l.maxTS) > 0 {
		l.maxTS = maxTS
	}
	l.entries += int64(written)
	if flush != nil {
		l.markPersisted(flush)
	}
	l.mu.Unlock()
	nLocal := len(local)
	l.m.appends.WithLabelValues("local").Add(float64(nLocal))
	l.m.appends.WithLabelValues("remote").Add(float64(written - nLocal))
	l.m.batchOps.Observe(float64(written))
	l.m.bytes.Set(float64(sizeBytes))
	return nil
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

// SetPeerAck durably records that peer has our local ops up to seq (it never moves back).
func (l *Log) SetPeerAck(peer string, seq uint64) error {
	if peer == "" {
		return errors.New("oplog: peer ack without a peer")
	}
	l.mu.Lock()
	if seq <= l.acks[peer] && l.hasAck(peer) {
		l.mu.Unlock()
		return nil
	}
	l.mu.Unlock()
	err := l.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketMeta).Bucket(bucketAcks)
		if v := b.Get([]byte(peer)); v != nil && binary.BigEndian.Uint64(v) >= seq {
			return nil
		}
		return b.Put([]byte(peer), seqValue(seq))
	})
	if err != nil {
		return fmt.Errorf("oplog: set peer ack: %w", err)
	}
	l.mu.Lock()
	if seq > l.acks[peer] || !l.hasAck(peer) {
		l.acks[peer] = seq
	}
	l.mu.Unlock()
	return nil
}

func (l *Log) hasAck(peer string) bool { _, ok := l.acks[peer]; return ok }

// RemovePeer forgets a peer's position (a node that left the cluster for good), so it no longer
// holds back Trim.
func (l *Log) RemovePeer(peer string) error {
	err := l.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Bucket(bucketAcks).Delete([]byte(peer)) })
	if err != nil {
		return fmt.Errorf("oplog: remove peer: %w", err)
	}
	l.mu.Lock()
	delete(l.acks, peer)
	l.mu.Unlock()
	return nil
}

// PeerAcks returns every known peer's acknowledged position.
func (l *Log) PeerAcks() map[string]uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return maps.Clone(l.acks)
}

// Trim deletes what no one needs any more: local ops at or below both the applied watermark and
// every known peer's acknowledgement (with no known peer, the applied watermark alone), and other
// origins' ops at or below their applied watermark (their origin keeps them for its peers).
func (l *Log) Trim() (removed int, err error) { return l.TrimBelow(math.MaxUint64) }

// TrimBelow is Trim with local ops above maxLocal kept in any case (replication keeps a
// retention window so a node doing an initial sync can still stream from a peer's position).
func (l *Log) TrimBelow(maxLocal uint64) (removed int, err error) {
	// Only what is durably applied may go: persist the watermark first.
	l.flushWatermarks()
	l.mu.Lock()
	limits := map[string]uint64{}
	for origin, w := range l.persisted {
		limits[origin] = w
	}
	local := min(l.persisted[l.opts.Origin], maxLocal)
	for _, a := range l.acks {
		local = min(local, a)
	}
	limits[l.opts.Origin] = local
	l.mu.Unlock()
	var sizeBytes int64
	err = l.db.Update(func(tx *bolt.Tx) error {
		ops := tx.Bucket(bucketOps)
		for _, origin := range slices.Sorted(maps.Keys(limits)) {
			b := ops.Bucket([]byte(origin))
			if b == nil || limits[origin] == 0 {
				continue
			}
			c := b.Cursor()
			for k, _ := c.First(); k != nil && binary.BigEndian.Uint64(k) <= limits[origin]; k, _ = c.First() {
				if err := c.Delete(); err != nil {
					return err
				}
				removed++
			}
		}
		sizeBytes = tx.Size()
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("oplog: trim: %w", err)
	}
	l.mu.Lock()
	l.entries -= int64(removed)
	l.mu.Unlock()
	l.m.bytes.Set(float64(sizeBytes))
	if removed > 0 {
		l.log.Debug("op log trimmed", "removed", removed)
	}
	return removed, nil
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
