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
//	bucket "meta" / "format"  -> the file's format version, 8-byte big-endian (see Format)
//	              / "maxts"   -> newest Timestamp ever appended (the HLC resumes above it)
//	              / bucket "last"    / <origin> -> highest seq stored (survives Trim, so local seqs never repeat)
//	              / bucket "applied" / <origin> -> contiguous applied watermark
//	              / bucket "acks"    / <peer>   -> the peer's acknowledged position in our local ops
//	bucket "records" / key -> value   the owner's records, written in an append's transaction
//	                                  (AppendLocalRecords: the core's retryable-write results)
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
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	bolt "go.etcd.io/bbolt"

	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
)

// Format is the version of the op log's layout and of the stored op
// encoding (crdt.Op's stable BSON; golden files in testdata keep it from
// changing by accident). It is recorded in the "meta" bucket when a file is
// created; a file without it was written before formats were recorded and
// is format 1, which is the same layout. Every record of a file has the
// file's format, so records carry no version of their own.
//
// Open reads formats MinFormat..Format. A release that changes the format
// reads the one before it (so an upgrade by one release keeps its log) and
// rewrites the file or records the new format; a file of a newer format
// than the binary knows is refused with an error saying so, never misread.
const (
	Format    = 1
	MinFormat = 1
)

// ErrFormat is wrapped by Open's error for a file of a format this binary
// does not read.
var ErrFormat = errors.New("oplog: unsupported file format")

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
	keyFormat     = []byte("format")
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
	recs   []Record       // written in the same transaction (AppendLocalRecords)
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
		if err := checkFormat(meta, l.opts.Path); err != nil {
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

// checkFormat refuses a file of a format this binary does not read, and
// records the format in a file that has none (new, or written before
// formats were recorded: both are format 1).
func checkFormat(meta *bolt.Bucket, path string) error {
	v := meta.Get(keyFormat)
	if v == nil {
		return meta.Put(keyFormat, binary.BigEndian.AppendUint64(nil, Format))
	}
	if len(v) != 8 {
		return fmt.Errorf("%w: bad format record of %d bytes", ErrFormat, len(v))
	}
	switch f := binary.BigEndian.Uint64(v); {
	case f > Format:
		return fmt.Errorf("%w: %s is of format %d, written by a newer release; this binary reads formats %d to %d: run a release of format %d or newer (downgrade by one release at most, and only to one that reads the format)",
			ErrFormat, path, f, MinFormat, Format, f)
	case f < MinFormat:
		return fmt.Errorf("%w: %s is of format %d; this binary reads formats %d to %d: upgrade one release at a time, starting a release that reads format %d on it first",
			ErrFormat, path, f, MinFormat, Format, f)
	}
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

const (
	stateIdle    committerState = iota // waiting for a request or the flush tick
	stateCollect                       // draining what is already queued into the batch
	stateCommit                        // writing and fsyncing the batch
	stateDone                          // queue closed and drained
)
