package archive

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgenode/edgenode/internal/backup"
	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
)

// Source is the replica the archiver reads: *replica.Replica.
type Source interface {
	backup.Source
	Subscribe() (notify <-chan struct{}, cancel func())
	ReadOps(origin string, after uint64, maxOps, maxBytes int) ([][]byte, error)
	LastSeq() uint64
	FirstSeq() uint64
	MaxTimestamp() crdt.Timestamp
}

// Options configure an Archiver.
type Options struct {
	Store Store
	// Node is this node's id (base snapshots are named with it).
	Node string
	// SegmentBytes and SegmentInterval cut a segment: once its ops take
	// this many bytes (before compression), or once its oldest op has
	// waited this long, whichever comes first (defaults 16 MiB, 10 s).
	SegmentBytes    int
	SegmentInterval time.Duration
	// BaseInterval is how often this node writes a base snapshot
	// (default 24h).
	BaseInterval time.Duration
	// Retention keeps what a restore to any time in the last Retention
	// needs; older segments and bases of this node are deleted. 0 keeps
	// everything.
	Retention time.Duration
	Log       *slog.Logger
}

func (o *Options) defaults() {
	if o.SegmentBytes <= 0 {
		o.SegmentBytes = 16 << 20
	}
	if o.SegmentInterval <= 0 {
		o.SegmentInterval = 10 * time.Second
	}
	if o.BaseInterval <= 0 {
		o.BaseInterval = 24 * time.Hour
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
}

// Archiver streams this node's own ops to the store in segments and
// writes periodic base snapshots. Its position (the last op archived) is
// a floor for the op log's trimming (Floor): an op leaves the log only
// once it is archived.
type Archiver struct {
	opts   Options
	src    Source
	origin string
	met    *metrics

	// archived is the seq of the last op stored in a segment.
	archived atomic.Uint64

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// New returns an archiver of src's own ops. reg may be nil; a failed
// registration of its metrics (a second Archiver on one registry) is an
// error.
func New(opts Options, src Source, reg prometheus.Registerer) (*Archiver, error) {
	opts.defaults()
	met, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	return &Archiver{opts: opts, src: src, origin: src.Origin(), met: met}, nil
}

// Floor is the trim floor (see repl.Options.TrimFloor): this node's ops
// above the archived position stay in the op log.
func (a *Archiver) Floor() map[string]uint64 {
	return map[string]uint64{a.origin: a.archived.Load()}
}

// Start finds where the archive of this origin ends and starts archiving
// from there, and writing base snapshots.
func (a *Archiver) Start(ctx context.Context) error {
	segs, err := listSegments(ctx, a.opts.Store, a.origin)
	if err != nil {
		return err
	}
	if s := segs[a.origin]; len(s) > 0 {
		a.archived.Store(s[len(s)-1].Last)
	}
	a.met.archived.Set(float64(a.archived.Load()))
	bases, err := listBases(ctx, a.opts.Store)
	if err != nil {
		return err
	}
	var lastBase time.Time
	for _, b := range bases {
		if b.Mark.Node == a.opts.Node && b.Mark.Done.After(lastBase) {
			lastBase = b.Mark.Done
		}
	}
	lctx, cancel := context.WithCancel(context.Background())
	a.cancel = cancel
	a.wg.Add(2)
	go a.segmentLoop(lctx)
	go a.baseLoop(lctx, lastBase)
	a.opts.Log.Info("op-log archive started", "store", a.opts.Store.String(), "origin", a.origin, "archived", a.archived.Load())
	return nil
}

// Stop stops both loops; the ops buffered for the segment being filled
// are stored first (within ctx).
func (a *Archiver) Stop(ctx context.Context) error {
	if a.cancel == nil {
		return nil
	}
	a.cancel()
	done := make(chan struct{})
	go func() { a.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("archive: stop: %w", ctx.Err())
	}
}

// segmentLoop is a two-state machine: empty (waiting for an op) and
// filling (a segment is open since its first op arrived; it is cut when
// full or when SegmentInterval has passed since then). A cut that fails
// keeps the ops and is tried again after a pause (backing off).
func (a *Archiver) segmentLoop(ctx context.Context) {
	defer a.wg.Done()
	notify, unsubscribe := a.src.Subscribe()
	defer unsubscribe()
	f := &filler{a: a, read: a.archived.Load()}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		d := f.step(ctx)
		timer.Reset(d)
		wake := notify
		if f.backoff > 0 {
			wake = nil // a failing store is not hammered at every write
		}
		select {
		case <-ctx.Done():
			// Stopping: what is buffered is stored, briefly.
			sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			f.cut(sctx)
			cancel()
			return
		case <-wake:
		case <-timer.C:
		}
	}
}

// filler is the segment being filled.
type filler struct {
	a       *Archiver
	buf     [][]byte
	bytes   int
	opened  time.Time // when buf got its first op
	read    uint64    // seq of the last op in buf (or archived)
	backoff time.Duration
}

// step reads what the log holds past the buffer, cuts a segment when one
// is due, and returns how long to wait at most before the next step.
func (f *filler) step(ctx context.Context) time.Duration {
	a := f.a
	if first := a.src.FirstSeq(); first > f.read+1 && len(f.buf) == 0 {
		// Trimmed before it could be archived (archiving was switched on
		// for a node that had run without it): a gap a restore reports.
		a.opts.Log.Warn("op-log archive has a gap: these ops were trimmed before archiving was on", "origin", a.origin, "missing_from", f.read+1, "missing_to", first-1)
		f.read = first - 1
		a.archived.Store(f.read)
	}
	for {
		f.fill()
		if len(f.buf) == 0 || (f.bytes < a.opts.SegmentBytes && time.Since(f.opened) < a.opts.SegmentInterval) {
			break
		}
		if !f.cut(ctx) {
			f.backoff = min(max(2*f.backoff, time.Second), 30*time.Second)
			return f.backoff
		}
		f.backoff = 0 // and the log may hold more than one segment
	}
	if len(f.buf) > 0 {
		return max(time.Until(f.opened.Add(a.opts.SegmentInterval)), time.Millisecond)
	}
	return time.Hour
}

// fill reads the log's ops past the buffer into it, up to SegmentBytes.
func (f *filler) fill() {
	a := f.a
	for f.bytes < a.opts.SegmentBytes {
		ops, err := a.src.ReadOps(a.origin, f.read, 4096, a.opts.SegmentBytes-f.bytes)
		if err != nil {
			a.opts.Log.Warn("reading the op log for the archive", "err", err)
			return
		}
		if len(ops) == 0 {
			return
		}
		if len(f.buf) == 0 {
			f.opened = time.Now()
		}
		for _, b := range ops {
			f.buf = append(f.buf, b)
			f.bytes += len(b)
		}
		f.read += uint64(len(ops))
	}
}

// cut stores the buffer as one segment.
func (f *filler) cut(ctx context.Context) bool {
	if len(f.buf) == 0 {
		return true
	}
	if err := f.a.store(ctx, f.buf); err != nil {
		f.a.met.failures.Inc()
		f.a.opts.Log.Warn("archiving ops failed; retrying", "origin", f.a.origin, "ops", len(f.buf), "err", err)
		return false
	}
	f.buf, f.bytes = nil, 0
	return true
}

// store writes ops (consecutive, of this origin) as one segment and
// moves the archived position past them.
func (a *Archiver) store(ctx context.Context, ops [][]byte) error {
	s, data, err := encodeSegment(a.origin, ops)
	if err != nil {
		return err
	}
	if err := a.opts.Store.Put(ctx, s.Name(), data); err != nil {
		return err
	}
	a.archived.Store(s.Last)
	a.met.archived.Set(float64(s.Last))
	a.met.segments.Inc()
	a.met.ops.Add(float64(len(ops)))
	a.met.bytes.Add(float64(len(data)))
	a.opts.Log.Debug("ops archived", "segment", s.Name(), "bytes", len(data))
	return nil
}

// baseLoop writes a base snapshot every BaseInterval (at once when this
// node has none) and applies the retention after each.
func (a *Archiver) baseLoop(ctx context.Context, last time.Time) {
	defer a.wg.Done()
	next := last.Add(a.opts.BaseInterval)
	var retry time.Duration
	for {
		wait := max(time.Until(next), 0)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		start := time.Now()
		id, m, err := takeBase(ctx, a.opts.Store, a.opts.Node, a.src)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			// Not synced yet (replication starts after the archiver), or
			// the store is down: try again soon, then less often.
			retry = min(max(2*retry, time.Second), time.Minute)
			a.met.failures.Inc()
			a.opts.Log.Warn("op-log archive: base snapshot failed; retrying", "in", retry, "err", err)
			next = time.Now().Add(retry)
			continue
		}
		retry = 0
		a.met.bases.Inc()
		a.opts.Log.Info("op-log archive: base snapshot written", "id", id, "documents", m.Counts.Documents, "bytes", m.Bytes, "took", time.Since(start).Round(time.Millisecond))
		next = time.Now().Add(a.opts.BaseInterval)
		if a.opts.Retention > 0 {
			if n, err := Prune(ctx, a.opts.Store, a.opts.Node, a.origin, time.Now().Add(-a.opts.Retention)); err != nil {
				a.opts.Log.Warn("op-log archive: retention", "err", err)
			} else if n > 0 {
				a.opts.Log.Info("op-log archive: retention deleted old base snapshots and segments", "deleted", n)
			}
		}
	}
}

// Prune deletes what node (whose ops are origin's) wrote to the archive
// that no restore to a time at or after cutoff needs: its base snapshots
// older than the newest complete base at or before cutoff, and its
// segments whose ops every base kept already holds. It returns how many
// base snapshots and segments it deleted.
func Prune(ctx context.Context, st Store, node, origin string, cutoff time.Time) (int, error) {
	bases, err := listBases(ctx, st)
	if err != nil {
		return 0, err
	}
	limit := crdt.Timestamp{Wall: cutoff.UnixMilli(), Logical: ^uint32(0)}
	keepFrom := -1 // index of the newest base at or before cutoff
	for i, b := range bases {
		if b.Mark.upper().Compare(limit) <= 0 {
			keepFrom = i
		}
	}
	if keepFrom < 0 {
		return 0, nil // nothing is old enough to go
	}
	n := 0
	for _, b := range bases[:keepFrom] {
		if b.Mark.Node != node {
			continue
		}
		if err := deleteBase(ctx, st, b.ID); err != nil {
			return n, err
		}
		n++
	}
	// A restore starts from a kept base: this origin's ops at or below
	// every kept base's position are never read again.
	floor := ^uint64(0)
	for _, b := range bases[keepFrom:] {
		floor = min(floor, b.Mark.Vector[origin])
	}
	segs, err := listSegments(ctx, st, origin)
	if err != nil {
		return n, err
	}
	for _, s := range segs[origin] {
		if s.Last > floor {
			break
		}
		if err := st.Delete(ctx, s.Name()); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

var errNoBase = errors.New("archive: no complete base snapshot")

type metrics struct {
	segments, ops, bytes, bases, failures prometheus.Counter
	archived                              prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		segments: prometheus.NewCounter(prometheus.CounterOpts{Name: "edgenode_mongo_archive_segments_total", Help: "Op-log segments written to the archive."}),
		ops:      prometheus.NewCounter(prometheus.CounterOpts{Name: "edgenode_mongo_archive_ops_total", Help: "This node's ops written to the archive."}),
		bytes:    prometheus.NewCounter(prometheus.CounterOpts{Name: "edgenode_mongo_archive_bytes_total", Help: "Bytes of op-log segments written to the archive (compressed)."}),
		bases:    prometheus.NewCounter(prometheus.CounterOpts{Name: "edgenode_mongo_archive_bases_total", Help: "Base snapshots written to the archive."}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{Name: "edgenode_mongo_archive_failures_total", Help: "Segment or base snapshot writes that failed (retried)."}),
		archived: prometheus.NewGauge(prometheus.GaugeOpts{Name: "edgenode_mongo_archive_position", Help: "Seq of this node's last op in the archive."}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.segments, m.ops, m.bytes, m.bases, m.failures, m.archived} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("archive: register metrics: %w", err)
			}
		}
	}
	return m, nil
}
