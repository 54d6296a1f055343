package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/edgenode/edgenode/internal/archive"
	"github.com/edgenode/edgenode/internal/backup"
	"github.com/edgenode/edgenode/internal/config"
	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
	"github.com/edgenode/edgenode/internal/node"
	"github.com/edgenode/edgenode/internal/replica"
)

type pitrArgs struct {
	cfg          *config.Config
	from         string
	s3           func() backup.S3Options
	s3Set        bool
	toTime, toOp string
	dump         string
	check        bool
}

func flagSet(fs *flag.FlagSet, name string) (set bool) {
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// parseTime reads RFC 3339 or unix milliseconds.
func parseTime(s string) (time.Time, error) {
	if ms, err := strconv.ParseInt(s, 10, 64); err == nil {
		return time.UnixMilli(ms), nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("--to-time %q: want RFC 3339 (2025-01-02T15:04:05.123Z) or unix milliseconds", s)
	}
	return t, nil
}

// pitrRestore builds the database as it was at a time (or op) from the
// op-log archive (package archive): into the data folder, as a new node,
// or into a folder of JSON dumps.
func pitrRestore(a pitrArgs, stdout, stderr io.Writer) int {
	ctx, cancel := interruptible()
	defer cancel()
	fail := func(err error) int {
		fmt.Fprintf(stderr, "edgenode restore: %v\n", err)
		fmt.Fprintln(stderr, "edgenode restore: refused; nothing was restored")
		return 1
	}
	var (
		st  archive.Store
		err error
	)
	if a.from != "" && (a.s3Set || a.cfg.Mongo.Archive.Target == "") {
		st, err = archive.Open(ctx, a.from, a.s3())
	} else {
		st, err = node.OpenArchive(ctx, a.cfg, a.from)
	}
	if err != nil {
		return fail(err)
	}
	var at archive.At
	if a.toOp != "" {
		origin, seq, err := archive.ParseOp(a.toOp)
		if err != nil {
			return fail(fmt.Errorf("--to-op: %w", err))
		}
		if at, err = archive.AtOp(ctx, st, origin, seq); err != nil {
			return fail(err)
		}
	} else {
		t, err := parseTime(a.toTime)
		if err != nil {
			return fail(err)
		}
		at = archive.AtTime(t)
	}
	plan, err := archive.PlanRestore(ctx, st, at)
	if err != nil {
		return fail(err)
	}
	what := "every op stamped at or before that millisecond"
	if a.toOp != "" {
		what = fmt.Sprintf("op %s, clock %d.%d, and every op stamped before it", a.toOp, at.Wall, at.Logical)
	}
	fmt.Fprintf(stdout, "restore: to %s (%s)\n", at.Time().Format(time.RFC3339Nano), what)
	fmt.Fprintf(stdout, "  base snapshot %s of node %s, written %s; %s\n", plan.BaseID, plan.Base.Node,
		plan.Base.Done.Format(time.RFC3339), counts(plan.Manifest.Counts))
	segs := 0
	for _, s := range plan.Segments {
		segs += len(s)
	}
	fmt.Fprintf(stdout, "  %d segment(s) of %d origin(s), %d op(s) to read\n", segs, len(plan.Segments), plan.Ops)
	for origin, end := range plan.Ends {
		if end < at.Wall {
			fmt.Fprintf(stdout, "  note: origin %s's archive ends at %s, before the restore point (nothing newer was archived: written nothing since, or not archived yet)\n",
				origin, time.UnixMilli(end).UTC().Format(time.RFC3339Nano))
		}
	}
	if err := plan.Verify(ctx, st); err != nil {
		return fail(err)
	}
	fmt.Fprintln(stdout, "restore: base and segments checked: every checksum, size and op count matches")
	if a.check {
		return 0
	}
	cfg := *a.cfg
	if a.dump != "" {
		tmp, err := os.MkdirTemp("", "edgenode-pitr-")
		if err != nil {
			return fail(err)
		}
		defer os.RemoveAll(tmp)
		cfg.Node.DataDir = filepath.Join(tmp, "data")
		cfg.Mongo.Upstream = config.Secret{} // always an embedded database of its own
	}
	log := newLogger(config.Log{Level: "warn", Format: cfg.Log.Format}, new(slog.LevelVar), stderr).With("cmd", "restore")
	start := time.Now()
	var applied, docs int
	origin, err := node.RestoreMongo(ctx, &cfg, log, func(ctx context.Context, core *replica.Replica) error {
		var err error
		if applied, err = plan.Restore(ctx, st, core, stdout); err != nil {
			return err
		}
		if a.dump != "" {
			docs, err = dumpJSON(ctx, core, a.dump)
		}
		return err
	})
	if err != nil {
		fmt.Fprintf(stderr, "edgenode restore: %v\n", err)
		fmt.Fprintln(stderr, "edgenode restore: failed; the data folder is left as a wiped node's")
		return 1
	}
	took := time.Since(start).Round(time.Millisecond)
	if a.dump != "" {
		fmt.Fprintf(stdout, "restore done in %v: %d op(s) applied over the base; %d document(s) written to %s\n", took, applied, docs, a.dump)
		return 0
	}
	fmt.Fprintf(stdout, "restore done in %v: %d op(s) applied over the base; %s holds the database as of the restore point, origin %s\n", took, applied, cfg.Node.DataDir, origin)
	fmt.Fprintln(stdout, "  start it standalone (mesh.enabled: false) to keep it at that point: joined to its old cluster its peers send every later op and it catches up to the present")
	return 0
}

// dumpJSON writes every replicated document of core, without its
// replication metadata, as canonical Extended JSON lines, one file per
// namespace. It returns how many documents it wrote.
func dumpJSON(ctx context.Context, core *replica.Replica, dir string) (int, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return 0, err
	}
	files := map[string]*bufio.Writer{}
	var closers []*os.File
	defer func() {
		for _, f := range closers {
			f.Close()
		}
	}()
	n := 0
	err := core.Snapshot(ctx, func(it replica.SnapshotItem) error {
		if it.Kind != replica.SnapDoc {
			return nil
		}
		w := files[it.NS]
		if w == nil {
			f, err := os.Create(filepath.Join(dir, it.NS+".json"))
			if err != nil {
				return err
			}
			closers = append(closers, f)
			w = bufio.NewWriter(f)
			files[it.NS] = w
		}
		var d bson.D
		if err := bson.Unmarshal(it.Doc, &d); err != nil {
			return err
		}
		out := d[:0]
		for _, e := range d {
			if e.Key != crdt.MetaField {
				out = append(out, e)
			}
		}
		b, err := bson.MarshalExtJSON(out, true, false)
		if err != nil {
			return err
		}
		w.Write(b)
		n++
		return w.WriteByte('\n')
	})
	for _, w := range files {
		err = errors.Join(err, w.Flush())
	}
	for _, f := range closers {
		err = errors.Join(err, f.Sync())
	}
	return n, err
}
