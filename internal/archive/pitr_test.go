package archive

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgenode/edgenode/internal/backup"
	"github.com/edgenode/edgenode/internal/mongoproxy/repl"
	"github.com/edgenode/edgenode/internal/replica/replicatest"
	"github.com/edgenode/edgenode/internal/testkit"
)

// These tests run the archive's real parts on a real folder store
// (backup.DirStore): the Archiver, base snapshots, retention, restore
// planning and restores. The replica on either side is the in-memory core
// of package replicatest (its op log, clock and snapshot), so the ops'
// clocks can be set; TestArchivePointInTimeRestore (cmd/edgenode) runs
// the same on a real node and S3.

const testOrigin = "n1~a"

// newSource is a synced replica core of testOrigin whose wall clock reads
// wall (zero: the real one).
func newSource(wall time.Time) *replicatest.Core {
	c := replicatest.New(testOrigin, time.Minute)
	c.MarkSynced()
	c.SetWall(wall)
	return c
}

// archiveNow stores every op of src not archived yet as one segment.
func archiveNow(t *testing.T, a *Archiver, src *replicatest.Core) Segment {
	t.Helper()
	ops, err := src.ReadOps(testOrigin, a.archived.Load(), 1<<20, 1<<30)
	if err != nil || len(ops) == 0 {
		t.Fatalf("reading the ops to archive: %d, %v", len(ops), err)
	}
	if err := a.store(context.Background(), ops); err != nil {
		t.Fatal(err)
	}
	s, _, err := encodeSegment(testOrigin, ops)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// restoreInto restores plan into a new replica core and returns it, the
// ops applied and what Restore printed.
func restoreInto(t *testing.T, st Store, plan *Plan) (*replicatest.Core, int, string) {
	t.Helper()
	target := replicatest.New("restored~x", time.Minute)
	var log bytes.Buffer
	if err := plan.Verify(context.Background(), st); err != nil {
		t.Fatal(err)
	}
	n, err := plan.Restore(context.Background(), st, target, &log)
	if err != nil {
		t.Fatal(err)
	}
	return target, n, log.String()
}

// seqs lists the seqs of origin's ops a restored core applied.
func seqs(c *replicatest.Core) []uint64 {
	var out []uint64
	for _, op := range c.Remote(testOrigin) {
		out = append(out, op.Seq)
	}
	return out
}

func seqRange(from, to uint64) []uint64 {
	var out []uint64
	for s := from; s <= to; s++ {
		out = append(out, s)
	}
	return out
}

// TestRestoreToOpStopsAtThatOp: 30 ops written in one millisecond, in
// three segments; a restore to op ORIGIN:SEQ (AtOp) applies exactly the
// ops up to and including SEQ, wherever SEQ falls in its segment, though
// a restore to that millisecond (AtTime) holds all 30. An op not in the
// archive is an error naming it.
func TestRestoreToOpStopsAtThatOp(t *testing.T) {
	ctx := context.Background()
	st := &backup.DirStore{Root: t.TempDir()}
	wall := time.Now().Add(-time.Hour).Truncate(time.Millisecond)
	src := newSource(wall)
	if _, _, err := takeBase(ctx, st, "n1", src); err != nil {
		t.Fatal(err)
	}
	a, err := New(Options{Store: st, Node: "n1"}, src, nil)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		src.Write("app.c", 10)
		archiveNow(t, a, src)
	}
	for _, seq := range []uint64{1, 9, 10, 11, 20, 27, 30} {
		at, err := AtOp(ctx, st, testOrigin, seq)
		if err != nil {
			t.Fatalf("AtOp %d: %v", seq, err)
		}
		if at.Wall != wall.UnixMilli() {
			t.Fatalf("op %d stamped %v, want wall %d (every op in one millisecond)", seq, at, wall.UnixMilli())
		}
		plan, err := PlanRestore(ctx, st, at)
		if err != nil {
			t.Fatalf("plan to op %d: %v", seq, err)
		}
		got, n, log := restoreInto(t, st, plan)
		if want := seqRange(1, seq); n != int(seq) || !slices.Equal(seqs(got), want) {
			t.Errorf("restore to op %s:%d applied %d op(s), seqs %v; want exactly %v", testOrigin, seq, n, seqs(got), want)
		}
		if want := fmt.Sprintf("origin %s: %d op(s) applied above the base's position 0", testOrigin, seq); !strings.Contains(log, want) {
			t.Errorf("restore to op %d printed %q, want %q", seq, log, want)
		}
	}
	// The millisecond holds every op: only the op tells them apart.
	plan, err := PlanRestore(ctx, st, AtTime(wall))
	if err != nil {
		t.Fatal(err)
	}
	if got, n, _ := restoreInto(t, st, plan); n != 30 || !slices.Equal(seqs(got), seqRange(1, 30)) {
		t.Errorf("restore to the millisecond applied %d op(s), seqs %v; want 1-30", n, seqs(got))
	}
	if _, err := AtOp(ctx, st, testOrigin, 31); err == nil || !strings.Contains(err.Error(), testOrigin+":31 is not in") {
		t.Errorf("AtOp of an op not archived: %v", err)
	}
}

// TestPlanRestoreNamesMissingOps: a segment missing between two others,
// or between the base and the first, makes the plan (and so the restore)
// refuse, naming the origin and the seqs missing; a restore to before the
// hole still works.
func TestPlanRestoreNamesMissingOps(t *testing.T) {
	ctx := context.Background()
	st := &backup.DirStore{Root: t.TempDir()}
	src := newSource(time.Time{})
	if _, _, err := takeBase(ctx, st, "n1", src); err != nil {
		t.Fatal(err)
	}
	a, err := New(Options{Store: st, Node: "n1"}, src, nil)
	if err != nil {
		t.Fatal(err)
	}
	var segs []Segment
	for range 3 {
		src.Write("app.c", 10)
		segs = append(segs, archiveNow(t, a, src))
		time.Sleep(2 * time.Millisecond) // each segment its own milliseconds
	}
	if _, err := PlanRestore(ctx, st, AtTime(time.Now())); err != nil {
		t.Fatalf("the whole archive: %v", err)
	}
	if err := st.Delete(ctx, segs[1].Name()); err != nil {
		t.Fatal(err)
	}
	_, err = PlanRestore(ctx, st, AtTime(time.Now()))
	if want := fmt.Sprintf("ops %s:11 to %s:20 are missing from %s", testOrigin, testOrigin, st); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("a segment missing between two: %v, want an error containing %q", err, want)
	}
	// Up to the end of the first segment nothing is missing.
	at, err := AtOp(ctx, st, testOrigin, 10)
	if err != nil {
		t.Fatal(err)
	}
	plan, err := PlanRestore(ctx, st, at)
	if err != nil {
		t.Fatalf("a restore before the hole: %v", err)
	}
	if got, n, _ := restoreInto(t, st, plan); n != 10 || !slices.Equal(seqs(got), seqRange(1, 10)) {
		t.Errorf("restore before the hole applied %d op(s), seqs %v", n, seqs(got))
	}
	if err := st.Delete(ctx, segs[0].Name()); err != nil {
		t.Fatal(err)
	}
	_, err = PlanRestore(ctx, st, AtTime(time.Now()))
	if want := fmt.Sprintf("ops %s:1 to %s:20 are missing", testOrigin, testOrigin); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("segments missing after the base: %v, want an error containing %q", err, want)
	}
}

// TestArchivePruneKeepsTheRetentionWindow: a node's ops and bases over ten days;
// pruning to a 3-day window deletes the bases older than the newest one
// before the window and the segments every kept base holds, keeps what a
// restore to any time in the window needs (restores to the window's start
// and to later times apply the right ops), and a restore to before the
// window is refused.
func TestArchivePruneKeepsTheRetentionWindow(t *testing.T) {
	ctx := context.Background()
	st := &backup.DirStore{Root: t.TempDir()}
	now := time.Now()
	day := 24 * time.Hour
	src := newSource(now.Add(-10 * day))
	a, err := New(Options{Store: st, Node: "n1"}, src, nil)
	if err != nil {
		t.Fatal(err)
	}
	var segs []Segment
	var bases []string
	base := func() {
		// A base's id is its second and node: one a second.
		time.Sleep(time.Until(time.Now().Truncate(time.Second).Add(time.Second)))
		id, _, err := takeBase(ctx, st, "n1", src)
		if err != nil {
			t.Fatal(err)
		}
		bases = append(bases, id)
	}
	// Ops 1-10 ten days ago, then base 0 (position 10); 11-20 five days
	// ago, base 1 (20); 21-30 four days ago; 31-40 two days ago, base 2
	// (40); 41-50 a day ago.
	for _, step := range []struct {
		age  time.Duration
		base bool
	}{{10 * day, true}, {5 * day, true}, {4 * day, false}, {2 * day, true}, {day, false}} {
		src.SetWall(now.Add(-step.age))
		src.Write("app.c", 10)
		segs = append(segs, archiveNow(t, a, src))
		if step.base {
			base()
		}
	}
	before, err := st.List(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	n, err := Prune(ctx, st, "n1", testOrigin, now.Add(-3*day))
	if err != nil {
		t.Fatal(err)
	}
	left, err := st.List(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	has := func(name string) bool { return slices.Contains(left, name) }
	// Base 1 is the newest before the window: base 0 goes, and so do the
	// segments of ops 1-20 (every kept base holds them).
	for i, s := range segs {
		if want := i >= 2; has(s.Name()) != want {
			t.Errorf("segment %s (ops %d-%d) kept %v, want %v", s.Name(), s.First, s.Last, has(s.Name()), want)
		}
	}
	for i, id := range bases {
		want := i >= 1
		if has(baseDir+id+"/"+baseMark) != want || has(baseDir+id+"/"+backup.ManifestName) != want {
			t.Errorf("base %s kept %v, want %v", id, has(baseDir+id+"/"+baseMark), want)
		}
		if !want {
			for _, name := range left {
				if strings.HasPrefix(name, baseDir+id+"/") {
					t.Errorf("%s of the deleted base %s is left", name, id)
				}
			}
		}
	}
	if deleted := len(before) - len(left); n != 3 || deleted < 3 {
		t.Errorf("Prune says it deleted %d base(s) and segment(s) (%d object(s) went: %d of %d left), want 3 (a base and two segments)", n, deleted, len(left), len(before))
	}

	// Restores inside the window.
	for _, r := range []struct {
		age  time.Duration
		base string
		want []uint64
	}{
		{3 * day, bases[1], seqRange(21, 30)},           // the window's start: base 1 and the ops after it
		{2*day + time.Hour, bases[1], seqRange(21, 30)}, // before ops 31-40
		{36 * time.Hour, bases[2], nil},                 // base 2 holds everything up to then
		{0, bases[2], seqRange(41, 50)},
	} {
		plan, err := PlanRestore(ctx, st, AtTime(now.Add(-r.age)))
		if err != nil {
			t.Errorf("restore to %v ago, inside the window: %v", r.age, err)
			continue
		}
		got, _, _ := restoreInto(t, st, plan)
		if plan.BaseID != r.base || !slices.Equal(seqs(got), r.want) {
			t.Errorf("restore to %v ago: base %s, ops %v applied; want base %s, ops %v", r.age, plan.BaseID, seqs(got), r.base, r.want)
		}
	}
	// Before the window: its base is gone.
	if _, err := PlanRestore(ctx, st, AtTime(now.Add(-6*day))); err == nil || !strings.Contains(err.Error(), "no complete base snapshot") {
		t.Errorf("restore to before the window: %v, want no base", err)
	}
}

// TestArchiveSegmentCutBySize: with a size bound of about ten ops and an
// interval of an hour, segments are cut as soon as their ops reach the
// bound (at the op that reaches it, not later); what is left waits for
// the interval (or, here, the stop).
func TestArchiveSegmentCutBySize(t *testing.T) {
	ctx := context.Background()
	st := &backup.DirStore{Root: t.TempDir()}
	src := newSource(time.Time{})
	if _, _, err := takeBase(ctx, st, "n1", src); err != nil {
		t.Fatal(err)
	}
	src.Write("app.c", 35)
	raw, err := src.ReadOps(testOrigin, 0, 100, 1<<30)
	if err != nil || len(raw) != 35 {
		t.Fatalf("%d ops: %v", len(raw), err)
	}
	size := func(s Segment) (n int) {
		for seq := s.First; seq <= s.Last; seq++ {
			n += len(raw[seq-1])
		}
		return n
	}
	bound := 10 * len(raw[0])
	a, err := New(Options{Store: st, Node: "n1", SegmentBytes: bound, SegmentInterval: time.Hour, BaseInterval: time.Hour}, src, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}
	stopped := false
	defer func() {
		if !stopped {
			_ = a.Stop(ctx)
		}
	}()
	var segs []Segment
	testkit.WaitFor(t, 10*time.Second, "three segments cut by size", func() bool {
		all, err := listSegments(ctx, st, testOrigin)
		segs = all[testOrigin]
		return err == nil && len(segs) >= 3
	})
	time.Sleep(100 * time.Millisecond) // no fourth one comes
	all, _ := listSegments(ctx, st, testOrigin)
	segs = all[testOrigin]
	if len(segs) != 3 || a.Floor()[testOrigin] != segs[2].Last || segs[2].Last >= 35 {
		t.Fatalf("segments %v, archived to %d: want three full ones, the rest of the 35 ops waiting", segs, a.Floor()[testOrigin])
	}
	for i, s := range segs {
		if i > 0 && s.First != segs[i-1].Last+1 {
			t.Errorf("segment %d starts at %d, after %d", i, s.First, segs[i-1].Last)
		}
		if n := size(s); n < bound || n-len(raw[s.Last-1]) >= bound {
			t.Errorf("segment %d-%d holds %d bytes of ops; the bound is %d (want cut at the op reaching it)", s.First, s.Last, n, bound)
		}
	}
	if err := a.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	stopped = true
	all, _ = listSegments(ctx, st, testOrigin)
	if s := all[testOrigin]; len(s) != 4 || s[3].First != segs[2].Last+1 || s[3].Last != 35 {
		t.Errorf("after the stop: %v, want the rest (up to 35) in a fourth segment", s)
	}
}

// TestArchiveTrimFloorKeepsUnarchivedOps: replication trims the op log (every
// 10 ms, keeping 1 ms) with the archiver's position as its floor
// (repl.Options.TrimFloor, as the node wires them): ops leave the log up
// to the archived position and never past it, while a segment waits to
// be cut; once it is, they go too.
func TestArchiveTrimFloorKeepsUnarchivedOps(t *testing.T) {
	ctx := context.Background()
	st := &backup.DirStore{Root: t.TempDir()}
	src := newSource(time.Time{})
	if _, _, err := takeBase(ctx, st, "n1", src); err != nil {
		t.Fatal(err)
	}
	src.Write("app.c", 1)
	raw, err := src.ReadOps(testOrigin, 0, 1, 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	a, err := New(Options{Store: st, Node: "n1", SegmentBytes: 10 * len(raw[0]), SegmentInterval: time.Hour, BaseInterval: time.Hour}, src, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}
	archiving := true
	defer func() {
		if archiving {
			_ = a.Stop(ctx)
		}
	}()
	r, err := repl.New(repl.Options{TrimInterval: 10 * time.Millisecond, LogRetention: time.Millisecond, TrimFloor: a.Floor},
		src, slog.New(slog.NewTextHandler(io.Discard, nil)), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer r.Stop(ctx)
	// The floor holds: read the log first (the floor only rises). An
	// empty log (first 0) holds none of the ops up to last.
	check := func() {
		t.Helper()
		first, last := src.FirstSeq(), src.LastSeq()
		floor := a.Floor()[testOrigin]
		if (first == 0 && last > floor) || first > floor+1 {
			t.Fatalf("the op log holds %d-%d (empty: first 0): ops above the archived position %d were trimmed", first, last, floor)
		}
	}
	src.Write("app.c", 34)
	var floor uint64
	testkit.WaitFor(t, 10*time.Second, "the log trimmed up to the archived position", func() bool {
		check()
		floor = a.Floor()[testOrigin]
		return floor >= 20 && src.FirstSeq() == floor+1
	})
	for range 20 { // 20 trims later
		time.Sleep(10 * time.Millisecond)
		check()
	}
	if floor >= 35 || src.FirstSeq() != floor+1 || src.LastSeq() != 35 {
		t.Fatalf("archived to %d, the log holds %d-%d: want the ops after the archived position, up to 35, kept", floor, src.FirstSeq(), src.LastSeq())
	}
	if ops, err := src.ReadOps(testOrigin, floor, 100, 1<<30); err != nil || len(ops) != int(35-floor) {
		t.Fatalf("the ops not archived yet: %d readable (%v), want %d", len(ops), err, 35-floor)
	}
	// The stop stores the rest: then they leave the log too.
	if err := a.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	archiving = false
	testkit.WaitFor(t, 10*time.Second, "the rest trimmed once archived", func() bool {
		return a.Floor()[testOrigin] == 35 && src.FirstSeq() == 0
	})
	plan, err := PlanRestore(ctx, st, AtTime(time.Now()))
	if err != nil {
		t.Fatal(err)
	}
	if got, n, _ := restoreInto(t, st, plan); n != 35 || !slices.Equal(seqs(got), seqRange(1, 35)) {
		t.Errorf("the archive restores %d op(s) (%v), want 1-35", n, seqs(got))
	}
}
