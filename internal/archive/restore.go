package archive

import (
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/edgenode/edgenode/internal/backup"
	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
)

// Target is the replica a point-in-time restore builds: *replica.Replica
// of a new or wiped node.
type Target interface {
	backup.Target
	ApplyRemote(ctx context.Context, ops []*crdt.Op) error
}

// At is the end of a restore: every op stamped at or below it.
type At = crdt.Timestamp

// AtTime is every op whose clock reads t's millisecond or earlier.
func AtTime(t time.Time) At {
	return crdt.Timestamp{Wall: t.UnixMilli(), Logical: ^uint32(0), Node: "\xff"}
}

// AtOp finds op origin:seq in the archive and returns its timestamp: a
// restore to it holds that op and every op stamped before it (in
// particular every op it causally follows).
func AtOp(ctx context.Context, st Store, origin string, seq uint64) (At, error) {
	segs, err := listSegments(ctx, st, origin)
	if err != nil {
		return At{}, err
	}
	for _, s := range segs[origin] {
		if seq < s.First || seq > s.Last {
			continue
		}
		ops, err := readSegment(ctx, st, s)
		if err != nil {
			return At{}, err
		}
		return ops[seq-s.First].TS, nil
	}
	return At{}, fmt.Errorf("archive: op %s:%d is not in %s", origin, seq, st)
}

// ParseOp reads ORIGIN:SEQ.
func ParseOp(s string) (origin string, seq uint64, err error) {
	i := strings.LastIndexByte(s, ':')
	if i <= 0 {
		return "", 0, fmt.Errorf("%q is not ORIGIN:SEQ", s)
	}
	seq, err = strconv.ParseUint(s[i+1:], 10, 64)
	if err != nil || seq == 0 {
		return "", 0, fmt.Errorf("%q is not ORIGIN:SEQ (SEQ a number from 1)", s)
	}
	return s[:i], seq, nil
}

// Plan is what a restore to At reads: a base snapshot and, per origin,
// the segments holding its ops above the base's position up to At.
type Plan struct {
	At       At
	BaseID   string
	Base     BaseMark
	Manifest *backup.Manifest
	Segments map[string][]Segment
	// Ops counts the ops of the segments (some may be above At, or at
	// or below the base's position: they are skipped).
	Ops int
	// Ends is, per origin, the clock wall time (unix ms) of its newest
	// archived op: an origin whose archive ends before At may have ops
	// between that were not archived yet.
	Ends map[string]int64
}

// PlanRestore chooses the newest complete base snapshot whose every op
// is at or before at, and the segments every origin needs from its
// position on. A hole in an origin's ops (a segment missing between two
// others, or between the base and the first segment) is an error naming
// the ops missing.
func PlanRestore(ctx context.Context, st Store, at At) (*Plan, error) {
	bases, err := listBases(ctx, st)
	if err != nil {
		return nil, err
	}
	var chosen *base
	for i := range bases {
		if bases[i].Mark.upper().Compare(at) <= 0 {
			chosen = &bases[i]
		}
	}
	if chosen == nil {
		if len(bases) == 0 {
			return nil, fmt.Errorf("%w in %s", errNoBase, st)
		}
		return nil, fmt.Errorf("%w in %s at or before %s: the oldest ends at %s (restore to a later time)", errNoBase, st,
			at.Time().Format(time.RFC3339Nano), bases[0].Mark.upper().Time().Format(time.RFC3339Nano))
	}
	_, m, err := backup.Find(ctx, baseStore{st}.sub(chosen.ID))
	if err != nil {
		return nil, err
	}
	p := &Plan{At: at, BaseID: chosen.ID, Base: chosen.Mark, Manifest: m, Segments: map[string][]Segment{}, Ends: map[string]int64{}}
	all, err := listSegments(ctx, st, "")
	if err != nil {
		return nil, err
	}
	for origin, segs := range all {
		p.Ends[origin] = segs[len(segs)-1].MaxWall
		have := m.Vector[origin] // every op at or below is in the base
		for _, s := range segs {
			if s.Last <= have {
				continue
			}
			if s.MinWall > at.Wall {
				break // an origin's clock only moves forward along its seqs
			}
			if s.First > have+1 {
				return nil, fmt.Errorf("archive: ops %s:%d to %s:%d are missing from %s (no segment holds them): the restore would lack them", origin, have+1, origin, s.First-1, st)
			}
			p.Segments[origin] = append(p.Segments[origin], s)
			p.Ops += int(s.Last - s.First + 1)
			have = s.Last
		}
	}
	return p, nil
}

// sub is the store of one base: backup.Find reads its manifest at the
// root.
func (b baseStore) sub(id string) backup.Store { return prefixed{b.st, baseDir + id + "/"} }

// prefixed is a Store under a prefix.
type prefixed struct {
	Store
	prefix string
}

func (p prefixed) Put(ctx context.Context, name string, data []byte) error {
	return p.Store.Put(ctx, p.prefix+name, data)
}
func (p prefixed) Get(ctx context.Context, name string) ([]byte, error) {
	return p.Store.Get(ctx, p.prefix+name)
}
func (p prefixed) String() string { return p.Store.String() + "/" + strings.TrimSuffix(p.prefix, "/") }

// Verify checks the base snapshot and every segment of the plan (sizes,
// checksums, contents) without changing anything. A damaged segment is a
// *SegmentError naming it.
func (p *Plan) Verify(ctx context.Context, st Store) error {
	bs := baseStore{st}.sub(p.BaseID)
	if err := backup.Verify(ctx, bs, "", p.Manifest); err != nil {
		return err
	}
	for _, origin := range slices.Sorted(maps.Keys(p.Segments)) {
		for _, s := range p.Segments[origin] {
			if _, err := readSegment(ctx, st, s); err != nil {
				return err
			}
		}
	}
	return nil
}

// Restore loads the plan's base into t, then applies every op of the
// plan's segments above the base's position and at or below At (ops
// commute: see package crdt; their order does not matter). Each segment
// is checked whole before any of its ops is applied. It returns how many
// ops were applied. Call Verify first: a segment damaged after it leaves
// the database marked synced at the base, with the ops before it applied.
func (p *Plan) Restore(ctx context.Context, st Store, t Target, log io.Writer) (int, error) {
	bs := baseStore{st}.sub(p.BaseID)
	if _, err := backup.Load(ctx, bs, "", p.Manifest, t, nil); err != nil {
		return 0, err
	}
	applied := 0
	var newest crdt.Timestamp
	for _, origin := range slices.Sorted(maps.Keys(p.Segments)) {
		have, before := p.Manifest.Vector[origin], applied
		for _, s := range p.Segments[origin] {
			ops, err := readSegment(ctx, st, s)
			if err != nil {
				return applied, err
			}
			var batch []*crdt.Op
			for _, op := range ops {
				if op.Seq > have && op.TS.Compare(p.At) <= 0 {
					batch = append(batch, op)
				}
			}
			for len(batch) > 0 {
				n := min(len(batch), 1000)
				if err := t.ApplyRemote(ctx, batch[:n]); err != nil {
					return applied, fmt.Errorf("archive: applying %s: %w", s.Name(), err)
				}
				for _, op := range batch[:n] {
					if op.TS.Compare(newest) > 0 {
						newest = op.TS
					}
				}
				applied += n
				batch = batch[n:]
			}
		}
		if log != nil {
			fmt.Fprintf(log, "  origin %s: %d op(s) applied above the base's position %d\n", origin, applied-before, have)
		}
	}
	if !newest.IsZero() {
		if err := t.Fence(ctx, newest); err != nil {
			return applied, err
		}
	}
	return applied, nil
}
